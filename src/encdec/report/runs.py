"""The runs a report compares: finding run folders under the given paths and reading what each one holds
(config, overrides, metrics.json, the validation curve), and what sets them apart (differing keys, short names)."""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from encdec.run_folder import (
    CHECKPOINTS,
    CURVES,
    HF_MODEL,
    LOGGER_FOLDERS,
    METRICS,
    OPTUNA_RESULTS,
    SAVED_CONFIG,
    SAVED_OVERRIDES,
)

PLOTTED = "val/rouge2"
# Folders inside a run folder that never hold runs: not worth walking.
_SKIP = {CHECKPOINTS, HF_MODEL, *LOGGER_FOLDERS, "__pycache__"}


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
    return (folder / SAVED_CONFIG).is_file() or (folder / METRICS).is_file()


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
        raise ReportError(f"{path} holds no run folder (a folder with {SAVED_CONFIG} or {METRICS})")
    return sorted(found, key=_natural_key)


def _natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


# ------------------------------------------------------------------------------------------------ reading runs


def load_run(path: Path) -> Run:
    run = Run(path)
    if (path / SAVED_CONFIG).is_file():
        run.config = flatten(_load_yaml(path / SAVED_CONFIG, dict))
    if (path / SAVED_OVERRIDES).is_file():
        run.overrides = [str(o) for o in _load_yaml(path / SAVED_OVERRIDES, list)]
        if not run.config:
            run.config = dict(_split_override(o) for o in run.overrides)
    if (path / METRICS).is_file():
        run.metrics = read_metrics(path / METRICS)
    if (path / CURVES).is_file():
        run.curve = read_curve(path / CURVES)
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
    except Exception as error:  # noqa: BLE001 - a truncated file from a killed run
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


def read_studies(sources: Sequence[Path]) -> dict[Path, dict]:
    """The Optuna summaries (optimization_results.yaml) found in the given sweep folders."""
    return {
        source: _load_yaml(source / OPTUNA_RESULTS, dict) for source in sources if (source / OPTUNA_RESULTS).is_file()
    }


# -------------------------------------------------------------------------------------- what sets runs apart


def differing_keys(runs: Sequence[Run]) -> list[str]:
    if len(runs) < 2:
        return []
    keys = sorted({key for run in runs for key in run.config})
    missing = object()
    return [key for key in keys if len({repr(run.config.get(key, missing)) for run in runs}) > 1]


def cell(value: Any) -> str:
    """A config value as a table cell or legend entry shows it."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def labels(runs: Sequence[Run]) -> dict[Path, str]:
    """Short run names: the path below the runs' common folder ('3' for multirun/.../3)."""
    if len(runs) == 1:
        return {runs[0].path: runs[0].path.name or str(runs[0].path)}
    common = Path(os.path.commonpath([str(run.path.resolve()) for run in runs]))
    return {run.path: str(run.path.resolve().relative_to(common)) for run in runs}
