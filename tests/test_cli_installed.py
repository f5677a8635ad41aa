"""The installed `encdec` command: a wheel with the configs inside, run from an empty folder; the user's own config
folder beside the packaged one."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import ROOT, SMOKE, error_lines, script_environment
from in_process import _close_file_handlers, _keep_absl_off_the_test_streams

# A complete run folder: what train.py writes when a run ends well.
RUN_FOLDER = (
    ".hydra/config.yaml",
    "hf_model/config.json",
    "hf_model/model.safetensors",
    "metrics.json",
    "predictions.jsonl",
    "checkpoints/last.ckpt",
)


def encdec_module(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python -m encdec ARGS` in `cwd`: the installed command of this checkout (editable install or PYTHONPATH)."""
    return subprocess.run(
        [sys.executable, "-m", "encdec", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=timeout,
        env=script_environment(),
    )


def run_console(*args: str, cwd: Path) -> tuple[int, str, str]:
    """`encdec ARGS` in this process (no second torch import): exit status, stdout, stderr. For command lines that
    stop before Hydra's app runs (mistakes) or only print (--help)."""
    from encdec.console import main

    out, err, previous = io.StringIO(), io.StringIO(), Path.cwd()
    code = 0
    _keep_absl_off_the_test_streams()  # Hydra's logging setup would close absl's stream: pytest's capture file
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args)) or 0
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    finally:
        os.chdir(previous)
        _close_file_handlers()
    return code, out.getvalue(), err.getvalue()


def assert_complete_run(run_dir: Path) -> None:
    missing = [name for name in RUN_FOLDER if not (run_dir / name).is_file()]
    assert not missing, f"{run_dir} lacks {missing}"
    assert json.loads((run_dir / "metrics.json").read_text())["train/steps"] >= 1


