"""trainer=fsdp / deepspeed_stage_2 / deepspeed_stage_3: their configs, the checks that turn their pitfalls into one
clear line, the checkpoint plugin each strategy gets, and the export/resume paths their checkpoints take.

Lightning's FSDP and DeepSpeed run on CUDA only (torch's FSDP1 refuses CPU outright, DeepSpeed needs CUDA), so a real
sharded run is not possible here: what these tests cover is everything around it that a CPU can execute.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import SMOKE, compose_config, error_lines, run_script
from encdec import precision, run_folder
from encdec.errors import EncdecError
from encdec.inference import load_trained
from encdec.lit.checkpoint_io import AtomicCheckpointIO
from encdec.train import _check_strategy, _checkpoint_plugins, _instantiate_trainer

HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None


def trainer_config(*overrides: str):
    return compose_config("encoder=tiny", "decoder=tiny", "logger=none", *overrides)


# -- the configs ------------------------------------------------------------------------------------------------------


def test_fsdp_config():
    trainer = OmegaConf.to_container(trainer_config("trainer=fsdp").trainer, resolve=True)
    assert trainer["strategy"] == {
        "_target_": "lightning.pytorch.strategies.FSDPStrategy",
        "sharding_strategy": "FULL_SHARD",
        "state_dict_type": "full",  # one .ckpt file: resume, eval.py on a .ckpt and AtomicCheckpointIO keep working
        "cpu_offload": False,
    }
    assert (trainer["accelerator"], trainer["precision"]) == ("gpu", "bf16-mixed")
    # Everything else is the default trainer's (defaults: [default]), clipping by norm included.
    default = OmegaConf.to_container(trainer_config().trainer, resolve=True)
    assert trainer["gradient_clip_val"] == default["gradient_clip_val"] == 1.0
    assert {k: v for k, v in trainer.items() if k not in ("strategy", "accelerator", "devices", "precision")} == {
        k: v for k, v in default.items() if k not in ("strategy", "accelerator", "devices", "precision")
    }


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_configs(stage):
    cfg = trainer_config(f"trainer=deepspeed_stage_{stage}", "data.batch_size=6")
    trainer = OmegaConf.to_container(cfg.trainer, resolve=True)
    strategy = trainer["strategy"]
    assert strategy["_target_"] == "lightning.pytorch.strategies.DeepSpeedStrategy"
    assert strategy["stage"] == stage
    # Lightning would otherwise read batch_sampler.batch_size, which TokenBudgetBatchSampler does not have.
    assert strategy["logging_batch_size_per_gpu"] == 6
    assert (trainer["accelerator"], trainer["precision"]) == ("gpu", "bf16-mixed")
    assert trainer["gradient_clip_val"] == 1.0  # DeepSpeed clips by norm itself
    # The keys given are real DeepSpeedStrategy arguments (a typo would only fail on a GPU machine).
    import inspect

    from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy

    assert set(strategy) - {"_target_"} <= set(inspect.signature(DeepSpeedStrategy.__init__).parameters)
    fsdp = OmegaConf.to_container(trainer_config("trainer=fsdp").trainer.strategy)
    assert set(fsdp) - {"_target_"} <= set(inspect.signature(FSDPStrategy.__init__).parameters)


# -- one clear line instead of a traceback mid-run --------------------------------------------------------------------


@pytest.mark.skipif(HAS_DEEPSPEED, reason="deepspeed is installed here")
def test_missing_deepspeed_is_one_line_through_the_cli(tmp_path):
    run_dir = tmp_path / "run"
    result = run_script(
        "train.py",
        "encoder=tiny",
        "decoder=tiny",
        "trainer=deepspeed_stage_2",
        *SMOKE,
        f"hydra.run.dir={run_dir}",
        env={"OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 2, result.stderr[-2000:]
    lines = error_lines(result.stderr)
    assert lines == [
        "encdec: error: trainer=deepspeed_stage_2 needs the deepspeed package: "
        "pip install -e '.[deepspeed]' in the encdec checkout"
    ], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not run_dir.exists()


@pytest.mark.skipif(HAS_DEEPSPEED, reason="deepspeed is installed here")
@pytest.mark.parametrize("override", ["trainer=deepspeed_stage_3", "trainer.strategy=deepspeed_stage_2_offload"])
def test_missing_deepspeed_names_the_fix(override):
    with pytest.raises(
        EncdecError, match=r"needs the deepspeed package: pip install -e '\.\[deepspeed\]' in the encdec checkout"
    ):
        _check_strategy(trainer_config(override))


def test_sharded_strategies_on_cpu_are_one_line(monkeypatch):
    with pytest.raises(EncdecError, match=r"runs on CUDA GPUs only, not trainer.accelerator=cpu: .*trainer=ddp"):
        _check_strategy(trainer_config("trainer=fsdp", "trainer.accelerator=cpu"))
    # Lightning accepts DeepSpeed on CPU and fails only at setup ("only supported on CUDA GPUs"): caught up front.
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: object() if name == "deepspeed" else real_find_spec(name, *a)
    )
    with pytest.raises(EncdecError, match="runs on CUDA GPUs only, not trainer.accelerator=cpu"):
        _check_strategy(trainer_config("trainer=deepspeed_stage_3", "trainer.accelerator=cpu"))
    _check_strategy(trainer_config("trainer=deepspeed_stage_3"))  # accelerator=gpu passes


@pytest.mark.parametrize(
    "strategy,algorithm,through_fsdp",
    [("fsdp", None, True), ("fsdp", "norm", True), ("fsdp", "value", False), ("ddp", None, False)],
)
def test_clipping_by_norm_under_fsdp_uses_fsdps_own_norm(strategy, algorithm, through_fsdp):
    """Lightning's FSDP precision plugin refuses clip-by-norm; the module routes it to FSDP.clip_grad_norm_."""
    from types import SimpleNamespace

    from lightning.pytorch.plugins.precision import Precision
    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

    from encdec.lit.module import Seq2SeqModule

    calls = []
    wrapped = SimpleNamespace(clip_grad_norm_=lambda value: calls.append(("fsdp", value)))
    module = Seq2SeqModule(torch.nn.Linear(1, 1), None, optimizer=torch.optim.AdamW)
    module._trainer = SimpleNamespace(
        strategy=FSDPStrategy() if strategy == "fsdp" else DDPStrategy(), model=wrapped, precision_plugin=Precision()
    )
    module.clip_gradients = lambda optimizer, gradient_clip_val, gradient_clip_algorithm: calls.append(
        ("lightning", gradient_clip_val, gradient_clip_algorithm)
    )
    module.configure_gradient_clipping(None, 1.0, algorithm)
    assert calls == ([("fsdp", 1.0)] if through_fsdp else [("lightning", 1.0, algorithm)])


