"""Every shipped preset composes to the config it composed to when tests/composed_presets.json was written: the plain
default of each command, every option of every group, every experiment, key by key, values and key order alike.

The presets are written as Hydra bases (conf/<group>/_*.yaml) plus what each preset changes; a
change to how they are written must leave what they compose untouched. A change that is meant to change a composed
config (a new default, a new key) rewrites the snapshot, and its diff is then reviewed with the change:

    python tests/test_composed_presets.py        # rewrites tests/composed_presets.json
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import CONF, compose_config  # noqa: E402

SNAPSHOT = Path(__file__).resolve().parent / "composed_presets.json"
# What a group option needs on the command line to compose at all.
REQUIRED = {"auto": ("{group}.pretrained=/some/folder",), "files": ("data.train_file=a", "data.validation_file=b")}
OTHER_COMMANDS = {"eval": ("model_path=x",), "predict": ("model_path=x", "input=-"), "export": ("model_path=x",)}


def group_options(group: str) -> list[str]:
    """A group's options: its YAML files, less the bases (`_*.yaml`) the options are written on."""
    return sorted(path.stem for path in (CONF / group).glob("*.yaml") if not path.stem.startswith("_"))


def cases() -> list[tuple[str, tuple[str, ...]]]:
    groups = sorted(path.name for path in CONF.iterdir() if path.is_dir() and path.name != "hydra")
    return [
        ("train", ()),
        *(
            ("train", (f"{group}={option}", *(arg.format(group=group) for arg in REQUIRED.get(option, ()))))
            for group in groups
            for option in group_options(group)
        ),
        *OTHER_COMMANDS.items(),
    ]


def flat(tree, prefix: str = "") -> dict:
    """{"data.batch_size": 8, ...}: every leaf by its dotted key (lists are leaves), in the config's own order."""
    if not isinstance(tree, dict) or not tree:
        return {prefix: tree}
    leaves = {}
    for key, value in tree.items():
        leaves.update(flat(value, f"{prefix}{key}."))
    return {key.rstrip("."): value for key, value in leaves.items()}


def composed(command: str, args: tuple[str, ...]) -> dict:
    return OmegaConf.to_container(compose_config(*args, config_name=command), resolve=False)


def name(command: str, args: tuple[str, ...]) -> str:
    return " ".join((command, *args))


def digest(config: dict) -> str:
    """Of the keys in order with their values: two configs with one digest list the same keys in the same order."""
    return hashlib.sha256(json.dumps(list(flat(config).items()), default=str).encode()).hexdigest()[:16]


def snapshot() -> dict:
    """The plain training default in full; every other case as the keys whose values differ from it, the keys it
    lacks, and the digest that pins its whole key order."""
    default = flat(composed("train", ()))
    out = {"default": default, "cases": {}}
    for command, args in cases():
        config = composed(command, args)
        leaves = flat(config)
        out["cases"][name(command, args)] = {
            "changed": {key: value for key, value in leaves.items() if key not in default or default[key] != value},
            "absent": [key for key in default if key not in leaves],
            "digest": digest(config),
        }
    return out


@pytest.fixture(scope="module")
def recorded() -> dict:
    return json.loads(SNAPSHOT.read_text(encoding="utf-8"))


def test_every_shipped_preset_is_in_the_snapshot(recorded):
    assert sorted(name(*case) for case in cases()) == sorted(recorded["cases"])


@pytest.mark.parametrize("command, args", cases(), ids=[name(*case) for case in cases()])
def test_a_preset_composes_as_recorded(recorded, command, args):
    case = recorded["cases"][name(command, args)]
    expected = {key: value for key, value in recorded["default"].items() if key not in case["absent"]}
    expected.update(case["changed"])
    config = composed(command, args)
    leaves = flat(config)
    assert {key: leaves.get(key, "<absent>") for key in expected if leaves.get(key, "<absent>") != expected[key]} == {}
    assert sorted(set(leaves) - set(expected)) == []
    assert digest(config) == case["digest"], "same keys and values, another order"


if __name__ == "__main__":
    SNAPSHOT.write_text(json.dumps(snapshot(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {SNAPSHOT}")
