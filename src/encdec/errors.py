"""User-facing failures: one line that names the culprit and the fix, then a non-zero exit."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


class EncdecError(Exception):
    """A problem with the user's config, data, checkpoint or command line (not a bug in encdec)."""

    exit_code = 2


class Interrupted(EncdecError):
    """Training stopped by a signal; exits as a shell reports a process the signal ended (128 + its number)."""

    def __init__(self, message: str, signal_number: int):
        super().__init__(message)
        self.exit_code = 128 + signal_number


EXIT_USER_ERROR = EncdecError.exit_code


def exit_with(error: BaseException, run_dir: Path | None = None) -> None:
    """Print `error` as one line, drop the half-made run folder we created, exit non-zero."""
    if run_dir is not None:
        remove_fresh_run_dir(run_dir)
    message = " ".join(str(error).split()) or type(error).__name__
    print(f"encdec: error: {message}", file=sys.stderr, flush=True)
    sys.exit(getattr(error, "exit_code", EXIT_USER_ERROR))


def remove_fresh_run_dir(run_dir: Path) -> None:
    """Remove a run folder that holds nothing but what Hydra wrote for this very run."""
    hydra_made = {".hydra", "train.log", "eval.log", "predict.log"}
    if run_dir.is_dir() and all(child.name in hydra_made for child in run_dir.iterdir()):
        shutil.rmtree(run_dir, ignore_errors=True)
        # Hydra makes outputs/<date>/<time>; an empty <date> folder left behind is noise too.
        parent = run_dir.parent
        if parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
