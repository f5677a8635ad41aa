"""report.py: the Markdown table of runs (numbers from metrics.json, config differences) and the ROUGE-2 plot."""

from __future__ import annotations

import csv
import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import ROOT, SMOKE, error_lines, run_script

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def report(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "report.py"), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd or ROOT,
        timeout=120,
    )


def make_run(folder: Path, lr: float, batch_size: int, *, curve: list[tuple[int, float]] | None, metrics: dict | None):
    """A run folder as train.py writes it: .hydra/config.yaml + overrides.yaml, metrics.json, csv/metrics.csv."""
    (folder / ".hydra").mkdir(parents=True)
    config = {
        "encoder": {"name": "tiny", "init": "random"},
        "optimizer": {"_target_": "torch.optim.AdamW", "lr": lr, "betas": [0.9, 0.999]},
        "data": {"batch_size": batch_size, "eval_batch_size": "${.batch_size}"},
        "seed": 42,
    }
    OmegaConf.save(OmegaConf.create(config), folder / ".hydra" / "config.yaml")
    OmegaConf.save(
        OmegaConf.create([f"optimizer.lr={lr}", f"data.batch_size={batch_size}"]), folder / ".hydra" / "overrides.yaml"
    )
    if metrics is not None:
        (folder / "metrics.json").write_text(json.dumps(metrics))
    if curve is not None:
        (folder / "csv").mkdir()
        fields = ["epoch", "step", "train/loss", "val/loss", "val/rouge1", "val/rouge2", "val/rougeL"]
        with (folder / "csv" / "metrics.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            for step, rouge2 in curve:  # Lightning writes training and validation rows separately
                writer.writerow({"epoch": 0, "step": step, "train/loss": 3.0})
                writer.writerow(
                    {
                        "epoch": 0,
                        "step": step,
                        "val/loss": 2.0,
                        "val/rouge1": 2 * rouge2,
                        "val/rouge2": rouge2,
                        "val/rougeL": 1.5 * rouge2,
                    }
                )


def metrics(rouge2: float, steps: int, seconds: float) -> dict:
    return {
        "val/rouge1": 2 * rouge2 + 0.004,
        "val/rouge2": rouge2,
        "val/rougeL": 1.5 * rouge2 + 0.006,
        "val/loss": 2.0,
        "test/rouge2": rouge2 - 0.5,
        "train/steps": steps,
        "time/seconds": seconds,
        "initial/val/rouge2": 0.1,
    }


@pytest.fixture
def sweep(tmp_path):
    folder = tmp_path / "multirun" / "2026-11-25" / "20-00-00"
    make_run(folder / "0", 1e-4, 8, curve=[(0, 0.5), (10, 4.0), (20, 7.25)], metrics=metrics(7.25, 20, 61.3))
    make_run(folder / "1", 3e-4, 8, curve=[(0, 0.5), (10, 6.0), (20, 5.5)], metrics=metrics(6.0, 20, 58.04))
    make_run(folder / "2", 1e-3, 16, curve=None, metrics=metrics(3.333, 20, 40.0))  # logger=none: no curve
    make_run(folder / "10", 3e-5, 16, curve=[(0, 0.5), (10, 2.5)], metrics=None)  # killed: incomplete
    (folder / "multirun.yaml").write_text("hydra: {}\n")
    return folder


def table(markdown: str) -> dict[str, dict[str, str]]:
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(header, cells))
    return rows


