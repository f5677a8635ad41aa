"""Compare runs: a Markdown table (report.md) and a plot of validation ROUGE-2 against step (val_rouge.png).

    python report.py multirun/2026-11-25/20-00-00            # a sweep folder: every run folder under it
    python report.py outputs/2026-11-25/19-40-00 outputs/2026-11-26/08-00-00 --out reports/
    python report.py multirun/2026-11-25/20-00-00/3          # one run

A PATH is a run folder (it has `.hydra/config.yaml` or `metrics.json`) or any folder holding run folders (a sweep
folder, `outputs/`, ...). The report goes to `--out`, by default the first PATH when that is a sweep folder (so a
sweep carries its own report), else the current folder.

The table shows the config keys whose values differ between the runs (from `.hydra/config.yaml`, or
`.hydra/overrides.yaml` when there is no config), the validation ROUGE-1/2/L of the best checkpoint and the test
ROUGE-2 from `metrics.json`, the optimizer steps and the seconds the run took. A run without `metrics.json` (killed,
or still running) is marked incomplete and shows the best validation point of its curve. The plot reads the curve from
`csv/metrics.csv` (logger=csv, the default); runs without one are listed but not plotted.

Deliberately free of torch/transformers imports (and of `encdec`'s own modules, whose package import loads them):
`report.py` at the repository root loads this file directly, so a report takes a second, not the time to import torch.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

METRICS = "metrics.json"
CURVE = Path("csv") / "metrics.csv"
CONFIG = Path(".hydra") / "config.yaml"
OVERRIDES = Path(".hydra") / "overrides.yaml"
OPTUNA_RESULTS = "optimization_results.yaml"
REPORT = "report.md"
PLOT = "val_rouge.png"
PLOTTED = "val/rouge2"
# Folders inside a run folder that never hold runs: not worth walking.
_SKIP = {"checkpoints", "hf_model", "csv", "wandb", "tensorboard", "lightning_logs", "__pycache__"}
# Above this many differing keys the table shows one "config" column instead of a column per key.
MAX_KEY_COLUMNS = 6


class ReportError(Exception):
    """A bad PATH or output folder: reported as one `encdec: error:` line, exit 2."""


@dataclass
class Run:
    path: Path
    config: dict[str, Any] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    curve: list[dict[str, float]] | None = None  # validation rows of csv/metrics.csv, by step

    @property
    def complete(self) -> bool:
        return bool(self.metrics)

    def points(self, key: str = PLOTTED) -> list[tuple[float, float]]:
        return [(row["step"], row[key]) for row in self.curve or [] if key in row and "step" in row]

    def best(self) -> dict[str, float]:
        """Validation metrics of the best checkpoint (metrics.json), else of the curve's best ROUGE-2 point."""
        if self.metrics:
            return {k: v for k, v in self.metrics.items() if isinstance(v, (int, float))}
        rows = [row for row in self.curve or [] if PLOTTED in row]
        return max(rows, key=lambda row: row[PLOTTED]) if rows else {}


# ------------------------------------------------------------------------------------------------ finding runs


def is_run(folder: Path) -> bool:
    return (folder / CONFIG).is_file() or (folder / METRICS).is_file()


def find_runs(path: Path) -> list[Path]:
    if not path.exists():
        raise ReportError(f"{path}: no such folder")
    if not path.is_dir():
        raise ReportError(f"{path} is not a folder: give a run folder or a folder holding run folders")
    if is_run(path):
        return [path]
    found = []
    for dirpath, dirnames, _ in os.walk(path):
        here = Path(dirpath)
        if here != path and is_run(here):
            found.append(here)
            dirnames[:] = []
            continue
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in _SKIP]
    if not found:
        raise ReportError(f"{path} holds no run folder (a folder with {CONFIG} or {METRICS})")
    return sorted(found, key=_natural_key)


def _natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


# ------------------------------------------------------------------------------------------------ reading runs