def test_other_strategies_are_left_to_lightning():
    for overrides in ((), ("trainer=ddp",), ("trainer=cpu",), ("trainer=gpu",)):
        _check_strategy(trainer_config(*overrides))


# -- which checkpoint plugin each strategy gets -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, atomic",
    [
        ((), True),
        (("trainer=ddp",), True),
        (("trainer=fsdp",), True),  # state_dict_type=full: FSDPStrategy writes the gathered file through CheckpointIO
        (("trainer=fsdp", "trainer.strategy.state_dict_type=sharded"), False),  # a folder of shards, no CheckpointIO
        (("trainer.strategy=fsdp",), True),
        (("trainer=deepspeed_stage_2",), False),
        (("trainer=deepspeed_stage_3",), False),
        (("trainer.strategy=deepspeed_stage_3",), False),
    ],
)
def test_checkpoint_plugin_per_strategy(overrides, atomic):
    plugins = _checkpoint_plugins(trainer_config(*overrides))
    assert [type(p) for p in plugins] == ([AtomicCheckpointIO] if atomic else [])


@pytest.mark.parametrize("overrides", [("trainer=tpu",), ("trainer.accelerator=xla",)])
def test_both_xla_spellings_get_the_atomic_xla_checkpoint_io_and_no_fused_adamw(overrides, monkeypatch):
    from encdec.lit import xla
    from encdec.train import fused_optimizer_allowed

    class StandIn:  # XLACheckpointIO itself needs torch_xla to be built
        pass

    monkeypatch.setattr(xla, "AtomicXLACheckpointIO", StandIn)
    cfg = trainer_config(*overrides)
    assert [type(p) for p in _checkpoint_plugins(cfg)] == [StandIn]
    assert fused_optimizer_allowed(cfg) is False  # torch has no fused AdamW kernel for XLA
    assert fused_optimizer_allowed(trainer_config()) is True


def test_ddp_trainer_still_writes_through_atomic_checkpoint_io():
    cfg = trainer_config("trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=1")
    precision.apply_auto(cfg.trainer)  # as train.check resolves it before the trainer is built
    trainer = _instantiate_trainer(cfg, plugins=_checkpoint_plugins(cfg), logger=False)
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


