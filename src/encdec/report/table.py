"""report.md: one row per run (the config keys that differ, best validation ROUGE, test ROUGE-2, steps, seconds)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from encdec.report.plot import PLOT
from encdec.report.runs import PLOTTED, Run, cell, differing_keys

# Above this many differing keys the table shows one "config" column instead of a column per key.
MAX_KEY_COLUMNS = 6


def _number(value: Any, digits: int) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return "—"
    return f"{value:.{digits}f}"


def markdown(
    runs: Sequence[Run], out_dir: Path, studies: dict[Path, dict], sources: Sequence[Path], plotted: bool
) -> str:
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
            cells += [cell(run.config.get(key)) for key in keys]
        else:
            cells.append("<br>".join(f"`{key}={cell(run.config.get(key))}`" for key in keys))
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
            if keys
            else "Config: the runs' configs are identical."
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
            f"({info.get('metric')}={cell(info.get('best_value'))}): "
            + " ".join(f"`{k}={cell(v)}`" for k, v in (info.get("best_params") or {}).items()),
        ]
    lines.append("")
    without = [run.path.as_posix() for run in runs if not run.points()]
    if plotted:
        lines.append(f"![validation ROUGE-2 against step]({PLOT})")
        if without:
            lines.append("")
            lines.append(
                "Not plotted (no `csv/metrics.csv`; train with logger=csv): " + ", ".join(f"`{p}`" for p in without)
            )
    else:
        lines.append("No plot: no run has a validation curve in `csv/metrics.csv` (train with logger=csv).")
    return "\n".join(lines) + "\n"
