"""Plain helpers of the sweep: what counts as an objective value, launch groups, and how values are printed."""

from __future__ import annotations

import math
import numbers
from typing import Any


def _objective(value: Any) -> tuple[float | None, str | None]:
    """(finite float, None) or (None, why it is no objective)."""
    if value is None:
        return None, "the run returned None (is optimized_metric one of its metrics?)"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        try:
            value = float(value)  # e.g. a 0-d tensor
        except (TypeError, ValueError):
            return None, f"the run returned {type(value).__name__}, not a number"
    value = float(value)
    if not math.isfinite(value):
        return None, f"the run returned {value}"
    return value, None


def _consecutive(items):
    """Split [(trial, overrides)] into runs of consecutive trial numbers (a launch numbers its jobs from one index)."""
    group: list = []
    for item in items:
        if group and item[0].number != group[-1][0].number + 1:
            yield group
            group = []
        group.append(item)
    if group:
        yield group


def _fmt(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _params_text(params: dict[str, Any]) -> str:
    return " ".join(f"{key}={_fmt(value)}" for key, value in params.items())