# -- export and resume with sharded strategies' checkpoints ----------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint_file(tmp_path_factory):
    """A .ckpt as FSDP (state_dict_type=full) writes it: the whole state dict plus encdec's own entry."""
    from encdec.lit.module import Seq2SeqModule
    from encdec.models import build_model

    cfg = trainer_config()
    model, _, _ = build_model(cfg)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.01)  # differ from a fresh init, so a wrong source of weights shows
    module = Seq2SeqModule(model, None, optimizer=None, run_config=OmegaConf.to_container(cfg, resolve=True))
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    path = tmp_path_factory.mktemp("ckpt") / "best-step2.ckpt"
    torch.save(checkpoint, path)
    return path, model


def test_export_from_a_full_checkpoint_file(checkpoint_file, tmp_path):
    path, trained = checkpoint_file
    exported, _, _ = load_trained(path)
    expected = trained.state_dict()
    got = exported.state_dict()
    assert set(got) == set(expected)
    assert all(torch.equal(got[name], expected[name]) for name in expected)
    assert exported.generation_config.decoder_start_token_id == trained.generation_config.decoder_start_token_id
    assert list(path.parent.iterdir()) == [path]  # nothing gathered, nothing left beside it


def test_export_from_a_deepspeed_folder_consolidates_it(checkpoint_file, tmp_path, monkeypatch):
    """A DeepSpeed checkpoint is a folder: Lightning's converter gathers it into one fp32 file, which is then read."""
    import lightning.pytorch.utilities.deepspeed as lightning_deepspeed

    path, trained = checkpoint_file
    folder = tmp_path / "last.ckpt"
    (folder / "checkpoint").mkdir(parents=True)
    calls = []

    def convert(checkpoint_dir, output_file, tag=None):  # stands in for DeepSpeed's zero_to_fp32 (needs the package)
        calls.append((Path(checkpoint_dir), Path(output_file)))
        Path(output_file).write_bytes(path.read_bytes())

    monkeypatch.setattr(lightning_deepspeed, "convert_zero_checkpoint_to_fp32_state_dict", convert)
    exported, _, _ = load_trained(folder)
    assert calls and calls[0][0] == folder
    assert calls[0][1].parent.parent == tmp_path  # gathered beside the checkpoint (its disk), not in /tmp
    assert list(tmp_path.iterdir()) == [folder]  # and the gathered copy is gone
    assert all(torch.equal(exported.state_dict()[k], v) for k, v in trained.state_dict().items())
    assert run_folder.single_file_checkpoint(path, tmp_path / "unused.ckpt") == path  # a file is taken as is


def test_resume_takes_the_deepspeed_folder_written_last(tmp_path):
    """DeepSpeed rewrites last.ckpt/'s files in place, so the folder's own mtime stays at its first save."""
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(trainer_config("trainer=deepspeed_stage_2"), run_dir / ".hydra" / "config.yaml")
    checkpoints = run_dir / "checkpoints"
    last, best = checkpoints / "last.ckpt", checkpoints / "best-step4.ckpt"
    for folder in (last, best):
        (folder / "checkpoint").mkdir(parents=True)
        (folder / "latest").write_text("checkpoint")
        (folder / "checkpoint" / "mp_rank_00_model_states.pt").write_bytes(b"x")
    # last.ckpt/ made at step 2, best-step4.ckpt/ at step 4, last.ckpt/'s files rewritten at step 6.
    os.utime(last, (1000, 1000))
    os.utime(best, (2000, 2000))
    for file in best.rglob("*"):
        os.utime(file, (2000, 2000))
    for file in last.rglob("*"):
        os.utime(file, (3000, 3000))
    os.utime(last, (1000, 1000))
    from encdec.lit.resume import resume_point

    cfg, checkpoint = resume_point(run_dir)
    assert checkpoint == last
    assert cfg.trainer.strategy.stage == 2


@pytest.mark.parametrize(
    "strategy,world_size,synced",
    [("fsdp", 2, True), ("deepspeed3", 2, True), ("deepspeed2", 2, False), ("ddp", 2, False), ("fsdp", 1, False)],
)
def test_generation_synced_across_ranks_only_under_sharded_weights(strategy, world_size, synced):
    # A rank that stops generating while another still steps would leave the other waiting in a parameter gather.
    from types import SimpleNamespace

    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

    from encdec.lit.module import Seq2SeqModule

    strategies = {
        "fsdp": FSDPStrategy(),
        "ddp": DDPStrategy(),
        "deepspeed3": SimpleNamespace(zero_stage_3=True),  # DeepSpeedStrategy's property; the package is not here
        "deepspeed2": SimpleNamespace(zero_stage_3=False),
    }
    module = Seq2SeqModule(torch.nn.Linear(1, 1), None, optimizer=torch.optim.AdamW)
    module._trainer = SimpleNamespace(strategy=strategies[strategy], world_size=world_size)
    assert module._generation_sync() == ({"synced_gpus": True} if synced else {})


