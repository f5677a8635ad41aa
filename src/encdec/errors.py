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


def exit_with(error: BaseException, run_dir: Path | None = None, existing: Path | None = None) -> None:
    """Print `error` as one line, drop the half-made run folder we created (and the empty folders Hydra made above
    it, up to `existing`), exit non-zero."""
    if run_dir is not None:
        remove_fresh_run_dir(run_dir, existing)
    message = " ".join(str(error).split()) or type(error).__name__
    if not (isinstance(error, Interrupted) and global_rank() != 0):  # every rank is stopped: one line, not one a rank
        print(f"encdec: error: {message}", file=sys.stderr, flush=True)
    sys.exit(getattr(error, "exit_code", EXIT_USER_ERROR))


def global_rank() -> int:
    from lightning.pytorch.utilities import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0) or 0)


def remove_fresh_run_dir(run_dir: Path, existing: Path | None = None) -> None:
    """Remove a run folder that holds nothing but what Hydra wrote for this very run, or, when this run made the
    folder (`existing`, the deepest folder on its path that was there before the run, lies above it), none of a run's
    results (figures or curves of the validation before training stay no more than .hydra/ does); and the empty
    folders above it that Hydra made for it: those below `existing`, or, when that is unknown, its empty parent
    (outputs/<date>/)."""
    from encdec.run_folder import HYDRA_LOGS, PRODUCTS, SAVED_CONFIG

    hydra_made = {SAVED_CONFIG.parts[0], *HYDRA_LOGS}
    if not run_dir.is_dir():
        return
    children = [child.name for child in run_dir.iterdir()]
    made_by_this_run = existing is not None and existing in run_dir.parents
    if not (all(name in hydra_made for name in children) or (made_by_this_run and not set(children) & set(PRODUCTS))):
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    made = [run_dir.parent]
    if existing is not None:
        made = [folder for folder in run_dir.parents if existing in folder.parents]
    for folder in made:
        if not folder.is_dir() or any(folder.iterdir()):
            break
        folder.rmdir()
