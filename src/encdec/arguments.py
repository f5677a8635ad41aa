"""The command line, checked before Hydra runs: pass-through keys need no `+`, and every mistake is one line.

Hydra refuses a key its config does not list unless it is written `+key=value`, and reports that, an unknown group
option or an unparsable override in several lines with exit code 1. encdec's contract passes some settings straight
through to the object they configure (`trainer.*` to `lightning.Trainer`, `optimizer.*` to the optimizer class,
`generation.*` to the decoding settings, `encoder.overrides.*` / `decoder.overrides.*` to the model config), so those
are added with `++` when the target takes them; any other mistake becomes `encdec: error: ...`, exit 2, with the
closest valid name.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import re
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from encdec import schema
from encdec.errors import EncdecError

# Keys under these take any name their target accepts (checked here, or for model configs when the model loads).
PASS_THROUGH = ("trainer", "optimizer", "generation", "encoder.overrides", "decoder.overrides")
MULTIRUN_FLAGS = {"-m", "--multirun"}
# Hydra flags that leave composition alone (the ones taking a value consume the next argument); with any other
# (--help, --info, ...) the command line is Hydra's business alone.
VIEW_FLAGS = {"--cfg": 1, "-c": 1, "--package": 1, "-p": 1, "--resolve": 0}
# The user's own config folder, searched after the packaged one (Hydra's order: a name both hold is the packaged file),
# so new names add groups and presets: checked here with it, passed on to Hydra as given.
CONFIG_DIR_FLAGS = ("--config-dir", "-cd")


def checked_arguments(
    args: list[str], config_name: str, config_dir: Path, check_job: Callable[[DictConfig], None] | None = None
) -> tuple[list[str], DictConfig | None]:
    """`args` as Hydra should get them and the config of a single run (None under --multirun, or when Hydra's own
    flags such as --help or -cd leave the command line to Hydra), or EncdecError naming the first bad argument.

    Under --multirun every value of every sweep is composed (with the other sweeps at their first value) and given
    to `check_job`, so a bad value late in a grid stops the sweep before its first job rather than halfway through.
    """
    from encdec import schema_help

    schema_help.register_help()
    flags, args = _split_flags(list(args))
    if flags is None:
        return args, None
    config_dir = (Path(config_dir), *_user_config_dirs(flags))
    multirun = any(flag in MULTIRUN_FLAGS for flag in flags)
    cfg = None
    for _ in range(len(args) + 1):
        try:
            cfg = _compose(config_name, config_dir, _one_job(args, multirun))
            break
        except Exception as error:  # noqa: BLE001 - Hydra's composition errors share no base class
            rewritten = _added_pass_through(error, args, config_name, config_dir, multirun)
            if rewritten is None:
                raise EncdecError(_explain(error, args, config_name, config_dir, multirun)) from None
            args = rewritten
    if multirun:
        _check_sweep_values(args, config_name, config_dir, cfg, check_job)
    elif check_job is not None and not any(flag in VIEW_FLAGS for flag in flags):
        check_job(cfg)  # --cfg prints the config as composed, checked or not
    return [*flags, *args], None if multirun else cfg


def _check_sweep_values(args, config_name, config_dir, first_job: DictConfig, check_job) -> None:
    """Compose and check each sweep value once; the grid's other combinations repeat values already checked."""
    if check_job is not None:
        check_job(first_job)
    for job in _sweep_variants(args):
        try:
            cfg = _compose(config_name, config_dir, job)
        except Exception as error:  # noqa: BLE001
            raise EncdecError(_explain(error, job, config_name, config_dir, False)) from None
        if check_job is not None:
            check_job(cfg)


def _split_flags(tokens: list[str]) -> tuple[list[str] | None, list[str]]:
    """(Hydra flags with their values, overrides); flags None when one of them is not ours to check around."""
    flags, overrides = [], []
    while tokens:
        token = tokens.pop(0)
        if token in MULTIRUN_FLAGS:
            flags.append(token)
        elif token.startswith(tuple(flag + "=" for flag in CONFIG_DIR_FLAGS)):
            flags.append(token)
        elif token in CONFIG_DIR_FLAGS:
            flags += [token, *tokens[:1]]
            del tokens[:1]
        elif token in VIEW_FLAGS:
            flags += [token, *tokens[: VIEW_FLAGS[token]]]
            del tokens[: VIEW_FLAGS[token]]
        elif token.startswith("-"):
            return None, [*flags, *overrides, token, *tokens]
        else:
            overrides.append(token)
    return flags, overrides


