"""The training recipe, top to bottom: check, build, validate, fit, evaluate, export (`run`, then one function each).

`train.py` at the repository root is only the Hydra entry point that calls `run(cfg)`.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import shutil
import signal
import warnings
from pathlib import Path

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy
from lightning.pytorch.trainer.states import TrainerStatus
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from encdec import pairings, precision, run_folder
from encdec.boundary import lightning_settings, user_settings
from encdec.checks import check_forward_pass, optimizer_class_settings, runs_on_xla
from encdec.cli import invoked_as
from encdec.data.loading import load_splits
from encdec.errors import EncdecError, Interrupted
from encdec.export import export_hf_model, push_to_hub
from encdec.finetune import count_parameters, merged_copy
from encdec.inference import load_trained
from encdec.lit import lightning_private, xla
from encdec.lit.checkpoint_io import AtomicCheckpointIO
from encdec.lit.compiled import bucket_multiple
from encdec.lit.datamodule import SummarizationDataModule
from encdec.lit.memory import describe, peak_memory_metrics, release_freed_memory, release_training_state
from encdec.lit.module import Seq2SeqModule
from encdec.lit.resume import ContinuedCSVHistory, checkpoint_callbacks, resume_point, resumed_logger
from encdec.metrics import beside_baselines, format_scores, lead_baselines, stage_scores
from encdec.models import build_model

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> float | None:
    """The recipe: check, build, validate, fit, evaluate, export. Returns the metric a sweeper optimizes."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    cfg, resume_from = check(cfg, run_dir)
    raw_splits, model, encoder_tokenizer, decoder_tokenizer = build(cfg)
    datamodule = build_datamodule(cfg, model, encoder_tokenizer, decoder_tokenizer, raw_splits)
    module = build_module(cfg, model, decoder_tokenizer)
    trainer, best_checkpoint = build_trainer(cfg, run_dir, resume_from)
    for logger in trainer.loggers:
        logger.log_hyperparams(_flat(OmegaConf.to_container(cfg, resolve=True)))
    with _interruption_named(trainer, run_dir), lightning_settings():
        if resume_from is None:
            if prepared := pairings.prepare(model, encoder_tokenizer, decoder_tokenizer, raw_splits["train"], cfg.data):
                say(prepared)
            module.initial_metrics = stage_scores(trainer.validate(module, datamodule=datamodule, verbose=False), "val")
            say(f"validation ROUGE before training: {format_scores(module.initial_metrics)}")
            release_freed_memory()
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from)
        release_training_state(trainer)
        evaluated, metrics = evaluate(cfg, trainer, module, datamodule, best_checkpoint, raw_splits, run_dir)
    best = best_checkpoint.best_model_path or None
    export(cfg, trainer, module, (model, encoder_tokenizer, decoder_tokenizer), best, evaluated, metrics, run_dir)
    return metrics.get(cfg.get("optimized_metric") or "val/rouge2")


def check(cfg: DictConfig, run_dir: Path) -> tuple[DictConfig, Path | None]:
    """A fresh run folder or a killed run to resume (its saved config); every setting checked before anything loads."""
    resume_from = None
    if cfg.get("resume"):
        cfg, resume_from = resume_point(run_dir)
        lightning_private.warn_if_unchecked()
        say(f"resuming {run_dir} from {resume_from.name}")
        # Our batch sampler does skip the trained batches (encdec.lit.resume); Lightning cannot see that.
        warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch")
    else:
        run_folder.check_fresh(run_dir)
    if resolved := precision.apply_auto(cfg.trainer):
        say(resolved)  # and kept: a resume on a machine with other CPU flags goes on at the run's own precision
        run_folder.record_setting(run_dir, "trainer.precision", cfg.trainer.precision)
    _check_strategy(cfg)
    _check_shared_run_dir(cfg)
    L.seed_everything(cfg.seed, workers=True)
    return cfg, resume_from


