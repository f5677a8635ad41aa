"""The `--help` listing of a command's settings, read from `encdec.schema`'s dataclasses."""

from __future__ import annotations

import dataclasses
import typing

from omegaconf import OmegaConf

from encdec.schema import COMMANDS


def settings_help(command: str) -> str:
    """The `--help` listing of `command`'s settings: one `KEY  help line` per field, groups spelled out."""
    rows = list(_rows(COMMANDS[command], ""))
    width = max(len(key) for key, _ in rows) + 2
    return "\n".join(f"{key:<{width}}{text}" for key, text in rows)


def _rows(schema: type, prefix: str):
    hints = typing.get_type_hints(schema)
    for spec in dataclasses.fields(schema):
        kind = hints[spec.name]
        kind = next((arg for arg in typing.get_args(kind) if dataclasses.is_dataclass(arg)), kind)
        if spec.name == "task_name":
            continue
        if dataclasses.is_dataclass(kind):
            yield from _rows(kind, f"{prefix}{spec.name}.")
        else:
            choices = spec.metadata["choices"]
            yield (
                f"{prefix}{spec.name}",
                spec.metadata["help"] + (f" [{' | '.join(map(_shown, choices))}]" if choices else ""),
            )


def register_help() -> None:
    """`${encdec_settings:train}` in conf/hydra/help/*.yaml: the listing above, made when --help prints it."""
    OmegaConf.register_new_resolver("encdec_settings", settings_help, replace=True)


def _shown(choice) -> str:
    """A choice as a user types it: true/false, not Python's True/False."""
    return str(choice).lower() if isinstance(choice, bool) else str(choice)
