"""Multirun: Hydra grid sweeps, encdec's Optuna sweeper (resume, kill, failing trials) and the SLURM launcher config.

The sweeper's behaviour is tested fast on a tiny Hydra app that only computes a number; the same sweeps on train.py
(tiny models, SMOKE settings, ~20-40 s a run here) are marked slow.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna  # noqa: E402  (a dependency of the sweeps extra, which the tests install)
import pytest
from omegaconf import OmegaConf

from conftest import ROOT, SMOKE, compose_config, error_lines, run_script


def trials(sweep_dir: Path, study_name: str):
    study = optuna.load_study(study_name=study_name, storage=f"sqlite:///{sweep_dir / 'optuna.db'}")
    return study.get_trials(deepcopy=False)


def states(sweep_dir: Path, study_name: str) -> list[str]:
    return [t.state.name for t in trials(sweep_dir, study_name)]


def why(sweep_dir: Path, study_name: str, result=None) -> str:
    """For assertion messages: each trial's state and error, and the end of the sweep's output."""
    lines = [f"{t.number} {t.state.name} {t.user_attrs.get('error', '')}" for t in trials(sweep_dir, study_name)]
    if result is not None:
        lines += [result.stdout[-2000:], result.stderr[-2000:]]
    return "\n".join(lines)


def run_folders(sweep_dir: Path) -> list[str]:
    return sorted(p.name for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit())


# ------------------------------------------------------------------------------------------ a tiny Hydra app

APP = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    import hydra
    from hydra.core.hydra_config import HydraConfig

    @hydra.main(version_base="1.3", config_path="conf", config_name="app")
    def main(cfg):
        out = Path(HydraConfig.get().runtime.output_dir)
        time.sleep(cfg.sleep)
        if cfg.mode == "exit":
            sys.exit(2)          # what encdec's guarded() does on a user error
        if cfg.mode == "raise":
            raise RuntimeError("boom")
        if cfg.mode == "none":
            return None
        if cfg.mode == "nonfinite":
            return float("nan")
        value = -((cfg.x - 0.3) ** 2)
        (out / "metrics.json").write_text(json.dumps({"val/rouge2": value}))
        time.sleep(cfg.linger)   # finished, but the sweeper has not heard yet
        return value

    if __name__ == "__main__":
        main()
    """
)
APP_CONFIG = """
defaults:
  - _self_
  - override hydra/sweeper: encdec_optuna
x: 0.5
mode: ok
sleep: 0
linger: 0
optimized_metric: val/rouge2
hydra:
  searchpath: [file://{conf}]
  sweeper:
    study_name: fake
    n_trials: 3
    sampler: {{name: tpe, seed: 1}}
    params:
      x: {{type: float, low: 0.0, high: 1.0}}
"""


@pytest.fixture
def app(tmp_path):
    folder = tmp_path / "app"
    (folder / "conf").mkdir(parents=True)
    (folder / "app.py").write_text(APP)
    (folder / "conf" / "app.yaml").write_text(APP_CONFIG.format(conf=ROOT / "conf"))
    environment = {
        **os.environ,
        # Hydra finds plugins in the hydra_plugins namespace package; ours is installed with encdec (src/).
    }

    def command(sweep_dir: Path, *overrides: str) -> list[str]:
        return [sys.executable, str(folder / "app.py"), "-m", f"hydra.sweep.dir={sweep_dir}", *overrides]

    def run(sweep_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            command(sweep_dir, *overrides), capture_output=True, text=True, timeout=300, env=environment
        )

    run.command = command
    run.env = environment
    return run


def test_optuna_sweep_runs_n_trials_and_writes_results(app, tmp_path):
    sweep = tmp_path / "sweep"
    result = app(sweep)
    assert result.returncode == 0, result.stderr[-3000:]
    assert states(sweep, "fake") == ["COMPLETE"] * 3
    assert run_folders(sweep) == ["0", "1", "2"]
    done = trials(sweep, "fake")
    for trial in done:  # each trial is an ordinary run folder with its own config
        folder = sweep / str(trial.number)
        assert json.loads((folder / "metrics.json").read_text())["val/rouge2"] == pytest.approx(trial.value)
        assert OmegaConf.load(folder / ".hydra" / "config.yaml").x == pytest.approx(trial.params["x"])
    results = OmegaConf.load(sweep / "optimization_results.yaml")
    best = max(done, key=lambda t: t.value)
    assert results.best_trial == best.number and results.best_value == pytest.approx(best.value)
    assert results.best_params.x == pytest.approx(best.params["x"]) and results.complete == 3
    assert f"best trial {best.number}: val/rouge2=" in result.stdout