def build(cfg: DictConfig):
    """The raw splits, then the model and both tokenizers. Data first: a missing file or column fails in seconds,
    before a model of gigabytes downloads or loads."""
    raw_splits = load_splits(cfg.data)
    with user_settings("encoder", "decoder", "model", "generation"):
        model, encoder_tokenizer, decoder_tokenizer = build_model(cfg)
        check_forward_pass(model, encoder_tokenizer, decoder_tokenizer, cfg)
    total, trainable = count_parameters(model)
    say(
        f"model: {cfg.encoder.name} -> {cfg.decoder.name}: {total / 1e6:.1f}M parameters, {trainable / 1e6:.1f}M trainable"
    )
    return raw_splits, model, encoder_tokenizer, decoder_tokenizer


def build_datamodule(
    cfg: DictConfig, model, encoder_tokenizer, decoder_tokenizer, raw_splits
) -> SummarizationDataModule:
    datamodule = SummarizationDataModule.for_model(
        cfg.data,
        model,
        encoder_tokenizer,
        decoder_tokenizer,
        cfg.seed,
        pad_to_multiple_of=bucket_multiple(cfg.data, bool(cfg.model.get("compile"))),
    )
    datamodule.prepare(raw_splits)
    sizes = {split: len(ds) for split, ds in datamodule.tokenized.items()}
    sizes.setdefault("train", "streamed")  # data.streaming=true: read while training, its length unknown
    say(f"data: {cfg.data.name}: {sizes['train']} train, {sizes['validation']} validation, {sizes['test']} test")
    return datamodule


def build_module(cfg: DictConfig, model, decoder_tokenizer) -> Seq2SeqModule:
    return Seq2SeqModule(
        model,
        decoder_tokenizer,
        optimizer=_optimizer(cfg),
        scheduler=_scheduler(cfg),
        new_params_lr=cfg.optimizer.get("new_params_lr"),
        run_config=OmegaConf.to_container(cfg, resolve=True),
        compile=bool(cfg.model.get("compile")),
        cudnn_attention=bool(cfg.model.get("cudnn_attention", False)),
        fused_loss=bool(cfg.model.get("fused_loss")),
        loss_chunk_tokens=cfg.model.get("loss_chunk_tokens") or 4096,
        eval_loss_rows=cfg.data.get("batch_size"),
    )


def build_trainer(cfg: DictConfig, run_dir: Path, resume_from: Path | None):
    """The Trainer with encdec's checkpointing, loggers (continuing a resumed run's history) and callbacks."""
    best_checkpoint, callbacks = checkpoint_callbacks(cfg.checkpoint, run_dir)
    with user_settings("logger"):
        loggers = [resumed_logger(spec, run_dir, resume_from) for spec in (cfg.get("logger") or {}).values() if spec]
    if resume_from is not None:
        callbacks.append(ContinuedCSVHistory(loggers))
    for name, spec in (cfg.get("callbacks") or {}).items():
        if spec and (loggers or name != "lr_monitor"):
            callbacks.append(hydra.utils.instantiate(spec))
    trainer: L.Trainer = _instantiate_trainer(
        cfg,
        callbacks=callbacks,
        logger=loggers or False,
        default_root_dir=str(run_dir),
        plugins=_checkpoint_plugins(cfg),
        # Our batch sampler shards itself across ranks and knows how to resume mid-epoch.
        use_distributed_sampler=False,
    )
    return trainer, best_checkpoint