def fresh_venv_with_the_wheel(tmp_path: Path) -> Path:
    """A new venv holding only the wheel built from this checkout; its dependencies come from the test venv (a .pth
    line puts the test venv's site-packages after the new venv's own, so the wheel's encdec is the one imported)."""
    import setuptools

    dist = tmp_path / "dist"
    # pyproject.toml needs setuptools>=77; the test venv has one (torch requires it), else pip fetches one.
    isolation = [] if int(setuptools.__version__.split(".")[0]) >= 77 else ["--use-pep517"]
    no_isolation = ["--no-build-isolation"] if not isolation else []
    # No PYTHONPATH: pip would take a checkout's src/ on it for an installed encdec and install nothing.
    environment = {**os.environ, "PYTHONPATH": "", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", *no_isolation, "-q", "-w", str(dist), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
        env=environment,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = dist.glob("encdec-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    test_packages = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(site) / "test_venv_packages.pth").write_text("\n".join(sorted(test_packages)) + "\n")
    # --ignore-installed: the test venv's (editable) encdec, seen through the .pth line, is not this venv's to replace.
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--no-deps",
            "--ignore-installed",
            "-q",
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=environment,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    return venv


def test_the_wheel_installs_a_command_that_trains_from_an_empty_folder(tmp_path):
    venv = fresh_venv_with_the_wheel(tmp_path)
    empty = tmp_path / "work"
    empty.mkdir()
    environment = {**script_environment(), "PYTHONPATH": ""}  # the checkout's src/ must not stand in for the wheel
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import encdec.console as c; print(c.config_dir())"],
        cwd=empty,
        capture_output=True,
        text=True,
        env=environment,
    )
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout + where.stderr  # the wheel's own configs

    smoke = [arg for arg in SMOKE if not arg.startswith(("trainer.max_steps=", "trainer.max_epochs="))]
    result = subprocess.run(
        [
            str(venv / "bin" / "encdec"),
            "train",
            "encoder=tiny",
            "decoder=tiny",
            *smoke,
            "trainer.max_steps=3",
            "trainer.max_epochs=2",
        ],
        cwd=empty,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=600,
        env=environment,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (empty / "outputs").glob("*/*")  # outputs/<date>/<time> under the current folder
    assert_complete_run(run_dir)
    assert json.loads((run_dir / "metrics.json").read_text())["train/steps"] == 3
    assert f"run folder: {run_dir}" in result.stdout
    assert sorted(path.name for path in empty.iterdir()) == ["outputs"]


@pytest.fixture
def myconf(tmp_path, tiny_files):
    """A user's own config folder: a data preset, an experiment, a decoder preset, none of them in encdec."""
    folder = tmp_path / "myconf"
    for group in ("data", "experiment", "decoder"):
        (folder / group).mkdir(parents=True)
    (folder / "data" / "mydata.yaml").write_text(
        "defaults:\n  - files\nname: mydata\n"
        f"train_file: {tiny_files['train']}\nvalidation_file: {tiny_files['validation']}\n"
        f"test_file: {tiny_files['test']}\n"
    )
    (folder / "decoder" / "narrow.yaml").write_text(
        "defaults:\n  - tiny\nname: narrow\noverrides:\n  hidden_size: 32\n  intermediate_size: 64\n"
    )
    (folder / "experiment" / "myrun.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /encoder: tiny\n  - override /decoder: narrow\n"
        "  - override /data: mydata\nseed: 7\n"
    )
    return folder


def test_own_config_folder_adds_data_decoder_and_experiment_presets(tmp_path, myconf):
    work = tmp_path / "work"
    work.mkdir()
    run_dir = work / "run"
    result = encdec_module(
        "train", "--config-dir", str(myconf), "experiment=myrun", *SMOKE, f"hydra.run.dir={run_dir}", cwd=work
    )
    assert result.returncode == 0, result.stderr[-3000:]
    config = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    assert (config.data.name, config.decoder.name, config.encoder.name, config.seed) == ("mydata", "narrow", "tiny", 7)
    assert config.data.train_file.endswith("train.jsonl")
    assert json.loads((run_dir / "hf_model" / "config.json").read_text())["decoder"]["hidden_size"] == 32
    assert_complete_run(run_dir)


@pytest.mark.parametrize(
    "arguments, message",
    [
        (
            ["data=mydat"],
            "data=mydat: no such data option (did you mean data=mydata?); choose from aclsum, cnn_dailymail, "
            "files, mydata, xsum",
        ),
        (
            ["data=mydata", "data.train_fil=x.jsonl"],
            "data.train_fil is not a setting of data (did you mean data.train_file=x.jsonl?); to add a new key on purpose "
            "write +data.train_fil=x.jsonl",
        ),
        (["decoder=narow"], "decoder=narow: no such decoder option (did you mean decoder=narrow?)"),
    ],
)
def test_typos_in_own_config_folder_are_one_line(tmp_path, myconf, arguments, message):
    code, _, stderr = run_console("train", "--config-dir", str(myconf), *arguments, cwd=tmp_path)
    assert code == 2, stderr[-2000:]
    assert len(error_lines(stderr)) == 1 and error_lines(stderr)[0].startswith(f"encdec: error: {message}")
    assert not (tmp_path / "outputs").exists()


def test_missing_config_folder_and_unknown_command_are_one_line(tmp_path):
    code, _, stderr = run_console("train", f"--config-dir={tmp_path / 'nope'}", "data=mydata", cwd=tmp_path)
    assert code == 2
    assert error_lines(stderr) == [
        f"encdec: error: --config-dir {tmp_path / 'nope'}: no such folder; give the "
        "folder that holds your own groups (data/mydata.yaml, experiment/myrun.yaml, ...)"
    ]
    code, _, stderr = run_console("trian", "encoder=tiny", cwd=tmp_path)
    assert code == 2
    assert error_lines(stderr) == [
        "encdec: error: trian is not an encdec command (did you mean encdec train?); "
        "choose from train, eval, predict, export, report"
    ]


@pytest.mark.parametrize("command", ["train", "eval", "predict", "export"])
def test_each_command_help_names_itself_as_installed(tmp_path, command):
    code, stdout, stderr = run_console(command, "--help", cwd=tmp_path)
    assert code == 0, stderr[-2000:]
    assert stdout.startswith(f"encdec {command}: ") and f"Usage: encdec {command}" in stdout
    assert "python " not in stdout and f"{command}.py" not in stdout
    if command in ("train", "eval"):
        assert "data=" in stdout or "data: " in stdout
    if command == "train":
        assert "trainer: cpu, ddp, deepspeed_stage_2, deepspeed_stage_3, default, fsdp, fsdp2, gpu, tpu" in stdout


def test_encdec_help_lists_the_commands_and_every_groups_options(tmp_path):
    code, stdout, _ = run_console("--help", cwd=tmp_path)
    assert code == 0
    for command in ("train", "eval", "predict", "export", "report"):
        assert f"\n  {command} " in stdout
    conf = ROOT / "conf"
    for group in (folder for folder in conf.iterdir() if folder.is_dir() and folder.name != "hydra"):
        assert f"  {group.name:<15}{', '.join(sorted(path.stem for path in group.glob('*.yaml')))}" in stdout


def test_encdec_report_compares_run_folders(tmp_path):
    code, stdout, _ = run_console("report", "--help", cwd=tmp_path)
    assert code == 0 and stdout.startswith("usage: encdec report ")
    run_dir = tmp_path / "outputs" / "2026-01-01" / "00-00-00"
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({"seed": 1}), run_dir / ".hydra" / "config.yaml")
    (run_dir / "metrics.json").write_text(json.dumps({"val/rouge2": 3.5, "test/rouge2": 2.5, "train/steps": 4}))
    code, stdout, stderr = run_console("report", "outputs", cwd=tmp_path)
    assert code == 0, stderr
    report = tmp_path / stdout.split("report: ", 1)[1].splitlines()[0]  # relative to the folder it ran in
    assert report.is_relative_to(tmp_path) and "3.5" in report.read_text()