def _user_config_dirs(flags: list[str]) -> list[Path]:
    """The folders of --config-dir/-cd DIR (or --config-dir=DIR), absolute; one that is not a folder is one line."""
    folders = []
    for i, flag in enumerate(flags):
        name, _, value = flag.partition("=")
        if name not in CONFIG_DIR_FLAGS:
            continue
        value = value if "=" in flag else (flags[i + 1] if i + 1 < len(flags) else "")
        folder = Path(value).expanduser().absolute()
        if not value or not folder.is_dir():
            raise EncdecError(
                f"{name} {value}: no such folder; give the folder that holds your own groups "
                "(data/mydata.yaml, experiment/myrun.yaml, ...)"
            )
        folders.append(folder)
    return folders


def _compose(config_name: str, config_dir: Path | tuple[Path, ...], overrides: list[str]) -> DictConfig:
    """The config Hydra would compose from `config_dir` (or a tuple: encdec's folder, then the user's --config-dir)."""
    from hydra import compose, version
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.config_search_path import SearchPathQuery
    from hydra.core.global_hydra import GlobalHydra

    primary, *users = config_dir if isinstance(config_dir, tuple) else (config_dir,)
    GlobalHydra.instance().clear()
    try:
        # As hydra.initialize_config_dir, plus the search path Hydra's --config-dir builds (its utils.add_conf_dir).
        version.setbase("1.3")
        search_path = create_config_search_path(str(primary))
        for folder in users:
            search_path.prepend(
                provider="command-line", path=f"file://{folder}", anchor=SearchPathQuery(provider="schema")
            )
        Hydra.create_main_hydra2(task_name=config_name, config_search_path=search_path)
        return compose(config_name, overrides=overrides, return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()


def _one_job(args: list[str], multirun: bool) -> list[str]:
    """The overrides of one job: under --multirun, every sweep reduced to its first value (the rest share its keys)."""
    if not multirun:
        return list(args)
    return [f"{key}={values[0]}" if values else arg for arg, key, values in _sweeps(args) if values != []]


def _sweep_variants(args: list[str]) -> list[list[str]]:
    """One job per sweep value past the first: that value, and every other sweep at its first value."""
    sweeps = [(key, values) for _, key, values in _sweeps(args) if values != []]
    first_job = _one_job(args, multirun=True)
    return [
        [*first_job[:i], f"{key}={value}", *first_job[i + 1 :]]
        for i, (key, values) in enumerate(sweeps)
        if values
        for value in values[1:]
    ]


def _sweeps(args: list[str]) -> list[tuple[str, str, list[str] | None]]:
    """(argument, key with its +/~ prefix, sweep values) per argument: values None for a plain override, [] for a
    sweep Hydra cannot enumerate (interval(), tag()): the sweeper samples those."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    parsed = []
    for arg in args:
        override = parser.parse_override(arg)
        values = None
        if override.is_sweep_override():
            try:
                values = list(override.sweep_string_iterator())
            except Exception:  # noqa: BLE001
                values = []
        parsed.append((arg, override.get_key_element(), values))
    return parsed


def _prefix(arg: str) -> str:
    return arg[: len(arg) - len(arg.lstrip("+~"))]


def override_key(arg: str) -> str:
    """`+data.k=v` -> `data.k`, `data=x` -> `data`."""
    return arg.lstrip("+~").split("=", 1)[0]


def _culprit(args: list[str], key: str) -> int | None:
    return next((i for i, arg in enumerate(args) if override_key(arg) == key), None)


def _added_pass_through(error: Exception, args, config_name, config_dir, multirun) -> list[str] | None:
    """`args` with the failing `group.KEY=V` written `++group.KEY=V`, when KEY is a name its target accepts."""
    match = re.match(r"Could not override '([^']+)'", str(error))
    if not match:
        return None
    key = match.group(1)
    index = _culprit(args, key)
    group = next((g for g in PASS_THROUGH if key.startswith(g + ".")), None)
    if index is None or group is None or _prefix(args[index]) or "." in key[len(group) + 1 :]:
        return None
    # encoder/decoder.overrides names are checked against the model's config class when it loads.
    if not group.endswith(".overrides"):
        others = _compose_or_none(config_name, config_dir, _one_job(_choices(args), multirun))
        if others is None or key[len(group) + 1 :] not in _accepted(others, group):
            return None
    return [*args[:index], "++" + args[index], *args[index + 1 :]]


def _choices(args: list[str]) -> list[str]:
    """The arguments that pick what the config holds (group options, targets), without the values set inside it."""
    keys = [(arg, override_key(arg)) for arg in args]
    return [arg for arg, key in keys if "." not in key or key.endswith("._target_") or key.startswith("hydra.")]


def _compose_or_none(config_name, config_dir, overrides) -> DictConfig | None:
    try:
        return _compose(config_name, config_dir, overrides)
    except Exception:  # noqa: BLE001 - another argument is wrong too: it is reported on the next pass
        return None


def _accepted(cfg: DictConfig, group: str) -> set[str]:
    """The names `group.NAME=V` may set: its target's keyword arguments, or the decoding settings encdec applies."""
    if group == "generation":
        return {spec.name for spec in dataclasses.fields(schema.Generation)} - {"name"}
    node = cfg.get(group)
    target = node.get("_target_") if isinstance(node, DictConfig) else None
    if not target:
        return set()
    from hydra.utils import get_object

    try:
        target = get_object(target)
    except Exception:  # noqa: BLE001 - an unimportable target is reported when the run builds it
        return set()
    signature = inspect.signature(target.__init__ if inspect.isclass(target) else target)
    return {name for name, p in signature.parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {
        "self"
    }


def _explain(error: Exception, args, config_name, config_dir, multirun) -> str:
    text = str(error)
    first_line = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    if match := re.search(r"Could not find '([^']+)/([^'/]+)'", text):
        group, name = match.groups()
        options = re.findall(r"^\t(\S+)$", text, flags=re.MULTILINE)
        return f"{group}={name}: no such {group} option{_suggest(name, options, group + '=')}; choose from " + _listing(
            options
        )
    if match := re.match(r"Could not override '([^']+)'", text):
        key = match.group(1)
        index = _culprit(args, key)
        arg = args[index] if index is not None else key
        parent, _, name = key.rpartition(".")
        cfg = _compose_or_none(config_name, config_dir, _one_job(_choices(args), multirun))
        node = OmegaConf.select(cfg, parent) if cfg is not None and parent else cfg
        keys = [str(k) for k in node.keys()] if isinstance(node, DictConfig) else []
        if parent in PASS_THROUGH and cfg is not None:
            keys = sorted(set(keys) | _accepted(cfg, parent))
        where = f"a setting of {parent}" if parent else "a config group or setting"
        value = arg.split("=", 1)[1] if "=" in arg else "..."
        # Keys the schema declares but this preset leaves out (data.pad_to_multiple_of) are added with a +.
        unlisted = schema.declared(config_name, parent) - set(keys) if cfg is not None else set()
        if name in unlisted:
            return f"{key} is not in this {parent or config_name} preset: write +{key}={value} to set it"
        before = parent + "." if parent else ""
        suggestion = _suggest(name, [*keys, *unlisted], before, "=" + value)
        if any(suggestion == _suggest(name, [option], before, "=" + value) for option in unlisted):
            suggestion = suggestion.replace("did you mean ", "did you mean +", 1)
        return f"{key} is not {where}{suggestion}; to add a new key on purpose write +{key}={value}"
    if match := re.match(r"Could not append to config. An item is already at '([^']+)'", text):
        return f"{match.group(1)} already exists: drop the leading + (write {match.group(1)}=VALUE)"
    if text.startswith("Ambiguous value for argument"):
        arg = re.search(r"argument '([^']+)'", text)
        return (
            f"{arg.group(1) if arg else first_line} lists several values: add --multirun to sweep them, "
            "or write KEY=[a,b] for a list"
        )
    if type(error).__name__ == "OverrideParseException":
        bad = next((a for a in args if not _parses(a)), None)
        if bad is not None:
            return (
                f"{bad}: not a valid override ({first_line}); write KEY=VALUE and quote values with spaces or brackets"
            )
    return f"command line: {first_line}"


def _parses(arg: str) -> bool:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        OverridesParser.create().parse_override(arg)
        return True
    except Exception:  # noqa: BLE001
        return False


def _suggest(name: str, options: list[str], before: str = "", after: str = "") -> str:
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
    return f" (did you mean {before}{close[0]}{after}?)" if close else ""


def _listing(options: list[str], limit: int = 16) -> str:
    if len(options) <= limit:
        return ", ".join(options)
    return ", ".join(options[:limit]) + f", ... ({len(options)} in all)"
