"""The sweep's search space: Optuna distributions from `hydra.sweeper.params` specs and Hydra sweep overrides, and
sampled values written back as override text."""

from __future__ import annotations

import numbers
import re
from collections.abc import Sequence
from typing import Any


def distribution_from_spec(key: str, spec: Any, parser=None):
    """An Optuna distribution from a YAML spec (dict) or a Hydra sweep string (`tag(log, interval(1e-5, 1e-3))`)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if isinstance(spec, str):
        if parser is None:
            from hydra.core.override_parser.overrides_parser import OverridesParser

            parser = OverridesParser.create()
        (override,) = parser.parse_overrides([f"{key}={spec}"])
        if not override.is_sweep_override():
            raise ValueError(f"hydra.sweeper.params.{key}={spec!r} is not a search space (use interval/choice/range)")
        return distribution_from_override(override)
    if not isinstance(spec, dict):
        raise ValueError(f"hydra.sweeper.params.{key}: expected a mapping like {{type: float, low: 0, high: 1}}")
    kind = str(spec.get("type", "")).lower()
    extra = set(spec) - {"type", "low", "high", "log", "step", "choices"}
    if extra:
        raise ValueError(f"hydra.sweeper.params.{key}: unknown field(s) {', '.join(sorted(extra))}")
    try:
        if kind == "float":
            step = spec.get("step")
            return FloatDistribution(
                float(spec["low"]),
                float(spec["high"]),
                log=bool(spec.get("log", False)),
                step=None if step is None else float(step),
            )
        if kind == "int":
            return IntDistribution(
                int(spec["low"]), int(spec["high"]), log=bool(spec.get("log", False)), step=int(spec.get("step") or 1)
            )
        if kind == "categorical":
            choices = spec.get("choices")
            if not isinstance(choices, (list, tuple)) or not choices:
                raise ValueError("categorical needs a non-empty list `choices`")
            return CategoricalDistribution(check_choices(key, choices))
    except KeyError as missing:
        raise ValueError(f"hydra.sweeper.params.{key}: type {kind} needs {missing.args[0]}") from None
    except (TypeError, ValueError) as error:
        raise ValueError(f"hydra.sweeper.params.{key}: {error}") from None
    raise ValueError(f"hydra.sweeper.params.{key}: type must be float, int or categorical, not {kind or 'missing'}")


def distribution_from_override(override):
    """Hydra sweep syntax -> Optuna: choice/a,b -> categorical, range -> int/float with step, interval -> float/int."""
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    key = override.get_key_element()
    value = override.value()
    log_scale = "log" in getattr(value, "tags", set())
    if isinstance(value, ChoiceSweep):
        return CategoricalDistribution(check_choices(key, list(value.list)))
    if isinstance(value, RangeSweep):
        values = list(value.range())
        if not values:
            raise ValueError(f"{key}: empty range")
        if all(isinstance(v, int) for v in (value.start, value.stop, value.step)):
            return IntDistribution(values[0], values[-1], step=value.step, log=log_scale and value.step == 1)
        return FloatDistribution(float(values[0]), float(values[-1]), step=float(value.step))
    if isinstance(value, IntervalSweep):
        if isinstance(value.start, int) and isinstance(value.end, int) and not log_scale:
            return IntDistribution(value.start, value.end)
        return FloatDistribution(float(value.start), float(value.end), log=log_scale)
    raise ValueError(f"{override.input_line}: this sweep form is not supported (use choice, range or interval)")


def check_choices(key: str, choices: Sequence[Any]) -> tuple:
    for choice in choices:
        if choice is not None and not isinstance(choice, (bool, int, float, str)):
            raise ValueError(f"hydra.sweeper.params.{key}: choices must be scalars, not {choice!r}")
    return tuple(choices)


_BARE = re.compile(r"^[A-Za-z_/.][\w./:\-+@]*$")


def override_value(value: Any) -> str:
    """A sampled value as Hydra override text that parses back to the same value and type."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        return repr(float(value))
    text = str(value)
    if _BARE.match(text) and text.lower() not in ("null", "true", "false", "nan", "inf"):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
