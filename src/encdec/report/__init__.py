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

Free of torch and transformers (`import encdec` does not load them), so a report takes a second. Where each part
lives: report.runs (finding and reading runs), report.table (report.md), report.plot (val_rouge.png); this module is
the command line (`python report.py`, `encdec report`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from encdec.report.plot import PLOT, plot
from encdec.report.runs import ReportError, find_runs, is_run, load_run, read_studies
from encdec.report.table import markdown

REPORT = "report.md"


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