def load_run(path: Path) -> Run:
    run = Run(path)
    if (path / CONFIG).is_file():
        run.config = flatten(_load_yaml(path / CONFIG, dict))
    if (path / OVERRIDES).is_file():
        run.overrides = [str(o) for o in _load_yaml(path / OVERRIDES, list)]
        if not run.config:
            run.config = dict(_split_override(o) for o in run.overrides)
    if (path / METRICS).is_file():
        run.metrics = read_metrics(path / METRICS)
    if (path / CURVE).is_file():
        run.curve = read_curve(path / CURVE)
    return run


# A corrupt metrics.json or metrics.csv is reported, not skipped: a table quietly missing a run's numbers misleads.
_MOVE_METRICS = "restore it, or move it aside to list the run as incomplete"
_MOVE_CURVE = "restore it, or move it aside to list the run without a curve"


def read_metrics(path: Path) -> dict[str, Any]:
    """metrics.json: one JSON object of numbers (train.py and eval.py write it whole, never half)."""
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ReportError(f"{path} could not be read ({error.strerror or error}): {_MOVE_METRICS}") from None
    except UnicodeDecodeError as error:
        raise ReportError(f"{path} is not UTF-8 text ({error.reason} at byte {error.start}): {_MOVE_METRICS}") from None
    except ValueError as error:
        raise ReportError(f"{path} is not valid JSON ({_first_line(error)}): {_MOVE_METRICS}") from None
    if not isinstance(metrics, dict):
        raise ReportError(
            f"{path} holds a JSON {_json_kind(metrics)}, not an object of metrics such as "
            f'{{"val/rouge2": 7.2}}: {_MOVE_METRICS}'
        )
    return metrics


def _json_kind(value: Any) -> str:
    kinds = {list: "array", str: "string", bool: "boolean", int: "number", float: "number", type(None): "null"}
    return kinds.get(type(value), type(value).__name__)


def _first_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:200]


def _load_yaml(path: Path, expected: type) -> Any:
    """The file's content (an empty file gives an empty `expected`), or ReportError naming the file."""
    from omegaconf import OmegaConf  # hydra's own dependency; keeps ${...} unresolved, as Hydra saved them

    try:
        content = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception as error:  # a truncated file from a killed run
        raise ReportError(f"{path} could not be read: {' '.join(str(error).split())[:200]}") from None
    if content is None:
        return expected()
    if not isinstance(content, expected):
        kind = "mapping" if expected is dict else "list"
        raise ReportError(f"{path} is not a YAML {kind}: it was edited or written by another tool; move it aside")
    return content


