"""The training recipe, top to bottom: build, check, validate, fit, test, export.

`train.py` at the repository root is only the Hydra entry point that calls `run(cfg)`.
"""

from __future__ import annotations

import inspect
import logging
import time
import warnings
from pathlib import Path

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from encdec import run_folder
from encdec.errors import EncdecError
from encdec.lit.checkpoint_io import AtomicCheckpointIO
from encdec.lit.datamodule import SummarizationDataModule
from encdec.lit.module import Seq2SeqModule
from encdec.metrics import ROUGE_TYPES
from encdec.finetune import count_parameters, merged_copy
from encdec.models import build_model

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> float | None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    resume_from = None
    if cfg.get("resume"):
        cfg, resume_from = run_folder.resume_point(run_dir)
        say(f"resuming {run_dir} from {resume_from.name}")
        # Our batch sampler does skip the trained batches (see ResumableBatchSampler); Lightning cannot see that.
        warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch")
    else:
        run_folder.check_fresh(run_dir)
    L.seed_everything(cfg.seed, workers=True)

    model, encoder_tokenizer, decoder_tokenizer = build_model(cfg)
    total, trainable = count_parameters(model)
    say(f"model: {cfg.encoder.name} -> {cfg.decoder.name}: {total / 1e6:.1f}M parameters, {trainable / 1e6:.1f}M trainable")

    datamodule = SummarizationDataModule(
        cfg.data,
        encoder_tokenizer,
        decoder_tokenizer,
        decoder_start_token_id=model.config.decoder_start_token_id,
        max_source_positions=getattr(model.encoder.config, "max_position_embeddings", None),
        max_target_positions=getattr(model.decoder.config, "max_position_embeddings", None),
        seed=cfg.seed,
    )
    datamodule.prepare()
    sizes = {split: len(ds) for split, ds in datamodule.tokenized.items()}
    say(f"data: {cfg.data.name}: {sizes['train']} train, {sizes['validation']} validation, {sizes['test']} test")

    module = Seq2SeqModule(
        model,
        decoder_tokenizer,
        optimizer=_optimizer(cfg),
        scheduler=_scheduler(cfg),
        run_config=OmegaConf.to_container(cfg, resolve=True),
    )
    checkpoint = ModelCheckpoint(
        dirpath=run_dir / run_folder.CHECKPOINTS,
        filename="best-step{step}",
        auto_insert_metric_name=False,
        monitor=cfg.checkpoint.monitor,
        mode=cfg.checkpoint.mode,
        save_top_k=cfg.checkpoint.save_top_k,
        save_last=cfg.checkpoint.save_last,
    )
    callbacks = [checkpoint]
    if cfg.checkpoint.get("every_n_steps"):
        callbacks.append(
            ModelCheckpoint(
                dirpath=run_dir / run_folder.CHECKPOINTS,
                filename="step{step}",
                auto_insert_metric_name=False,
                every_n_train_steps=cfg.checkpoint.every_n_steps,
                save_top_k=-1,
            )
        )
    loggers = [hydra.utils.instantiate(spec) for spec in (cfg.get("logger") or {}).values() if spec]
    for name, spec in (cfg.get("callbacks") or {}).items():
        if spec and (loggers or name != "lr_monitor"):
            callbacks.append(hydra.utils.instantiate(spec))
    trainer: L.Trainer = _instantiate_trainer(
        cfg,
        callbacks=callbacks,
        logger=loggers or False,
        default_root_dir=str(run_dir),
        plugins=[AtomicCheckpointIO()],
        # Our batch sampler shards itself across ranks and knows how to resume mid-epoch.
        use_distributed_sampler=False,
    )

    for logger in trainer.loggers:
        logger.log_hyperparams(_flat(OmegaConf.to_container(cfg, resolve=True)))
    started = time.time()
    if resume_from is None:
        module.initial_metrics = _rouge(trainer.validate(module, datamodule=datamodule, verbose=False), "val")
        say(f"validation ROUGE before training: {_format(module.initial_metrics)}")
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from)
    before = module.initial_metrics
    best = checkpoint.best_model_path or None
    after = _rouge(trainer.validate(module, datamodule=datamodule, ckpt_path=best, verbose=False), "val")
    say(f"validation ROUGE after training:  {_format(after)}" + (f" (best checkpoint {Path(best).name})" if best else ""))
    test = _rouge(trainer.test(module, datamodule=datamodule, ckpt_path=best, verbose=False), "test")
    say(f"test ROUGE: {_format(test)}")

    if trainer.is_global_zero:
        run_folder.export_hf_model(
            merged_copy(model), encoder_tokenizer, decoder_tokenizer, run_dir / run_folder.HF_MODEL,
            untie=bool(cfg.model.get("share_weights")),
        )
        metrics = {**after, **test, **{f"initial/{k}": v for k, v in before.items()}}
        metrics.update({"train/steps": trainer.global_step, "time/seconds": round(time.time() - started, 1)})
        run_folder.write_jsonl(run_dir / run_folder.PREDICTIONS, module.last_predictions.get("test", []))
        run_folder.write_json(run_dir / run_folder.METRICS, metrics)
        say(f"run folder: {run_dir}")
    return (after | test).get(cfg.get("optimized_metric") or "val/rouge2")


def _flat(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) or value is None else str(value)
    return flat


def _instantiate_trainer(cfg: DictConfig, **kwargs) -> L.Trainer:
    try:
        return hydra.utils.instantiate(cfg.trainer, **kwargs)
    except Exception as error:  # Hydra wraps Lightning's MisconfigurationException; the cause is the message
        cause = error.__cause__ or error
        raise EncdecError(f"trainer: {' '.join(str(cause).split())[:300]}") from error


@rank_zero_only
def say(message: str) -> None:
    print(message, flush=True)


def _rouge(results: list[dict[str, float]], stage: str) -> dict[str, float]:
    merged = {k: float(v) for part in results for k, v in part.items()}
    return {k: merged[k] for k in [f"{stage}/loss", *(f"{stage}/{r}" for r in ROUGE_TYPES)] if k in merged}


def _format(metrics: dict[str, float]) -> str:
    return "  ".join(f"{name.split('/')[-1]} {value:.2f}" for name, value in metrics.items())


def _optimizer(cfg: DictConfig):
    if cfg.optimizer.get("lr", 1) <= 0:
        raise EncdecError(f"optimizer.lr={cfg.optimizer.lr} must be positive")
    return hydra.utils.instantiate(cfg.optimizer)


def _scheduler(cfg: DictConfig):
    if not cfg.get("scheduler"):
        return None
    factory = hydra.utils.instantiate(cfg.scheduler)
    if "num_training_steps" in inspect.signature(factory).parameters:
        return factory

    def without_total(optimizer, num_training_steps):
        return factory(optimizer)

    return without_total
