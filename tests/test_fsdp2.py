"""trainer=fsdp2 (FSDP2, `fully_shard`, through Lightning's ModelParallelStrategy) on 2 CPU processes with gloo: the
run folder of a real sharded run, and a run killed at a write point (SIGKILL, as tests/test_faults.py does for one
process) that resumes bitwise equal to the run uninterrupted. Lightning's FSDP (FSDP1) and DeepSpeed cannot run on
a CPU (tests/test_scale.py); FSDP2 can."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

import fault_points
from conftest import ROOT, assert_sane_metrics, compose_config, run_script, script_environment, write_jsonl
from test_resume import SETTINGS, assert_same_run

TIMEOUT_S = 600
FSDP2_CPU = ("trainer=fsdp2", "trainer.accelerator=cpu", "trainer.precision=32-true", "trainer.devices=2")


def test_fsdp2_config():
    trainer = OmegaConf.to_container(compose_config("trainer=fsdp2").trainer, resolve=True)
    assert trainer["strategy"] == {
        "_target_": "encdec.lit.fsdp2.FullyShardStrategy",
        "save_distributed_checkpoint": False,
    }
    assert (trainer["accelerator"], trainer["devices"], trainer["precision"]) == ("auto", "auto", "bf16-mixed")
    assert trainer["gradient_clip_val"] == 1.0


def test_fsdp2_is_one_data_parallel_group_of_every_rank():
    from encdec.lit.fsdp2 import FullyShardStrategy

    strategy = FullyShardStrategy()
    assert (strategy._data_parallel_size, strategy._tensor_parallel_size) == ("auto", 1)
    assert strategy._save_distributed_checkpoint is False


@pytest.fixture(scope="module")
def fsdp2_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fsdp2-data")
    words = "one two three four five six seven eight nine ten eleven twelve".split()
    rows = [
        {
            "document": " ".join(words[(i + j) % 12] for j in range(3 + (5 * i) % 17)),
            "summary": " ".join(words[i % 12 : i % 12 + 2]),
        }
        for i in range(36)
    ]
    return [
        f"data.train_file={write_jsonl(folder / 'train.jsonl', rows[:28])}",
        f"data.validation_file={write_jsonl(folder / 'val.jsonl', rows[28:32])}",
        f"data.test_file={write_jsonl(folder / 'test.jsonl', rows[32:])}",
    ]


@pytest.fixture(scope="module")
def fsdp2_reference(fsdp2_data, tmp_path_factory):
    """The uninterrupted 2-process run: 28 rows, 2 a rank, 7 steps an epoch, 14 steps."""
    run_dir = tmp_path_factory.mktemp("fsdp2") / "reference"
    result = run_script(
        "train.py",
        *SETTINGS,
        *FSDP2_CPU,
        *fsdp2_data,
        f"hydra.run.dir={run_dir}",
        timeout=TIMEOUT_S,
        env={"OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return run_dir


@pytest.mark.slow
def test_two_process_fsdp2_run_folder(fsdp2_reference):
    run_dir = fsdp2_reference
    for name in ("checkpoints/last.ckpt", "checkpoints/step2.ckpt", "hf_model/model.safetensors", "metrics.json"):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "checkpoints").glob("best-step*.ckpt"))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert_sane_metrics(metrics, ("val/rouge2", "val/loss", "test/rouge2"))
    assert metrics["train/steps"] == 14  # 28 rows, 2 per rank, 2 ranks, 2 epochs: the ranks really split the data
    assert len((run_dir / "predictions.jsonl").read_text().splitlines()) == 4  # gathered from both ranks
    # One file per checkpoint, gathered on rank 0 (not a folder of shards), loadable without any process group.
    import torch

    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert all(type(tensor) is torch.Tensor for tensor in state.values())
    assert sum(tensor.numel() for tensor in state.values()) > 4_000_000  # the whole tiny pair, not one rank's half


# The write points of a run (tests/fault_points.py): a step checkpoint in the middle of the first epoch, the best
# checkpoint (whose full weights validate/test and the export read), and the export itself.
@pytest.mark.slow
@pytest.mark.parametrize("point", ["step:2:kill-after", "best:1:kill-before", "hf_model:1:kill-before"])
def test_two_process_fsdp2_run_killed_at_a_write_resumes_bitwise(fsdp2_reference, fsdp2_data, tmp_path, point):
    run_dir = tmp_path / "run"
    place, n, fault = point.split(":")
    env = script_environment({"OMP_NUM_THREADS": "1", **fault_points.environment(place, int(n), fault)})
    log = tmp_path / "killed.log"
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "train.py"), *SETTINGS, *FSDP2_CPU, *fsdp2_data, f"hydra.run.dir={run_dir}"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,  # rank 1 is rank 0's child: killing the job's group takes both
        )
        try:
            process.wait(timeout=TIMEOUT_S)  # rank 0 killed at the write point
        finally:
            try:  # the other rank, left waiting on a collective with a dead peer, as a job kill would leave none
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert process.returncode == -signal.SIGKILL, log.read_text()[-3000:]
    assert not (run_dir / "metrics.json").exists()
    result = run_script("train.py", f"resume={run_dir}", timeout=TIMEOUT_S, env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-4000:]
    assert_same_run(fsdp2_reference, run_dir)