def _split_override(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{'optimizer': {'lr': 1e-4}} -> {'optimizer.lr': 1e-4}; lists stay whole (shown as JSON)."""
    if isinstance(tree, dict):
        if not tree and prefix:
            return {prefix: "{}"}
        flat: dict[str, Any] = {}
        for key, value in tree.items():
            flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    if isinstance(tree, list):
        return {prefix: json.dumps(tree)}
    return {prefix: tree}


def read_curve(path: Path) -> list[dict[str, float]]:
    """The validation rows of a CSVLogger file, one per step (the last row wins), sorted by step."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as error:
        raise ReportError(f"{path} could not be read ({error.strerror or error}): {_MOVE_CURVE}") from None
    except UnicodeDecodeError as error:
        raise ReportError(f"{path} is not UTF-8 text ({error.reason} at byte {error.start}): {_MOVE_CURVE}") from None
    except csv.Error as error:
        raise ReportError(f"{path} is not a readable CSV file ({_first_line(error)}): {_MOVE_CURVE}") from None
    by_step: dict[float, dict[str, float]] = {}
    for row in rows:
        values = {}
        for key, text in row.items():
            if key is None or text in (None, ""):
                continue
            try:
                values[key] = float(text)
            except ValueError:
                continue
        if any(key.startswith("val/") for key in values) and "step" in values:
            by_step.setdefault(values["step"], {}).update(values)
    return [by_step[step] for step in sorted(by_step)]


# ---------------------------------------------------------------------------------------------------- the table


def differing_keys(runs: Sequence[Run]) -> list[str]:
    if len(runs) < 2:
        return []
    keys = sorted({key for run in runs for key in run.config})
    missing = object()
    return [key for key in keys if len({repr(run.config.get(key, missing)) for run in runs}) > 1]


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def _number(value: Any, digits: int) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return "—"
    return f"{value:.{digits}f}"


def labels(runs: Sequence[Run]) -> dict[Path, str]:
    """Short run names: the path below the runs' common folder ('3' for multirun/.../3)."""
    if len(runs) == 1:
        return {runs[0].path: runs[0].path.name or str(runs[0].path)}
    common = Path(os.path.commonpath([str(run.path.resolve()) for run in runs]))
    return {run.path: str(run.path.resolve().relative_to(common)) for run in runs}


def read_studies(sources: Sequence[Path]) -> dict[Path, dict]:
    """The Optuna summaries (optimization_results.yaml) found in the given sweep folders."""
    return {source: _load_yaml(source / OPTUNA_RESULTS, dict) for source in sources
            if (source / OPTUNA_RESULTS).is_file()}


def markdown(runs: Sequence[Run], out_dir: Path, studies: dict[Path, dict], sources: Sequence[Path], plotted: bool) -> str:
    keys = differing_keys(runs)
    per_key = len(keys) <= MAX_KEY_COLUMNS
    header = ["run"]
    if len(runs) == 1:
        header.append("overrides")
    elif per_key:
        header += [f"`{key}`" for key in keys]
    else:
        header.append("config (keys that differ)")
    header += ["val R-1", "val R-2", "val R-L", "test R-2", "steps", "time (s)"]

    rows = []
    for run in runs:
        link = Path(os.path.relpath(run.path.resolve(), out_dir.resolve())).as_posix()
        name = f"[{run.path.as_posix()}]({link})" + ("" if run.complete else " (incomplete)")
        cells = [name]
        if len(runs) == 1:
            cells.append(" ".join(f"`{o}`" for o in run.overrides) or "—")
        elif per_key:
            cells += [_cell(run.config.get(key)) for key in keys]
        else:
            cells.append("<br>".join(f"`{key}={_cell(run.config.get(key))}`" for key in keys))
        best = run.best()
        cells += [
            _number(best.get("val/rouge1"), 2),
            _number(best.get("val/rouge2"), 2),
            _number(best.get("val/rougeL"), 2),
            _number(run.metrics.get("test/rouge2"), 2),
            _number(run.metrics.get("train/steps", best.get("step")), 0),
            _number(run.metrics.get("time/seconds"), 1),
        ]
        rows.append(cells)

    lines = ["# encdec report", ""]
    lines.append(f"{len(runs)} run{'s' if len(runs) != 1 else ''} from " + ", ".join(f"`{s}`" for s in sources) + ".")
    lines.append(
        "val R-1/R-2/R-L: validation ROUGE F1 (%) of the best checkpoint (by `checkpoint.monitor`); "
        "test R-2: test ROUGE-2 F1 (%) of that checkpoint; steps: optimizer steps; time: seconds of the run."
    )
    if len(runs) > 1:
        lines.append(
            "Config: only the keys whose values differ between the runs."
            if keys else "Config: the runs' configs are identical."
        )
    lines += ["", "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]

    scored = [run for run in runs if isinstance(run.best().get(PLOTTED), (int, float))]
    if scored:
        top = max(scored, key=lambda run: run.best()[PLOTTED])
        lines += ["", f"Best validation ROUGE-2: `{top.path.as_posix()}` ({top.best()[PLOTTED]:.2f})."]
    for source, info in studies.items():
        lines += [
            "",
            f"Optuna study `{info.get('study_name')}` in `{source.as_posix()}`: {info.get('complete')} complete, "
            f"{info.get('failed')} failed of n_trials={info.get('n_trials')}; best trial {info.get('best_trial')} "
            f"({info.get('metric')}={_cell(info.get('best_value'))}): "
            + " ".join(f"`{k}={_cell(v)}`" for k, v in (info.get("best_params") or {}).items()),
        ]
    lines.append("")
    without = [run.path.as_posix() for run in runs if not run.points()]
    if plotted:
        lines.append(f"![validation ROUGE-2 against step]({PLOT})")
        if without:
            lines.append("")
            lines.append("Not plotted (no `csv/metrics.csv`; train with logger=csv): " + ", ".join(f"`{p}`" for p in without))
    else:
        lines.append("No plot: no run has a validation curve in `csv/metrics.csv` (train with logger=csv).")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------- the plot


def plot(runs: Sequence[Run], target: Path, title: str) -> bool:
    """val/rouge2 against step, one line per run with a curve. False when nothing could be plotted."""
    curves = [(run, run.points()) for run in runs]
    curves = [(run, points) for run, points in curves if points]
    if not curves:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.ticker import MaxNLocator

    keys = differing_keys(runs)
    names = labels(runs)
    many = len(curves) > 8
    figure, axes = plt.subplots(figsize=(9.5 if many else 8, 5), dpi=120)
    markers = "os^Dv<>pP*Xh"
    for index, (run, points) in enumerate(curves):
        steps, values = zip(*points)
        detail = ", ".join(f"{key.split('.')[-1] if len(keys) > 2 else key}={_cell(run.config.get(key))}" for key in keys[:3])
        label = names[run.path] + (f" ({detail})" if detail else "") + ("" if run.complete else " [incomplete]")
        # distinct markers keep runs with identical curves (all 0 early on) apart
        axes.plot(steps, values, marker=markers[index % len(markers)], markersize=5, linewidth=1.6, alpha=0.9,
                  label=label[:70])
    axes.set_title(title)
    axes.set_xlabel("training step")
    axes.set_ylabel("validation ROUGE-2 F1 (%)")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 2.5, 5, 10]))
    # ROUGE is >= 0: start just below 0 so that a run still at 0 shows above the axis, at least 1 point tall
    top = max(axes.get_ylim()[1], 1.0)
    axes.set_ylim(-0.03 * top, top)
    axes.grid(True, alpha=0.3)
    if many:
        axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    else:
        axes.legend(fontsize=8, loc="best")
    figure.tight_layout()
    figure.savefig(target)
    plt.close(figure)
    return True


