"""Faults at every write point of a run (tests/fault_points.py lists them): a full disk at each ends in one line
naming the file and leaves the files written before it whole; a SIGKILL just before or just after each leaves no
truncated file under a name the run reads, and `resume=` (or rerunning a sweep) finishes the same run."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import pytest
import yaml

import fault_points
import in_process
from conftest import ROOT, run_folder_with_a_checkpoint, run_script, script_environment
from test_resume import SETTINGS, assert_same_run, resume_data, uninterrupted  # noqa: F401 (fixtures)
from test_sweeps import app, trials  # noqa: F401 (fixture)

# (point, which commit of it): the second step checkpoint and last.ckpt, so an earlier one exists to be kept whole.
WRITES = [("step", 2), ("best", 1), ("last", 2), ("link", 1), ("hf_model", 1), ("predictions", 1), ("metrics", 1)]


def readable_checkpoint(path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (zipfile.BadZipFile, OSError):
        return False


def assert_nothing_truncated(run_dir) -> None:
    """Every name the run (or resume=, eval.py) reads holds a whole file."""
    for checkpoint in (run_dir / "checkpoints").glob("*.ckpt"):
        assert readable_checkpoint(checkpoint), f"{checkpoint.name} is truncated"
    if (run_dir / "metrics.json").exists():
        json.loads((run_dir / "metrics.json").read_text())
    if (run_dir / "predictions.jsonl").exists():
        [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    if (run_dir / "hf_model").exists():
        from safetensors.torch import load_file

        assert load_file(run_dir / "hf_model" / "model.safetensors")
        json.loads((run_dir / "hf_model" / "config.json").read_text())


# ------------------------------------------------------------------------------------------ a full disk

# 4 steps, validation after steps 2 and 4 (best-step2.ckpt, last.ckpt twice), a step checkpoint after each step.
SHORT = ("trainer.max_steps=4", "trainer.val_check_interval=2", "checkpoint.every_n_steps=1")


@pytest.mark.parametrize("point, n", WRITES)
def test_full_disk_at_each_write_is_one_line_and_keeps_what_was_written(tmp_path, resume_data, point, n):  # noqa: F811
    run_dir = tmp_path / "run"
    undo = fault_points.install(point, n, "enospc")
    try:
        outcome = in_process.run("train.py", *SETTINGS, *resume_data, *SHORT, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    finally:
        undo()
    if point == "link":  # no hard link: last.ckpt becomes a copy of the best, and the run goes on
        assert outcome.code == 0, outcome.stderr[-3000:]
        assert (run_dir / "metrics.json").is_file()
        assert_nothing_truncated(run_dir)
        return
    target = fault_points.faulted["target"]
    assert outcome.code == 2, outcome.stderr[-3000:]
    assert outcome.errors == [
        f"encdec: error: disk full while writing {target}: free space or point hydra.run.dir at "
        "a larger disk; files already written were left whole"
    ]
    assert "Traceback" not in outcome.stderr
    assert fault_points.digest(target) == fault_points.faulted["before"]  # the previous version, or still nothing
    assert_nothing_truncated(run_dir)
    assert not list(run_dir.rglob(".*.tmp")) and not list(run_dir.glob(".hf_model.*"))  # no temporary left
    assert not (run_dir / "metrics.json").exists()
    if point == "step":  # step2.ckpt failed; step1.ckpt is whole
        assert target.name == "step2.ckpt" and readable_checkpoint(run_dir / "checkpoints" / "step1.ckpt")
    if point == "last":  # the second last.ckpt failed: the first is still there, whole
        assert fault_points.faulted["before"] is not None


# ------------------------------------------------------------------------------------------ SIGKILL, then resume=


def killed_at(run_dir, args, point, n, phase):
    environment = script_environment(fault_points.environment(point, n, phase))
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args, f"hydra.run.dir={run_dir}"],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == -9, f"not killed at {point}:{n}:{phase}\n{result.stderr[-3000:]}"


def kill_and_resume(reference, run_dir, data, point, n, phase):
    killed_at(run_dir, [*SETTINGS, *data], point, n, phase)
    assert_nothing_truncated(run_dir)
    if not (run_dir / "metrics.json").exists():
        result = run_script("train.py", f"resume={run_dir}")
        assert result.returncode == 0, result.stderr[-3000:]
    assert_same_run(reference, run_dir)
    assert not list(run_dir.rglob(".*.tmp")) and not list(run_dir.glob(".hf_model.*")), "a killed write's leftovers"


# After metrics.json's rename the run is complete: nothing to resume. Each case is a killed run and its resume
# (~40 s): slow. tests/test_resume.py kills a run in the default suite.
KILLS = [
    (point, n, phase)
    for point, n in WRITES
    for phase in ("kill-before", "kill-after")
    if (point, phase) != ("metrics", "kill-after")
]


@pytest.mark.slow
@pytest.mark.parametrize("point, n, phase", KILLS)
def test_killed_at_each_write_resumes_to_the_same_run(uninterrupted, resume_data, tmp_path, point, n, phase):  # noqa: F811
    kill_and_resume(uninterrupted, tmp_path / "run", resume_data, point, n, phase)


# ------------------------------------------------------------------------------------------ a sweep's optuna.db


def sweep_killed_at(app, sweep, n, phase) -> bool:  # noqa: F811
    """Run the tiny app's 3-trial sweep with its n-th optuna.db commit killed; False when it has fewer commits."""
    environment = {**app.env, **fault_points.environment("optuna_db", n, phase)}
    result = subprocess.run(
        app.command(sweep, "linger=0"), capture_output=True, text=True, timeout=300, env=environment
    )
    assert result.returncode in (0, -9), result.stderr[-3000:]
    return result.returncode == -9