def evaluate(
    cfg: DictConfig, trainer: L.Trainer, module: Seq2SeqModule, datamodule, best_checkpoint, raw_splits, run_dir: Path
) -> tuple[str | None, dict[str, float]]:
    """The best checkpoint on validation and test, test ROUGE beside the lead baselines of the same rows. Returns the
    checkpoint evaluated and every metric the run folder records."""
    before = module.initial_metrics
    best = best_checkpoint.best_model_path or None
    evaluated = _loadable_for_evaluation(trainer, best, run_dir)
    # The best checkpoint written at the step training ended holds the weights in memory: test those, not a reload.
    reload = None if _best_is_final(trainer, best) and not _shards_weights(trainer) else evaluated
    if isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO):
        trainer.strategy.checkpoint_io.map_loads = True  # weights only: the optimizer's state is never read
    after = _final_validation(trainer, best) or stage_scores(
        trainer.validate(module, datamodule=datamodule, ckpt_path=reload, verbose=False), "val"
    )
    say(
        f"validation ROUGE after training:  {format_scores(after)}"
        + (f" (best checkpoint {Path(best).name})" if best else "")
    )
    test = stage_scores(trainer.test(module, datamodule=datamodule, ckpt_path=reload, verbose=False), "test")
    baselines = lead_baselines(list(raw_splits["test"]["document"]), list(raw_splits["test"]["summary"]))
    say(f"test ROUGE: {format_scores(test)}")
    say(beside_baselines(test, baselines))
    metrics = {**after, **test, **{f"initial/{k}": v for k, v in before.items()}, **baselines}
    metrics.update({"train/steps": trainer.global_step, "time/seconds": round(module.seconds_worked(), 1)})
    metrics["time/train_seconds"] = round(module.train_seconds, 3)  # inside training steps only
    release_freed_memory()
    return evaluated, metrics


def export(
    cfg: DictConfig,
    trainer: L.Trainer,
    module: Seq2SeqModule,
    built,
    best: str | None,
    evaluated: str | None,
    metrics: dict[str, float],
    run_dir: Path,
) -> None:
    """hf_model/, predictions.jsonl and metrics.json (last: its presence marks a finished run), then the Hub upload.

    Under FSDP and DeepSpeed the model holds only this rank's shards of the weights: export from the checkpoint that
    test ran on (gathered into full float32 weights); with none, every rank first saves the current weights."""
    model, encoder_tokenizer, decoder_tokenizer = built
    export_from = None
    if _shards_weights(trainer):
        export_from = Path(evaluated) if evaluated else run_dir / run_folder.EXPORT_CHECKPOINT
        if not evaluated:
            trainer.save_checkpoint(export_from, weights_only=True)
    if not trainer.is_global_zero:
        return
    export_hf_model(
        merged_copy(model) if export_from is None else load_trained(export_from)[0],
        encoder_tokenizer,
        decoder_tokenizer,
        run_dir / run_folder.HF_MODEL,
        untie=bool(cfg.model.get("share_weights")),
        run_config=cfg,
        metrics=metrics,
    )
    if export_from is not None and str(export_from) != best:  # a scratch file of ours
        shutil.rmtree(export_from) if export_from.is_dir() else export_from.unlink(missing_ok=True)
    run_folder.write_jsonl(run_dir / run_folder.PREDICTIONS, module.last_predictions.get("test", []))
    metrics.update(peak_memory_metrics())  # after the export, the run's last big step
    run_folder.write_json(run_dir / run_folder.METRICS, metrics)
    say(describe(metrics))
    say(f"run folder: {run_dir}")
    if OmegaConf.select(cfg, "export.push_to_hub"):  # last: a failed upload leaves every result in place
        say(f"uploaded {push_to_hub(run_dir / run_folder.HF_MODEL, cfg.export.push_to_hub, 'export.push_to_hub')}")


@contextlib.contextmanager
def _interruption_named(trainer: L.Trainer, run_dir: Path):
    """Ctrl-C and SIGTERM (a scheduler's preemption) end in one line with the resume command and a non-zero exit:
    Lightning turns SIGTERM into a SystemExit with no code, which shells and schedulers read as success."""
    try:
        yield
    except SystemExit as stop:  # SIGTERMException, or Lightning's sys.exit(1) after KeyboardInterrupt
        if trainer.state.status != TrainerStatus.INTERRUPTED:
            raise
        name, number = ("SIGTERM", signal.SIGTERM) if isinstance(stop, SIGTERMException) else ("Ctrl-C", signal.SIGINT)
        if run_folder.checkpoint_files(run_dir):
            then = f"continue it with: {invoked_as()} resume={run_dir}"
        else:
            then = "no checkpoint was written yet, so there is nothing to resume: start it again"
        raise Interrupted(f"training stopped by {name} at step {trainer.global_step}; {then}", number) from None