# --------------------------------------------------------------------------------------------------------- CLI


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, like every encdec error
        print(f"encdec: error: {message}", file=sys.stderr, flush=True)
        sys.exit(2)


def build_parser(prog: str = "report.py") -> argparse.ArgumentParser:
    parser = _Parser(
        prog=prog,
        description="Write report.md (a table of runs) and val_rouge.png (validation ROUGE-2 against step).",
        epilog="--out defaults to the first PATH when it is a sweep folder (not itself a run), else the current folder.",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", type=Path, help="a run folder, or a folder holding runs")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR", help="where report.md and val_rouge.png go")
    parser.add_argument("--title", default=None, help="the plot's title (default: 'Validation ROUGE-2')")
    return parser


def report(paths: Sequence[Path], out: Path | None = None, title: str | None = None) -> tuple[Path, Path | None]:
    """Write the report; returns (report.md, val_rouge.png or None)."""
    run_paths: list[Path] = []
    for path in paths:
        for found in find_runs(path):
            if found not in run_paths:
                run_paths.append(found)
    if out is None:
        out = paths[0] if not is_run(paths[0]) else Path.cwd()
    # Everything is read before --out is made: a corrupt file leaves no empty folder or lone plot.
    runs = [load_run(path) for path in run_paths]
    studies = read_studies(paths)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ReportError(f"--out {out}: {error.strerror or error}") from None
    png: Path | None = out / PLOT
    try:
        plotted = sum(1 for run in runs if run.points())
        if not plot(runs, png, title or f"Validation ROUGE-2 ({plotted} run{'s' if plotted != 1 else ''})"):
            png = None
    except ImportError:
        print("encdec: warning: matplotlib is not installed (pip install matplotlib): no plot", file=sys.stderr)
        png = None
    text = markdown(runs, out, studies, list(paths), plotted=png is not None)
    target = out / REPORT
    try:
        target.write_text(text, encoding="utf-8")
    except OSError as error:
        raise ReportError(f"--out {out}: cannot write {REPORT}: {error.strerror or error}") from None
    return target, png


def main(argv: Sequence[str] | None = None, prog: str = "report.py") -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        markdown_path, png = report(args.paths, args.out, args.title)
    except ReportError as error:
        print(f"encdec: error: {' '.join(str(error).split())}", file=sys.stderr, flush=True)
        return 2
    print(f"report: {markdown_path}")
    if png is not None:
        print(f"plot: {png}")
    return 0
