"""The boundary between the user's settings and the libraries they configure.

Every step that turns settings into a library object (a model config, model, tokenizer, data set, optimizer,
scheduler, callback, logger or Trainer) runs under `user_settings(group, ...)`, as a `with` block or a decorator.
How a user error is told from a bug in encdec:

* An exception raised inside such a step is the user's, and becomes one line `encdec: error: SETTINGS: MESSAGE` (exit
  2), where SETTINGS are the command line's overrides of the groups being built (`encoder.overrides.hidden_size=7`),
  or the groups' choices when the command line set none, and MESSAGE is the library's own first line.
* Except a programming error raised in encdec's own source: AssertionError, NameError, AttributeError, ImportError,
  NotImplementedError, RecursionError, SyntaxError whose innermost frame is a file of the encdec package keep their
  traceback (the same types raised inside a library, e.g. an AttributeError from transformers reading a malformed
  override, are the user's).
* Lightning checks some Trainer settings only when `fit`/`validate`/`test` set up the run (val_check_interval
  against the number of batches, ...): there, under `lightning_settings()`, an error raised by Lightning's own code
  (innermost frame in the lightning package) is the `trainer.*` settings'; errors from encdec's module, transformers
  or torch during training keep their traceback.
* Outside these steps only EncdecError (encdec's own checks) is one line; anything else keeps its traceback.

MemoryError, KeyboardInterrupt and SystemExit pass through untouched, and so does OSError(ENOSPC): a full disk is
reported by `cli.guarded` as such, not blamed on a setting. ENCDEC_TRACEBACK=1 lets every error keep its traceback
(to debug a library error that the line hides).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import importlib.util
import inspect
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from omegaconf.errors import MissingMandatoryValue

from encdec import run_folder
from encdec.errors import EncdecError

ENCDEC_SOURCE = Path(__file__).resolve().parent
LIGHTNING = Path(importlib.util.find_spec("lightning").origin).resolve().parent
# Raised in encdec's own source these mean a bug, whatever the input.
PROGRAMMING_ERRORS = (
    AssertionError,
    NameError,
    AttributeError,
    ImportError,
    NotImplementedError,
    RecursionError,
    SyntaxError,
)
MESSAGE_LIMIT = 300

_depth = 0  # user_settings blocks now open: an inner one that can name no setting leaves the error to the outer one


@contextlib.contextmanager
def user_settings(*groups: str) -> Iterator[None]:
    """Build something from the settings of `groups` (config groups such as "encoder", or top-level keys such as
    "model_path"): a library's error becomes one line naming the settings the command line gave those groups."""
    global _depth
    _depth += 1
    try:
        yield
    except (EncdecError, MissingMandatoryValue):  # cli.guarded says which key is required and how to pass it
        raise
    except Exception as error:  # noqa: BLE001 - which are the user's is decided in is_user_error
        if not is_user_error(error) or os.environ.get("ENCDEC_TRACEBACK", "") not in ("", "0"):
            raise
        named = settings_named(groups)
        if not named and _depth > 1:
            raise
        raise EncdecError(f"{named or ' '.join(groups)}: {library_message(error)}") from error
    finally:
        _depth -= 1


@contextlib.contextmanager
def lightning_settings() -> Iterator[None]:
    """Around Trainer.fit/validate/test: what Lightning's own code raises is about the trainer settings."""
    try:
        yield
    except EncdecError:
        raise
    except Exception as error:  # noqa: BLE001
        cause = root_cause(error)
        if not (is_user_error(error) and not isinstance(cause, PROGRAMMING_ERRORS) and raised_in(cause, LIGHTNING)):
            raise
        if os.environ.get("ENCDEC_TRACEBACK", "") not in ("", "0"):
            raise
        raise EncdecError(f"{settings_named(('trainer',)) or 'trainer'}: {library_message(error)}") from error


def for_role(builder: Callable) -> Callable:
    """`user_settings(role)` around a builder whose `role` argument ("encoder" or "decoder") names its group."""
    signature = inspect.signature(builder)

    @functools.wraps(builder)
    def build(*args, **kwargs):
        with user_settings(signature.bind(*args, **kwargs).arguments["role"]):
            return builder(*args, **kwargs)

    return build


def root_cause(error: BaseException) -> BaseException:
    """The exception a wrapper was raised from (Hydra's InstantiationException, datasets' errors, ...)."""
    seen = {id(error)}
    while error.__cause__ is not None and id(error.__cause__) not in seen:
        error = error.__cause__
        seen.add(id(error))
    return error


def is_user_error(error: BaseException) -> bool:
    """Raised inside a user_settings step: the user's, unless a programming error raised in encdec's own code."""
    cause = root_cause(error)
    if isinstance(cause, MemoryError) or (isinstance(cause, OSError) and cause.errno == errno.ENOSPC):
        return False
    return not (isinstance(cause, PROGRAMMING_ERRORS) and raised_in_encdec(cause))


def raised_in_encdec(error: BaseException) -> bool:
    return raised_in(error, ENCDEC_SOURCE)


def raised_in(error: BaseException, package: Path) -> bool:
    """Whether the innermost frame of `error`'s traceback is a file under `package`."""
    traceback = error.__traceback__
    if traceback is None:
        return False
    while traceback.tb_next is not None:
        traceback = traceback.tb_next
    return package in Path(traceback.tb_frame.f_code.co_filename).resolve().parents


def library_message(error: BaseException) -> str:
    """The library's own words on one line: the first line of the root cause's message, cut at MESSAGE_LIMIT."""
    cause = root_cause(error)
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    if isinstance(cause, KeyError) or not text:  # str(KeyError('x')) is "'x'": the type says what it means
        text = f"{type(cause).__name__} {text}".strip()
    return text if len(text) <= MESSAGE_LIMIT else text[: MESSAGE_LIMIT - 3] + "..."


def settings_named(groups: tuple[str, ...]) -> str:
    """What the command line set in `groups`, in its order: the keys (`encoder.overrides.hidden_size=7`); when it set
    none, its choices of them (`encoder=minilm`); when none, Hydra's choices; "" when there is nothing to name."""
    overrides, choices = _command_line()

    def key(override: str) -> str:
        return override.lstrip("+~").split("=", 1)[0]

    last = {key(o): o for o in overrides}  # Hydra applies the last of a key's overrides
    given = [
        o.lstrip("+")
        for o in overrides
        if last[key(o)] is o and any(key(o) == group or key(o).startswith(group + ".") for group in groups)
    ]
    keys = [o for o in given if key(o) not in groups]
    named = keys or given or [f"{group}={choices[group]}" for group in groups if choices.get(group)]
    return " ".join(named)


def _command_line() -> tuple[list[str], dict[str, str]]:
    """(the task overrides of this run, Hydra's group choices); a resumed run's are those it was started with."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return [], {}
    hydra_config = HydraConfig.get()
    overrides = list(hydra_config.overrides.task)
    resumed = next((o.split("=", 1)[1] for o in overrides if o.startswith("resume=")), None)
    if resumed:
        from omegaconf import OmegaConf

        with contextlib.suppress(Exception):  # only for naming: the run's own checks report an unreadable folder
            overrides = list(OmegaConf.load(Path(resumed).expanduser() / run_folder.SAVED_OVERRIDES))
    choices = {str(k): str(v) for k, v in hydra_config.runtime.choices.items() if v is not None}
    return overrides, choices
