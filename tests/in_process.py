"""train.py, eval.py and predict.py run inside the test process, as their `__main__` blocks run them: the command line
checked by `cli.command_line`, then the Hydra app. About ten times faster than a subprocess per command line.

`stop_after_first_step` ends a training run once its first optimizer step is done (what a bad setting would break
has been built and used by then), as exit status 0.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

from conftest import ROOT, error_lines

_scripts: dict[str, object] = {}


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str

    @property
    def errors(self) -> list[str]:
        return error_lines(self.stderr)


class FirstStepDone(BaseException):
    """Raised after the first training step: a BaseException, so neither encdec nor Hydra reports it."""


def _script(name: str):
    if name not in _scripts:
        spec = importlib.util.spec_from_file_location(f"encdec_script_{name.removesuffix('.py')}", ROOT / name)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        # Hydra finds conf/ beside the file of a task function from __main__, as when the script runs itself.
        module.main.__wrapped__.__module__ = "__main__"
        _scripts[name] = module
    return _scripts[name]


def run(script: str, *args: str, cwd: Path, stdin: bytes = b"", stop_after_first_step: bool = False) -> Outcome:
    """`python script args...` in this process, in folder `cwd`, with `stdin`: exit status, stdout and stderr."""
    from hydra.core.global_hydra import GlobalHydra

    from encdec.cli import command_line
    from encdec.lit.module import Seq2SeqModule

    module = _script(script)
    out, err = io.StringIO(), io.StringIO()
    stopper = (
        mock.patch.object(Seq2SeqModule, "on_train_batch_end", _stop, create=True)
        if stop_after_first_step
        else contextlib.nullcontext()
    )
    previous_cwd, previous_argv, previous_stdin = Path.cwd(), sys.argv, sys.stdin
    previous_environment = dict(os.environ)  # Lightning's seed_everything and encdec's quiet_third_party set some
    code = 0
    _keep_absl_off_the_test_streams()
    try:
        os.chdir(cwd)
        sys.stdin = io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8")
        GlobalHydra.instance().clear()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), stopper:
            try:
                sys.argv = command_line([str(ROOT / script), *args], script.removesuffix(".py"), ROOT / "conf")
                module.main()
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
            except FirstStepDone:
                code = 0
            except Exception:  # noqa: BLE001 - what Hydra lets through: as Python reports an uncaught exception
                traceback.print_exc()
                code = 1
    finally:
        GlobalHydra.instance().clear()
        os.chdir(previous_cwd)
        sys.argv, sys.stdin = previous_argv, previous_stdin
        os.environ.clear()
        os.environ.update(previous_environment)
        _close_file_handlers()
    return Outcome(code, out.getvalue(), err.getvalue())


def _stop(self, *args, **kwargs):
    raise FirstStepDone()


def _keep_absl_off_the_test_streams() -> None:
    """Hydra's logging setup closes every handler; absl's also closes its stream unless it is sys.stderr as it is
    then (our capture): here that would be pytest's capture file, which absl took when it was imported."""
    absl = sys.modules.get("absl.logging")
    if absl is not None:
        absl.get_absl_handler().python_handler.stream = sys.__stderr__


def _close_file_handlers() -> None:
    """Hydra's job logging opens RUN/train.log: closed here so the run folder can be removed (and no handle leaks)."""
    import logging

    for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
        for handler in list(getattr(logger, "handlers", [])):
            if isinstance(handler, logging.FileHandler):
                handler.close()
                logger.removeHandler(handler)


def files_under(folder: Path) -> set[Path]:
    return {path for path in folder.rglob("*")} if folder.exists() else set()