@pytest.mark.parametrize("zero_stage_3", [True, False])
def test_zero3_setup_drops_the_previous_engines_hooks_and_brings_buffers_back(zero_stage_3):
    # train.py's validate() before fit() leaves the ZeRO-3 inference engine's hooks on every submodule and, after its
    # teardown, the buffers on the CPU; fit()'s engine neither removes the hooks nor moves an already-partitioned model.
    from types import SimpleNamespace

    from encdec.lit.module import Seq2SeqModule

    module = Seq2SeqModule(
        torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)), None, optimizer=torch.optim.AdamW
    )
    for layer in module.model:
        layer.register_forward_pre_hook(lambda *_: None)
        layer.register_forward_hook(lambda *_: None)
        layer.register_buffer("positions", torch.arange(3), persistent=False)
    module._trainer = SimpleNamespace(
        strategy=SimpleNamespace(zero_stage_3=zero_stage_3, root_device=torch.device("meta"))
    )
    module.setup("fit")
    hooks = [len(layer._forward_pre_hooks) + len(layer._forward_hooks) for layer in module.model]
    assert hooks == ([0, 0] if zero_stage_3 else [2, 2])
    assert [layer.positions.device.type for layer in module.model] == ["meta" if zero_stage_3 else "cpu"] * 2
    assert all("positions" in layer._non_persistent_buffers_set for layer in module.model)


@pytest.mark.parametrize("zero_stage_3", [True, False])
def test_validate_and_test_after_fit_read_zero3_shards_as_one_full_weights_file(zero_stage_3, tmp_path, monkeypatch):
    # DeepSpeed's engine for validate/test has no optimizer, so it cannot load a ZeRO-3 folder's weight shards.
    from types import SimpleNamespace

    from encdec import run_folder, train

    gathered = []
    monkeypatch.setattr(
        run_folder,
        "single_file_checkpoint",
        lambda checkpoint, scratch: gathered.append((checkpoint, scratch)) or scratch,
    )
    strategy = SimpleNamespace(zero_stage_3=zero_stage_3, load_full_weights=False, barrier=lambda: None)
    trainer = SimpleNamespace(strategy=strategy, is_global_zero=True)
    best = str(tmp_path / "checkpoints" / "best-step4.ckpt")
    loaded = train._loadable_for_evaluation(trainer, best, tmp_path)
    if zero_stage_3:
        assert loaded == str(tmp_path / ".best-full-weights.ckpt")
        assert gathered == [(Path(best), tmp_path / ".best-full-weights.ckpt")] and strategy.load_full_weights
    else:
        assert (loaded, gathered, strategy.load_full_weights) == (best, [], False)
    assert train._loadable_for_evaluation(trainer, None, tmp_path) is None  # no checkpoint: the weights in memory


def test_eval_reads_a_deepspeed_checkpoint_folder(checkpoint_file, tmp_path, monkeypatch):
    """eval.py/predict.py model_path=RUN/checkpoints/last.ckpt where last.ckpt is a DeepSpeed folder of shards."""
    import lightning.pytorch.utilities.deepspeed as lightning_deepspeed

    from encdec.inference import load_trained

    path, trained = checkpoint_file
    folder = tmp_path / "run" / "checkpoints" / "last.ckpt"
    (folder / "checkpoint").mkdir(parents=True)
    monkeypatch.setattr(
        lightning_deepspeed,
        "convert_zero_checkpoint_to_fp32_state_dict",
        lambda directory, output, tag=None: Path(output).write_bytes(path.read_bytes()),
    )
    for model_path in (folder, tmp_path / "run"):  # the folder itself, and the run folder holding it
        model, _, _ = load_trained(model_path)
        assert all(torch.equal(model.state_dict()[k], v) for k, v in trained.state_dict().items())


@pytest.mark.parametrize("rank, printed", [(0, True), (1, False)])
def test_a_signal_stopping_every_rank_is_reported_once(monkeypatch, capsys, rank, printed):
    import signal

    from lightning.pytorch.utilities import rank_zero_only

    from encdec.errors import Interrupted, exit_with

    monkeypatch.setattr(rank_zero_only, "rank", rank, raising=False)
    with pytest.raises(SystemExit) as stop:
        exit_with(
            Interrupted(
                "training stopped by SIGTERM at step 4; continue it with: python train.py resume=RUN", signal.SIGTERM
            )
        )
    assert stop.value.code == 143
    assert ("training stopped by SIGTERM" in capsys.readouterr().err) is printed