def assert_sweep_whole(app, sweep) -> None:  # noqa: F811
    """Rerun the sweep: it ends with its 3 trials complete, each value the app's for its parameters, and the best."""
    result = app(sweep, "linger=0")
    assert result.returncode == 0, result.stderr[-3000:]
    complete = [t for t in trials(sweep, "fake") if t.state.name == "COMPLETE"]
    assert len(complete) == 3, [t.state.name for t in trials(sweep, "fake")]
    for trial in complete:
        assert trial.value == pytest.approx(-((trial.params["x"] - 0.3) ** 2))
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["best_value"] == pytest.approx(max(t.value for t in complete))


@pytest.mark.parametrize("n, phase", [(1, "kill-before"), (6, "kill-after")])
def test_sweep_killed_at_an_optuna_db_commit_reruns_whole(app, tmp_path, n, phase):  # noqa: F811
    sweep = tmp_path / "sweep"
    assert sweep_killed_at(app, sweep, n, phase)
    assert_sweep_whole(app, sweep)


@pytest.mark.slow
def test_sweep_killed_at_every_optuna_db_commit_reruns_whole(app, tmp_path):  # noqa: F811
    commits = 0
    for n in range(1, 200):
        for phase in ("kill-before", "kill-after"):
            sweep = tmp_path / f"sweep-{n}-{phase}"
            if not sweep_killed_at(app, sweep, n, phase):
                assert commits > 5, f"only {commits} commits"
                return
            assert_sweep_whole(app, sweep)
        commits = n
    pytest.fail("more than 200 commits")


def test_resume_removes_what_killed_writes_left(tmp_path):
    from encdec.lit.resume import resume_point

    run_dir, whole = run_folder_with_a_checkpoint(tmp_path, {"state_dict": {}})
    left = [run_dir / "checkpoints" / ".last.ckpt.k2j4.tmp", run_dir / ".metrics.json.x1.tmp", run_dir / ".hf_model.q9"]
    left[0].write_bytes(b"half a checkpoint")
    left[1].write_text("{")
    (left[2] / "encoder_tokenizer").mkdir(parents=True)
    assert resume_point(run_dir)[1] == whole
    assert not any(path.exists() for path in left)
    assert sorted(p.name for p in run_dir.rglob("*")) == [".hydra", "checkpoints", "config.yaml", "step2.ckpt"]