def test_resume_runs_only_the_remaining_trials(app, tmp_path):
    sweep = tmp_path / "sweep"
    first = app(sweep, "hydra.sweeper.n_trials=1")
    assert first.returncode == 0, first.stderr[-3000:]
    assert states(sweep, "fake") == ["COMPLETE"]
    stamp = (sweep / "0" / "metrics.json").stat().st_mtime_ns
    x0 = trials(sweep, "fake")[0].params["x"]

    second = app(sweep, "hydra.sweeper.n_trials=3")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "1 of 3 trials done, 2 to run" in second.stdout + second.stderr
    assert states(sweep, "fake") == ["COMPLETE"] * 3
    assert (sweep / "0" / "metrics.json").stat().st_mtime_ns == stamp, "trial 0 ran again"
    assert run_folders(sweep) == ["0", "1", "2"]
    # the resumed sampler does not replay the first session's draws
    assert all(t.params["x"] != x0 for t in trials(sweep, "fake")[1:])

    third = app(sweep, "hydra.sweeper.n_trials=3")
    assert third.returncode == 0 and "3 of 3 trials done, 0 to run" in third.stdout + third.stderr


def test_failing_trials_do_not_end_the_sweep(app, tmp_path):
    """SystemExit (encdec's exit 2), an exception, None and NaN each make one FAILED trial; the sweep goes on."""
    sweep = tmp_path / "sweep"
    modes = ["exit", "raise", "none", "nonfinite", "ok"]
    result = app(
        sweep,
        "hydra.sweeper.n_trials=5",
        f"mode=choice({','.join(modes)})",
        "hydra.sweeper.enqueue_trials=[" + ",".join(f"{{mode:{m}}}" for m in modes) + "]",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    done = trials(sweep, "fake")
    assert [t.params["mode"] for t in done] == modes
    assert [t.state.name for t in done] == ["FAIL"] * 4 + ["COMPLETE"]
    errors = [t.user_attrs["error"] for t in done[:4]]
    assert "exited with code 2" in errors[0] and "boom" in errors[1]
    assert "None" in errors[2] and "nan" in errors[3]
    assert "the sweep goes on" in result.stdout + result.stderr
    assert OmegaConf.load(sweep / "optimization_results.yaml").best_trial == 4


def test_a_sweep_where_no_trial_completes_fails(app, tmp_path):
    sweep = tmp_path / "sweep"
    result = app(sweep, "hydra.sweeper.n_trials=2", "mode=exit")
    assert result.returncode == 1
    assert states(sweep, "fake") == ["FAIL", "FAIL"]
    assert error_lines(result.stderr) and "no trial of study fake completed" in error_lines(result.stderr)[-1]
    assert OmegaConf.load(sweep / "optimization_results.yaml").best_trial is None


def _start_and_kill(app, sweep: Path, wait_for: str, *overrides: str) -> None:
    """Start the sweep, SIGKILL it (no cleanup at all) as soon as `sweep/wait_for` exists."""
    process = subprocess.Popen(
        app.command(sweep, *overrides),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=app.env,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 120
        while not (sweep / wait_for).exists():
            assert process.poll() is None, f"the sweep ended before {wait_for} appeared"
            assert time.time() < deadline, f"{wait_for} did not appear in time"
            time.sleep(0.02)
    finally:
        process.kill()
        process.wait()


def test_killed_after_a_run_finished_recovers_it_from_metrics_json(app, tmp_path):
    """Killed between the run writing metrics.json and the study recording it: the trial is recovered, not redone."""
    sweep = tmp_path / "sweep"
    _start_and_kill(app, sweep, "0/metrics.json", "linger=3")
    assert states(sweep, "fake") == ["RUNNING"]
    stamp = (sweep / "0" / "metrics.json").stat().st_mtime_ns

    result = app(sweep, "linger=3", "hydra.sweeper.n_trials=2")
    assert result.returncode == 0, result.stderr[-3000:]
    done = trials(sweep, "fake")
    assert [t.state.name for t in done] == ["COMPLETE", "COMPLETE"]
    assert done[0].user_attrs.get("recovered") is True
    assert done[0].value == json.loads((sweep / "0" / "metrics.json").read_text())["val/rouge2"]
    assert (sweep / "0" / "metrics.json").stat().st_mtime_ns == stamp, "trial 0 ran again"


def test_killed_mid_trial_resumes_and_retries_the_interrupted_parameters(app, tmp_path):
    sweep = tmp_path / "sweep"
    _start_and_kill(app, sweep, "1/.hydra/config.yaml", "sleep=1")  # trial 0 done, trial 1 running
    stamp = (sweep / "0" / "metrics.json").stat().st_mtime_ns

    result = app(sweep, "sleep=1")
    assert result.returncode == 0, result.stderr[-3000:]
    done = trials(sweep, "fake")
    assert sum(t.state.name == "COMPLETE" for t in done) == 3, [t.state.name for t in done]
    assert done[0].state.name == "COMPLETE"
    assert (sweep / "0" / "metrics.json").stat().st_mtime_ns == stamp, "trial 0 ran again"
    interrupted = done[1]
    assert interrupted.state.name == "FAIL" and interrupted.user_attrs.get("interrupted") is True
    retry = done[2]  # the interrupted parameters run first, as a new trial in a new folder
    assert retry.user_attrs.get("retry_of") == 1 and retry.params == interrupted.params
    assert retry.state.name == "COMPLETE" and (sweep / "2" / "metrics.json").is_file()
    assert len(done) == 4


def test_command_line_search_space_and_group_choices(app, tmp_path):
    sweep = tmp_path / "sweep"
    result = app(sweep, "hydra.sweeper.n_trials=2", "hydra.sweeper.params={}", "x=tag(log,interval(0.01,1.0))")
    assert result.returncode == 0, result.stderr[-3000:]
    done = trials(sweep, "fake")
    assert [t.state.name for t in done] == ["COMPLETE", "COMPLETE"]
    distribution = done[0].distributions["x"]
    assert distribution.log and (distribution.low, distribution.high) == (0.01, 1.0)


def test_a_value_on_the_command_line_pins_a_searched_key(app, tmp_path):
    sweep = tmp_path / "sweep"
    result = app(sweep, "hydra.sweeper.n_trials=2", "x=0.25")
    assert result.returncode == 0, result.stderr[-3000:]
    done = trials(sweep, "fake")
    assert [t.params for t in done] == [{}, {}]
    for trial in done:
        assert OmegaConf.load(sweep / str(trial.number) / ".hydra" / "config.yaml").x == 0.25


# ------------------------------------------------------------------------------------- the search-space syntax


def test_search_space_specs():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from hydra_plugins.encdec_optuna_sweeper._search_space import distribution_from_spec

    assert distribution_from_spec(
        "lr", {"type": "float", "low": "1e-5", "high": 1e-3, "log": True}
    ) == FloatDistribution(1e-5, 1e-3, log=True)
    assert distribution_from_spec("n", {"type": "int", "low": 0, "high": 100, "step": 10}) == IntDistribution(
        0, 100, step=10
    )
    assert distribution_from_spec("b", {"type": "categorical", "choices": [4, 8]}) == CategoricalDistribution((4, 8))
    assert distribution_from_spec("lr", "tag(log, interval(1e-5, 1e-3))") == FloatDistribution(1e-5, 1e-3, log=True)
    assert distribution_from_spec("g", "choice(greedy, beam)") == CategoricalDistribution(("greedy", "beam"))
    assert distribution_from_spec("w", "range(0, 50, 10)") == IntDistribution(0, 40, step=10)
    for bad in (
        {"type": "float", "low": 1},
        {"type": "gaussian"},
        {"type": "float", "low": 2, "high": 1},
        {"type": "categorical", "choices": [[1, 2]]},
        {"type": "int", "low": 0, "high": 3, "stp": 1},
        "0.1",
    ):
        with pytest.raises(ValueError, match="hydra.sweeper.params.p"):
            distribution_from_spec("p", bad)


@pytest.mark.parametrize(
    "value",
    [
        3e-4,
        1e-05,
        0.1,
        7,
        0,
        True,
        False,
        None,
        "adamw",
        "beam",
        "a b",
        "it's",
        "1",
        "null",
        "x,y",
        "${oops}",
        2.5e10,
        "/data/train.jsonl",
        "a:b",
        "-3",
        "google-bert/bert-base-cased",
        "",
    ],
)
def test_sampled_values_round_trip_through_hydra_overrides(value):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from hydra_plugins.encdec_optuna_sweeper._search_space import override_value

    (override,) = OverridesParser.create().parse_overrides([f"key={override_value(value)}"])
    parsed = override.value()
    assert parsed == value and type(parsed) is type(value)


# ------------------------------------------------------------------------------------- configs and the plugin


def test_hparams_search_configs_compose():
    from hydra import compose, initialize_config_dir

    from conftest import CONF

    with initialize_config_dir(str(CONF), version_base="1.3"):
        for name in ("aclsum_optuna", "tiny_optuna"):
            cfg = compose("train", overrides=[f"hparams_search={name}"], return_hydra_config=True)
            sweeper = cfg.hydra.sweeper
            assert sweeper._target_ == "hydra_plugins.encdec_optuna_sweeper.encdec_optuna_sweeper.EncdecOptunaSweeper"
            assert sweeper.study_name == name and sweeper.direction == "maximize" and sweeper.params
            assert sweeper.metric == cfg.optimized_metric == "val/rouge2"
    assert compose_config("hparams_search=tiny_optuna").encoder.name == "tiny"


def test_sweeper_plugin_is_discovered():
    from hydra.core.plugins import Plugins
    from hydra.plugins.sweeper import Sweeper

    names = {f"{c.__module__}.{c.__name__}" for c in Plugins.instance().discover(Sweeper)}
    assert "hydra_plugins.encdec_optuna_sweeper.encdec_optuna_sweeper.EncdecOptunaSweeper" in names


def test_slurm_launcher_config_composes():
    from hydra import compose, initialize_config_dir

    from conftest import CONF

    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose(
            "train", overrides=["hydra/launcher=slurm", "hparams_search=tiny_optuna"], return_hydra_config=True
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert str(launcher.submitit_folder).endswith("/.submitit/%j")
    assert launcher.gpus_per_node == 1 and launcher.timeout_min > 0
    if _submitit_installed():
        from hydra.core.plugins import Plugins

        assert launcher._target_ in Plugins.instance().class_name_to_class


def _submitit_installed() -> bool:
    try:
        import hydra_plugins.hydra_submitit_launcher  # noqa: F401
    except ImportError:
        return False
    return True


# ------------------------------------------------------------------------------------------ train.py (slow)


def test_train_grid_multirun(tmp_path):
    sweep = tmp_path / "grid"
    result = run_script(
        "train.py", "-m", "encoder=tiny", "decoder=tiny", "optimizer.lr=1e-4,3e-4", *SMOKE, f"hydra.sweep.dir={sweep}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert run_folders(sweep) == ["0", "1"]
    for job, lr in (("0", 1e-4), ("1", 3e-4)):
        assert (sweep / job / "metrics.json").is_file() and (sweep / job / "hf_model").is_dir()
        assert OmegaConf.load(sweep / job / ".hydra" / "config.yaml").optimizer.lr == lr


def test_train_optuna_sweep_two_trials(tmp_path):
    sweep = tmp_path / "optuna"
    result = run_script("train.py", "-m", "hparams_search=tiny_optuna", *SMOKE, f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert states(sweep, "tiny_optuna") == ["COMPLETE", "COMPLETE"], why(sweep, "tiny_optuna", result)
    assert run_folders(sweep) == ["0", "1"]
    for trial in trials(sweep, "tiny_optuna"):
        metrics = json.loads((sweep / str(trial.number) / "metrics.json").read_text())
        assert trial.value == pytest.approx(metrics["val/rouge2"])
        config = OmegaConf.load(sweep / str(trial.number) / ".hydra" / "config.yaml")
        assert config.optimizer.lr == pytest.approx(trial.params["optimizer.lr"])
    assert (sweep / "optimization_results.yaml").is_file() and "best trial" in result.stdout


@pytest.mark.slow
def test_train_optuna_resume_after_one_trial(tmp_path):
    sweep = tmp_path / "optuna"
    first = run_script(
        "train.py", "-m", "hparams_search=tiny_optuna", "hydra.sweeper.n_trials=1", *SMOKE, f"hydra.sweep.dir={sweep}"
    )
    assert first.returncode == 0, first.stderr[-3000:]
    stamp = (sweep / "0" / "metrics.json").stat().st_mtime_ns
    second = run_script(
        "train.py", "-m", "hparams_search=tiny_optuna", "hydra.sweeper.n_trials=2", *SMOKE, f"hydra.sweep.dir={sweep}"
    )
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-3000:]
    assert states(sweep, "tiny_optuna") == ["COMPLETE", "COMPLETE"], why(sweep, "tiny_optuna", second)
    assert (sweep / "0" / "metrics.json").stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_train_optuna_killed_and_resumed(tmp_path):
    sweep = tmp_path / "optuna"
    command = [
        sys.executable,
        str(ROOT / "train.py"),
        "-m",
        "hparams_search=tiny_optuna",
        *SMOKE,
        f"hydra.sweep.dir={sweep}",
    ]
    environment = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(
        command, cwd=ROOT, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.time() + 300
        while not (sweep / "0" / "metrics.json").exists():
            assert process.poll() is None, "the sweep ended before its first trial finished:\n" + (
                why(sweep, "tiny_optuna") if (sweep / "optuna.db").exists() else ""
            )
            assert time.time() < deadline
            time.sleep(0.1)
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.wait()
    stamp = (sweep / "0" / "metrics.json").stat().st_mtime_ns

    result = run_script("train.py", "-m", "hparams_search=tiny_optuna", *SMOKE, f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    done = trials(sweep, "tiny_optuna")
    assert sum(t.state.name == "COMPLETE" for t in done) == 2, why(sweep, "tiny_optuna", result)
    assert done[0].state.name == "COMPLETE"
    assert (sweep / "0" / "metrics.json").stat().st_mtime_ns == stamp, "the first trial ran again"


@pytest.mark.slow
def test_train_trial_refused_by_encdec_does_not_end_the_sweep(tmp_path):
    """A source length past the model's positions makes encdec exit 2 (SystemExit) once the model is built (the
    command-line check cannot know the model's limit); the sweeper records a FAILED trial and runs the next."""
    sweep = tmp_path / "optuna"
    result = run_script(
        "train.py",
        "-m",
        "hparams_search=tiny_optuna",
        *SMOKE,
        "data.max_source_length=choice(100000,32)",
        "hydra.sweeper.enqueue_trials=[{data.max_source_length:100000},{data.max_source_length:32}]",
        f"hydra.sweep.dir={sweep}",
    )
    assert result.returncode == 0, why(sweep, "tiny_optuna", result)
    done = trials(sweep, "tiny_optuna")
    assert [t.params["data.max_source_length"] for t in done] == [100000, 32]
    assert [t.state.name for t in done] == ["FAIL", "COMPLETE"], why(sweep, "tiny_optuna", result)
    assert "data.max_source_length=100000 exceeds the model's" in result.stderr
    assert (sweep / "1" / "metrics.json").is_file()


@pytest.mark.slow
def test_train_cfg_hydra_shows_slurm_launcher_and_optuna_sweeper():
    result = run_script("train.py", "hydra/launcher=slurm", "hparams_search=aclsum_optuna", "--cfg", "hydra")
    assert result.returncode == 0, result.stderr[-3000:]
    shown = OmegaConf.create(result.stdout)
    assert shown.hydra.launcher._target_.endswith("SlurmLauncher")
    assert shown.hydra.sweeper._target_.endswith("EncdecOptunaSweeper")
    assert shown.hydra.sweeper.n_trials == 20 and shown.hydra.sweeper.study_name == "aclsum_optuna"
