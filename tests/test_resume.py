"""A run killed with SIGKILL and resumed with `resume=RUN` ends bitwise equal to the same run uninterrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, assert_sane_metrics, error_lines, run_script, write_jsonl

# 7 batches an epoch, validation every 3 of them (after steps 3, 6, 10, 13, 14), a checkpoint every 2 steps: steps 6
# and 10 are both. The CSV logger's curve is part of what must come out the same.
SETTINGS = (
    "encoder=tiny",
    "decoder=tiny",
    "data=files",
    "logger=csv",
    "callbacks=none",
    "data.batch_size=2",
    "data.max_source_length=24",
    "data.max_target_length=8",
    "trainer.max_epochs=2",
    "trainer.max_steps=-1",
    "trainer.val_check_interval=3",
    "checkpoint.every_n_steps=2",
    "generation.max_new_tokens=6",
)


@pytest.fixture(scope="module")
def resume_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("resume-data")
    words = "one two three four five six seven eight nine ten eleven twelve".split()
    rows = [
        {"document": " ".join(words[(i + j) % 12] for j in range(9)), "summary": " ".join(words[i % 12 : i % 12 + 2])}
        for i in range(20)
    ]
    files = {
        "train": write_jsonl(folder / "train.jsonl", rows[:14]),
        "validation": write_jsonl(folder / "val.jsonl", rows[14:17]),
        "test": write_jsonl(folder / "test.jsonl", rows[17:]),
    }
    return [
        f"data.train_file={files['train']}",
        f"data.validation_file={files['validation']}",
        f"data.test_file={files['test']}",
    ]


@pytest.fixture(scope="module")
def uninterrupted(resume_data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    result = run_script("train.py", *SETTINGS, *resume_data, f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir.parent / "stdout.txt").write_text(result.stdout)
    return run_dir


def test_run_records_training_seconds_and_peak_memory(uninterrupted):
    metrics = json.loads((uninterrupted / "metrics.json").read_text())
    assert_sane_metrics(metrics, ("time/seconds", "time/train_seconds", "memory/peak_rss_gb"))
    assert 0 < metrics["time/train_seconds"] < metrics["time/seconds"]
    assert 0.1 < metrics["memory/peak_rss_gb"] < 64  # a Python process with torch loaded, on any machine we test
    summary = (uninterrupted.parent / "stdout.txt").read_text().splitlines()
    assert f"peak memory: {metrics['memory/peak_rss_gb']:.2f} GB RSS" in summary


def kill_after(run_dir, args, checkpoint_name, timeout=300, sig=signal.SIGKILL):
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    # SIGINT as in a terminal's foreground job: under a shell's background job (`pytest &`, CI wrappers) it arrives
    # ignored, Python then installs no KeyboardInterrupt handler, and the Ctrl-C tests would see the run finish.
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *args, f"hydra.run.dir={run_dir}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + timeout
    target = run_dir / "checkpoints" / checkpoint_name
    while not target.exists():
        assert process.poll() is None, "training ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=timeout)
    assert not (run_dir / "metrics.json").exists()
    return process.returncode, stderr


def final_state(run_dir):
    weights = load_file(run_dir / "hf_model" / "model.safetensors")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # Clocks and the process's memory peak differ from run to run; the rest must be the same.
    for key in ("time/seconds", "time/train_seconds", "memory/peak_rss_gb", "memory/peak_cuda_gb"):
        metrics.pop(key, None)
    best = sorted(p.name for p in (run_dir / "checkpoints").glob("best-*.ckpt"))
    return (
        weights,
        metrics,
        (run_dir / "predictions.jsonl").read_text(),
        (run_dir / "csv" / "metrics.csv").read_text(),
        best,
    )


def assert_same_run(a, b):
    weights_a, metrics_a, predictions_a, curve_a, best_a = final_state(a)
    weights_b, metrics_b, predictions_b, curve_b, best_b = final_state(b)
    assert weights_a.keys() == weights_b.keys()
    different = [name for name in weights_a if not (weights_a[name] == weights_b[name]).all()]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
    assert metrics_a == metrics_b
    assert predictions_a == predictions_b
    assert curve_a.splitlines() == curve_b.splitlines(), "the CSV curve differs (rows lost or repeated on resume)"
    assert best_a == best_b


# step10.ckpt is in the middle of the second epoch: its order must be that epoch's (Lightning creates the loader's
# iterator before it calls set_epoch on resume).
@pytest.mark.parametrize(
    "kill_at",
    [
        "step6.ckpt",
        pytest.param("step4.ckpt", marks=pytest.mark.slow),
        pytest.param("step10.ckpt", marks=pytest.mark.slow),
    ],
)
def test_killed_run_resumes_bitwise(uninterrupted, resume_data, tmp_path, kill_at):
    run_dir = tmp_path / "run"
    kill_after(run_dir, [*SETTINGS, *resume_data], kill_at)
    newest = max((run_dir / "checkpoints").glob("*.ckpt"), key=lambda path: path.stat().st_mtime)
    saved = torch.load(newest, weights_only=False)["encdec"]
    worked, trained = saved["seconds"], saved["train_seconds"]
    started = time.time()
    result = run_script("train.py", f"resume={run_dir}")
    resumed_for = time.time() - started
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming" in result.stdout
    assert_same_run(uninterrupted, run_dir)
    # time/seconds is the whole run's: the killed part up to its checkpoint, then the resumed part
    metrics = json.loads((run_dir / "metrics.json").read_text())
    seconds = metrics["time/seconds"]
    assert worked > 0 and worked < seconds <= worked + resumed_for + 0.1
    # time/train_seconds too: the killed part's training steps up to its checkpoint, then the resumed part's
    assert 0 < trained < metrics["time/train_seconds"] < seconds


@pytest.mark.slow
def test_killed_run_with_length_grouped_batches_resumes_bitwise(tmp_path):
    words = "one two three four five six seven eight nine ten eleven twelve".split()
    rows = [
        {
            "document": " ".join(words[(i + j) % 12] for j in range(2 + (i * 5) % 19)),
            "summary": " ".join(words[i % 12 : i % 12 + 2]),
        }
        for i in range(20)
    ]
    data = [
        f"data.{key}={write_jsonl(tmp_path / f'{key}.jsonl', part)}"
        for key, part in (("train_file", rows[:14]), ("validation_file", rows[14:17]), ("test_file", rows[17:]))
    ]
    settings = [*SETTINGS, *data, "data.group_by_length=true"]
    reference = tmp_path / "reference"
    result = run_script("train.py", *settings, f"hydra.run.dir={reference}")
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "run"
    kill_after(run_dir, settings, "step10.ckpt")  # the middle of the second epoch
    result = run_script("train.py", f"resume={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_run(reference, run_dir)


@pytest.mark.parametrize("sig, name", [(signal.SIGTERM, "SIGTERM"), (signal.SIGINT, "Ctrl-C")])
def test_signalled_run_says_how_to_resume_and_resumes_bitwise(uninterrupted, resume_data, tmp_path, sig, name):
    # A scheduler's preemption (SIGTERM) or Ctrl-C: non-zero exit as the shell reports the signal, one line naming
    # the resume command, and that command finishes the same run as one never stopped.
    run_dir = tmp_path / "run"
    code, stderr = kill_after(run_dir, [*SETTINGS, *resume_data], "step4.ckpt", sig=sig)
    assert code == 128 + sig
    lines = error_lines(stderr)
    assert len(lines) == 1 and lines[0].startswith(f"encdec: error: training stopped by {name} at step ")
    assert lines[0].endswith(f"continue it with: python train.py resume={run_dir}")
    assert "Traceback" not in stderr
    result = run_script("train.py", f"resume={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_run(uninterrupted, run_dir)


def test_resume_refuses_other_settings(uninterrupted, tmp_path):
    result = run_script("train.py", f"resume={uninterrupted}", "trainer.max_steps=12")
    assert result.returncode == 2
    assert error_lines(result.stderr) == [
        f"encdec: error: resume={uninterrupted} continues the run exactly as it was configured, so trainer.max_steps=12 "
        "would be ignored: drop it, or start a new run to change settings"
    ]


def test_resume_refuses_a_finished_run(uninterrupted):
    result = run_script("train.py", f"resume={uninterrupted}")
    assert result.returncode == 2
    assert "already finished" in error_lines(result.stderr)[0]


def test_resume_refuses_a_folder_that_is_not_a_run(tmp_path):
    result = run_script("train.py", f"resume={tmp_path}")
    assert result.returncode == 2
    assert "is not a run folder" in error_lines(result.stderr)[0]


def test_resume_names_a_corrupt_saved_config(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text("seed: [1,\n")
    (run_dir / "checkpoints").mkdir()
    torch.save({}, run_dir / "checkpoints" / "last.ckpt")
    result = run_script("train.py", f"resume={run_dir}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert error_lines(result.stderr)[0].startswith(
        f"encdec: error: resume={run_dir}: .hydra/config.yaml is not readable YAML"
    )


def test_resume_refuses_an_eval_folder(tmp_path):
    run_dir = tmp_path / "eval"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text("task_name: eval\nmodel_path: x\n")
    (run_dir / "metrics.json").write_text("{}")
    result = run_script("train.py", f"resume={run_dir}")
    assert result.returncode == 2
    assert error_lines(result.stderr) == [
        f"encdec: error: resume={run_dir} is the output of eval.py, not a training run: give a train.py run folder"
    ]


@pytest.mark.parametrize("offline, expected", [(True, {"id": "abc123"}), (False, {"id": "abc123", "resume": "allow"})])
def test_wandb_continues_the_killed_runs_id(tmp_path, offline, expected):
    from omegaconf import OmegaConf

    from encdec.lit.resume import wandb_resume_arguments

    spec = OmegaConf.create({"_target_": "lightning.pytorch.loggers.WandbLogger", "offline": offline, "id": None})
    assert wandb_resume_arguments(spec, tmp_path) == {}  # the killed run never opened wandb
    wandb = tmp_path / "wandb"
    (wandb / "offline-run-20261126_102931-abc123").mkdir(parents=True)
    (wandb / "offline-run-20261127_080000-zzz999").mkdir()  # a later part under another id: the first one counts
    (wandb / "latest-run").symlink_to(wandb / "offline-run-20261127_080000-zzz999")
    assert wandb_resume_arguments(spec, tmp_path) == expected
    spec.id = "mine"
    assert wandb_resume_arguments(spec, tmp_path) == {}  # a user's own id is left alone


def test_tensorboard_hides_the_killed_runs_events_past_the_checkpoint(tmp_path):
    from omegaconf import OmegaConf

    from encdec.lit.resume import checkpoint_step
    from encdec.lit.resume import resumed_logger as _logger

    torch.save({"global_step": 6, "state_dict": {"w": torch.zeros(2)}}, tmp_path / "last.ckpt")
    (tmp_path / "cut.ckpt").write_bytes(b"PK\x03\x04")
    assert checkpoint_step(tmp_path / "last.ckpt") == 6
    assert checkpoint_step(tmp_path / "cut.ckpt") is None and checkpoint_step(tmp_path) is None
    spec = OmegaConf.create(
        {
            "_target_": "lightning.pytorch.loggers.TensorBoardLogger",
            "save_dir": str(tmp_path),
            "name": "tensorboard",
            "version": "",
        }
    )
    assert _logger(spec, tmp_path, tmp_path / "last.ckpt")._kwargs == {"purge_step": 6}
    assert _logger(spec, tmp_path, None)._kwargs == {}


@pytest.mark.parametrize("max_steps", [16, -1])
def test_an_epoch_end_checkpoint_resumes_into_the_next_epoch(tmp_path, max_steps):
    # ModelCheckpoint saves after the epoch's end when validation runs at each epoch's end; with max_steps set,
    # Lightning 2.6 resumes that checkpoint one epoch short: 12 steps of 16 here. LinkedLastCheckpoint saves when the
    # validation ends.
    import lightning as L
    from lightning.pytorch.demos.boring_classes import BoringModel

    from encdec.lit.checkpoint_io import LinkedLastCheckpoint

    rows = torch.randn(8, 32, generator=torch.Generator().manual_seed(0))

    class Model(BoringModel):
        def training_step(self, batch, batch_idx):
            self.trained.append((self.current_epoch, batch_idx))
            return super().training_step(batch, batch_idx)

        def validation_step(self, batch, batch_idx):
            self.validated += 1
            self.log("val_loss", super().validation_step(batch, batch_idx)["x"])

        def train_dataloader(self):
            return torch.utils.data.DataLoader(rows, batch_size=2)  # 4 steps an epoch

        def val_dataloader(self):
            return torch.utils.data.DataLoader(rows[:4], batch_size=2)

    def fit(resume_from=None):
        torch.manual_seed(0)
        model = Model()
        model.trained, model.validated = [], 0
        checkpoints = LinkedLastCheckpoint(dirpath=tmp_path, monitor="val_loss", save_top_k=-1, filename="{step}")
        trainer = L.Trainer(
            max_epochs=4,
            max_steps=max_steps,
            callbacks=[checkpoints],
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
        )
        trainer.fit(model, ckpt_path=resume_from)
        return model, trainer

    uninterrupted, trainer = fit()
    resumed, resumed_trainer = fit(resume_from=tmp_path / "step=4.ckpt")  # epoch 0's checkpoint
    assert (trainer.global_step, resumed_trainer.global_step) == (16, 16)
    assert resumed.trained == uninterrupted.trained[4:]
    assert (uninterrupted.validated, resumed.validated) == (8, 6)  # 2 batches at each of 4 / 3 epoch ends
    assert all(torch.equal(a, b) for a, b in zip(uninterrupted.parameters(), resumed.parameters()))
    # the step loggers see: epoch 0's checkpoint continues the count instead of skipping one
    assert (
        resumed_trainer.fit_loop.epoch_loop._batches_that_stepped == trainer.fit_loop.epoch_loop._batches_that_stepped
    )


@pytest.mark.slow
def test_killed_run_with_max_steps_resumes_bitwise_from_an_epoch_end_checkpoint(resume_data, tmp_path):
    # Validation only at epoch ends (steps 7 and 14) and trainer.max_steps set: the kill comes right after the
    # checkpoint of epoch 0's validation, the case Lightning 2.6 resumed one epoch short.
    settings = [
        *SETTINGS,
        "trainer.max_steps=14",
        "trainer.val_check_interval=1.0",
        "checkpoint.every_n_steps=null",
        *resume_data,
    ]
    reference = tmp_path / "reference"
    result = run_script("train.py", *settings, f"hydra.run.dir={reference}")
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "run"
    kill_after(run_dir, settings, "best-step7.ckpt")
    result = run_script("train.py", f"resume={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((run_dir / "metrics.json").read_text())["train/steps"] == 14
    assert_same_run(reference, run_dir)


@pytest.mark.slow
def test_two_process_ddp_run_stopped_by_sigterm_resumes_bitwise(tmp_path):
    # Stopped right after the first epoch's last batch: the next epoch's batch order (Lightning builds the iterator
    # before it sets the epoch), and each rank's own random stream (documents of other lengths pad to other shapes,
    # so the ranks' dropout draws use up different amounts of it). Rank 0 alone reports the stop.
    words = "one two three four five six seven eight nine ten eleven twelve".split()
    rows = [
        {
            "document": " ".join(words[(i + j) % 12] for j in range(3 + (5 * i) % 17)),
            "summary": " ".join(words[i % 12 : i % 12 + 2]),
        }
        for i in range(20)
    ]
    data = [
        f"data.train_file={write_jsonl(tmp_path / 'train.jsonl', rows[:14])}",
        f"data.validation_file={write_jsonl(tmp_path / 'val.jsonl', rows[14:17])}",
        f"data.test_file={write_jsonl(tmp_path / 'test.jsonl', rows[17:])}",
    ]
    settings = [*SETTINGS, "trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu", *data]
    reference = tmp_path / "reference"
    result = run_script("train.py", *settings, f"hydra.run.dir={reference}", env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "run"
    returncode, stderr = kill_after(run_dir, settings, "step4.ckpt", sig=signal.SIGTERM)
    assert returncode == 143, stderr[-3000:]
    assert stderr.count("encdec: error: training stopped by SIGTERM") == 1
    result = run_script("train.py", f"resume={run_dir}", env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_run(reference, run_dir)


@pytest.mark.parametrize(
    "is_last_batch, processed, position", [(True, 7, (1, 0)), (False, 3, (0, 3)), (False, 0, None)]
)
def test_a_checkpoint_names_where_the_batches_continue(is_last_batch, processed, position):
    # After an epoch's last batch the next epoch starts from its own first batch: under DDP Lightning builds the
    # loader's iterator before it sets the epoch, so the sampler must know it from the checkpoint.
    from types import SimpleNamespace

    from lightning.pytorch.trainer.states import TrainerFn

    from encdec.lit.module import Seq2SeqModule

    module = Seq2SeqModule(torch.nn.Linear(1, 1), None, optimizer=torch.optim.AdamW)
    told = []
    datamodule = SimpleNamespace(
        resume_position=None, train_sampler=SimpleNamespace(resume_at=lambda *at: told.append(at))
    )
    module._trainer = SimpleNamespace(
        datamodule=datamodule, state=SimpleNamespace(fn=TrainerFn.FITTING), world_size=1, global_rank=0
    )
    progress = {
        "current": {"ready": processed, "completed": processed, "started": processed, "processed": processed},
        "is_last_batch": is_last_batch,
    }
    module.on_load_checkpoint(
        {"epoch": 0, "loops": {"fit_loop": {"epoch_loop.batch_progress": progress}}, "encdec": {}}
    )
    assert datamodule.resume_position == position
    assert told == ([position] if position else [])