def assert_png(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width >= 400 and height >= 300 and len(data) > 10_000
    try:
        from PIL import Image
    except ImportError:
        return width, height
    with Image.open(path) as image:
        image.verify()
    return width, height


def test_sweep_report_table_and_plot(sweep):
    result = report(sweep)
    assert result.returncode == 0, result.stderr
    markdown = (sweep / "report.md").read_text()  # a sweep folder carries its own report
    assert f"report: {sweep / 'report.md'}" in result.stdout and f"plot: {sweep / 'val_rouge.png'}" in result.stdout
    rows = table(markdown)
    names = {name.split("]")[0].lstrip("["): row for name, row in rows.items()}
    assert sorted(names, key=lambda n: int(n.rsplit("/", 1)[-1])) == [f"{sweep}/{n}" for n in ("0", "1", "2", "10")]
    assert list(names)[-1].endswith("/10"), "runs in natural order (10 after 2)"

    header = next(iter(rows.values())).keys()
    # only the keys that differ between runs, one column each
    assert "`optimizer.lr`" in header and "`data.batch_size`" in header
    assert not any(key in " ".join(header) for key in ("seed", "encoder.name", "optimizer.betas", "eval_batch_size"))
    for job in ("0", "1", "2"):
        row = names[f"{sweep}/{job}"]
        expected = json.loads((sweep / job / "metrics.json").read_text())
        assert row["val R-1"] == f"{expected['val/rouge1']:.2f}"
        assert row["val R-2"] == f"{expected['val/rouge2']:.2f}"
        assert row["val R-L"] == f"{expected['val/rougeL']:.2f}"
        assert row["test R-2"] == f"{expected['test/rouge2']:.2f}"
        assert row["steps"] == str(expected["train/steps"])
        assert row["time (s)"] == f"{expected['time/seconds']:.1f}"
        config = OmegaConf.load(sweep / job / ".hydra" / "config.yaml")
        assert float(row["`optimizer.lr`"]) == config.optimizer.lr
        assert int(row["`data.batch_size`"]) == config.data.batch_size
    incomplete = next(name for name in rows if name.startswith(f"[{sweep}/10]"))
    assert incomplete.endswith("(incomplete)")
    assert rows[incomplete]["val R-2"] == "2.50" and rows[incomplete]["test R-2"] == "—"
    assert f"Best validation ROUGE-2: `{sweep}/0` (7.25)" in markdown
    assert f"`{sweep}/2`" in markdown.split("Not plotted")[1], "a run without csv is listed as not plotted"
    assert "![validation ROUGE-2 against step](val_rouge.png)" in markdown
    assert_png(sweep / "val_rouge.png")


def test_report_of_one_run_goes_to_the_current_folder(sweep, tmp_path):
    here = tmp_path / "here"
    here.mkdir()
    result = report(sweep / "1", cwd=here)
    assert result.returncode == 0, result.stderr
    markdown = (here / "report.md").read_text()
    rows = table(markdown)
    assert len(rows) == 1
    (row,) = rows.values()
    assert row["overrides"] == "`optimizer.lr=0.0003` `data.batch_size=8`"
    assert row["val R-2"] == "6.00" and row["time (s)"] == "58.0"
    assert_png(here / "val_rouge.png")


def test_several_paths_and_out(sweep, tmp_path):
    other = tmp_path / "outputs" / "2026-11-26" / "08-00-00"
    make_run(other, 5e-5, 4, curve=[(0, 1.0), (5, 9.0)], metrics=metrics(9.0, 5, 12.0))
    out = tmp_path / "reports"
    result = report(sweep / "0", other, "--out", out, "--title", "lr study")
    assert result.returncode == 0, result.stderr
    rows = table((out / "report.md").read_text())
    assert len(rows) == 2 and any(str(other) in name for name in rows)
    assert "](../multirun/2026-11-25/20-00-00/0)" in next(iter(rows)), "links are relative to the report"
    assert_png(out / "val_rouge.png")


def test_runs_without_curves_get_no_plot(tmp_path):
    make_run(tmp_path / "a", 1e-4, 8, curve=None, metrics=metrics(1.0, 2, 3.0))
    make_run(tmp_path / "b", 2e-4, 8, curve=None, metrics=metrics(2.0, 2, 3.0))
    result = report(tmp_path, "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "out" / "val_rouge.png").exists()
    assert "No plot" in (tmp_path / "out" / "report.md").read_text()


@pytest.mark.parametrize("case", ["missing", "empty", "file", "none"])
def test_bad_path_is_one_line_and_exit_2(case, tmp_path):
    args = {"missing": [tmp_path / "nope"], "empty": [tmp_path], "file": [tmp_path / "f.txt"], "none": []}[case]
    (tmp_path / "f.txt").write_text("x")
    result = report(*args)
    assert result.returncode == 2
    assert len(error_lines(result.stderr)) == 1 and result.stderr.strip() == error_lines(result.stderr)[0]
    assert not list(tmp_path.glob("report.md"))


@pytest.mark.parametrize(
    "name, content, kind",
    [
        ("optimization_results.yaml", "- 1\n- 2\n", "mapping"),
        (".hydra/config.yaml", "- a\n- b\n", "mapping"),
        (".hydra/overrides.yaml", "a: 1\n", "list"),
    ],
)
def test_yaml_of_the_wrong_shape_is_named(sweep, name, content, kind):
    target = sweep / name if name.startswith("optim") else sweep / "0" / name
    target.write_text(content)
    result = report(sweep, "--out", sweep.parent / "out")
    assert result.returncode == 2
    assert error_lines(result.stderr) == [
        f"encdec: error: {target} is not a YAML {kind}: it was edited or written by another tool; move it aside"
    ]
    assert not (sweep.parent / "out").exists()


def test_report_module_imports_without_torch():
    """report.py imports encdec.report, which (as `import encdec`) imports neither torch nor transformers."""
    code = (
        "import runpy, sys\n"
        "sys.argv = ['report.py', '--help']\n"
        "try:\n"
        f"    runpy.run_path({str(ROOT / 'report.py')!r}, run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'\n"
        "print('light')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "light" in result.stdout and "--out" in result.stdout


@pytest.mark.slow
def test_report_on_a_real_grid_sweep(tmp_path):
    sweep = tmp_path / "grid"
    smoke = [arg for arg in SMOKE if not arg.startswith("logger=")]
    result = run_script(
        "train.py",
        "-m",
        "encoder=tiny",
        "decoder=tiny",
        "optimizer.lr=1e-4,3e-4",
        *smoke,
        "logger=csv",
        "trainer.val_check_interval=1",
        f"hydra.sweep.dir={sweep}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    done = report(sweep)
    assert done.returncode == 0, done.stderr
    rows = {name.split("]")[0].lstrip("["): row for name, row in table((sweep / "report.md").read_text()).items()}
    assert sorted(rows) == [f"{sweep}/0", f"{sweep}/1"]
    for job in ("0", "1"):
        expected = json.loads((sweep / job / "metrics.json").read_text())
        row = rows[f"{sweep}/{job}"]
        assert row["val R-2"] == f"{expected['val/rouge2']:.2f}" and row["steps"] == str(expected["train/steps"])
        assert row["time (s)"] == f"{expected['time/seconds']:.1f}"
        assert row["test R-2"] == f"{expected['test/rouge2']:.2f}"
        assert (sweep / job / "csv" / "metrics.csv").is_file()
    assert set(rows[f"{sweep}/0"]) >= {"`optimizer.lr`"}
    assert_png(sweep / "val_rouge.png")