def _best_is_final(trainer: L.Trainer, best: str | None) -> bool:
    """The best checkpoint was saved at the step training ended: it holds the weights the module holds now."""
    return best is not None and Path(best).name == run_folder.best_checkpoint_name(trainer.global_step)


def _final_validation(trainer: L.Trainer, best: str | None) -> dict[str, float] | None:
    """The last validation's scores when the best checkpoint was saved right after it, at the step training ended:
    those are the weights `validate` would load, and validating them again would only repeat the same generation."""
    if not _best_is_final(trainer, best):
        return None
    scores = stage_scores([{k: v for k, v in trainer.callback_metrics.items() if k.startswith("val/")}], "val")
    return scores if "val/rouge2" in scores else None


def _loadable_for_evaluation(trainer: L.Trainer, best: str | None, run_dir: Path) -> str | None:
    """DeepSpeed cannot load a ZeRO stage 3 checkpoint folder into the engines of validate and test, which have no
    optimizer to hold the weight shards (AttributeError: ... '_restore_from_bit16_weights'): gather it once into one
    float32 file, which Lightning loads into the sharded model as full weights."""
    if best is None or not getattr(trainer.strategy, "zero_stage_3", False):
        return best
    full_weights = run_dir / run_folder.BEST_FULL_WEIGHTS
    if trainer.is_global_zero:
        run_folder.single_file_checkpoint(Path(best), full_weights)
    trainer.strategy.barrier()
    trainer.strategy.load_full_weights = True
    return str(full_weights)


def _flat(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = (
                value if isinstance(value, (int, float, str, bool)) or value is None else str(value)
            )
    return flat


def _instantiate_trainer(cfg: DictConfig, **kwargs) -> L.Trainer:
    try:
        return hydra.utils.instantiate(cfg.trainer, **kwargs)
    except Exception as error:  # Hydra wraps Lightning's MisconfigurationException; the cause is the message
        cause = error.__cause__ or error
        raise EncdecError(f"trainer: {' '.join(str(cause).split())[:300]}") from error


def _strategy(cfg: DictConfig) -> tuple[str, str | None]:
    """trainer.strategy's name (a Lightning strategy name or a _target_'s class) and its kind: deepspeed, fsdp or None."""
    strategy = cfg.trainer.get("strategy")
    name = str(strategy.get("_target_", "") if isinstance(strategy, DictConfig) else strategy).rsplit(".", 1)[-1]
    return name, next((kind for kind in ("deepspeed", "fsdp") if kind in name.lower()), None)


@user_settings("trainer")
def _check_strategy(cfg: DictConfig) -> None:
    """What Lightning would refuse only mid-run, or in words that do not name encdec's fix, as one line up front."""
    import importlib.util

    import torch

    name, kind = _strategy(cfg)
    if kind is None:
        return
    choice = HydraConfig.get().runtime.choices.get("trainer") if HydraConfig.initialized() else None
    label = f"trainer={choice}" if choice and kind in choice else f"trainer.strategy={name}"
    if kind == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        raise EncdecError(f"{label} needs the deepspeed package: pip install -e '.[deepspeed]' in the encdec checkout")
    accelerator = str(cfg.trainer.get("accelerator"))
    if not (
        accelerator in ("gpu", "cuda") or (kind == "deepspeed" and accelerator == "auto" and torch.cuda.is_available())
    ):
        raise EncdecError(
            f"{label} runs on CUDA GPUs only, not trainer.accelerator={accelerator}: "
            "pass trainer.accelerator=gpu, or use trainer=ddp trainer.accelerator=cpu for data parallel on CPU"
        )


@user_settings("trainer")
def _check_shared_run_dir(cfg: DictConfig) -> None:
    """Every node runs Hydra itself, and the default run folder is named by each node's clock: without one folder
    given for all, rank 0's node would hold the run and the others stray folders (DeepSpeed shards among them)."""
    from hydra.types import RunMode

    nodes = int(cfg.trainer.get("num_nodes") or 1)
    if nodes <= 1 or not HydraConfig.initialized():
        return
    hydra_config = HydraConfig.get()
    given = any(o.lstrip("+").startswith("hydra.run.dir=") for o in hydra_config.overrides.hydra)
    if hydra_config.mode == RunMode.RUN and not given:
        raise EncdecError(
            f"trainer.num_nodes={nodes} needs one run folder for all nodes: pass hydra.run.dir=PATH on a filesystem "
            "every node shares, the same on each node"
        )


def _checkpoint_plugins(cfg: DictConfig) -> list:
    """Atomic single-file checkpoints wherever the strategy writes through a CheckpointIO. DeepSpeed (and FSDP with
    state_dict_type=sharded) write checkpoint folders of per-rank files themselves and take no CheckpointIO."""
    _, kind = _strategy(cfg)
    strategy = cfg.trainer.get("strategy")
    fsdp_sharded = kind == "fsdp" and isinstance(strategy, DictConfig) and strategy.get("state_dict_type") == "sharded"
    # Lightning's XLA strategies take only an XLACheckpointIO (tensors off the device first): encdec's atomic one.
    io = xla.AtomicXLACheckpointIO if runs_on_xla(cfg.trainer) else AtomicCheckpointIO
    return [] if kind == "deepspeed" or fsdp_sharded else [io()]


def _shards_weights(trainer: L.Trainer) -> bool:
    return isinstance(trainer.strategy, (DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy))


@rank_zero_only
def say(message: str) -> None:
    # Before the Trainer connects, a node started by hand (NODE_RANK=1 python train.py ...) still thinks it is rank 0.
    if os.environ.get("NODE_RANK", "0") in ("", "0"):
        print(message, flush=True)


@user_settings("optimizer")
def _optimizer(cfg: DictConfig):
    settings = optimizer_class_settings(cfg)
    # Plain lists: torch before 2.13 keeps betas as given, and a ListConfig in a checkpoint fails weights_only loads.
    fused = {"fused": fused_optimizer_allowed(cfg)} if "fused" in settings and settings.fused is None else {}
    return hydra.utils.instantiate(settings, _convert_="all", **fused)


def fused_optimizer_allowed(cfg: DictConfig) -> bool:
    """The fused AdamW kernel (one kernel for the whole step, 2-6% of a CPU step, more on GPU) unless gradients must be
    clipped under a loss scaler: 16-mixed scales them, and a fused optimizer unscales them only inside step(), after
    clipping. bf16-mixed has no scaler (Seq2SeqModule.configure_gradient_clipping clips directly)."""
    scaled = str(cfg.trainer.get("precision", "32-true")) in ("16-mixed", "16")
    clipping = bool(cfg.trainer.get("gradient_clip_val") or 0)
    # DeepSpeed steps the optimizer inside its engine (leave torch's default there); torch has no fused kernel for XLA.
    return not (scaled and clipping) and _strategy(cfg)[1] != "deepspeed" and not runs_on_xla(cfg.trainer)


@user_settings("scheduler")
def _scheduler(cfg: DictConfig):
    if not cfg.get("scheduler"):
        return None
    factory = hydra.utils.instantiate(cfg.scheduler)
    if "num_training_steps" in inspect.signature(factory).parameters:
        return factory

    def without_total(optimizer, num_training_steps):
        return factory(optimizer)

    return without_total
