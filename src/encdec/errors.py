"""User-facing failures: one line that names the culprit and the fix, then a non-zero exit."""

from __future__ import annotations

import sys


class EncdecError(Exception):
    """A problem with the user's config, data, checkpoint or command line (not a bug in encdec)."""

    exit_code = 2


class Interrupted(EncdecError):
    """Training stopped by a signal; exits as a shell reports a process the signal ended (128 + its number)."""

    def __init__(self, message: str, signal_number: int):
        super().__init__(message)
        self.exit_code = 128 + signal_number


EXIT_USER_ERROR = EncdecError.exit_code


def exit_with(error: BaseException) -> None:
    """Print `error` as one line and exit non-zero (the caller first drops a half-made run folder:
    `encdec.run_folder.remove_fresh_run_dir`)."""
    message = " ".join(str(error).split()) or type(error).__name__
    if not (isinstance(error, Interrupted) and global_rank() != 0):  # every rank is stopped: one line, not one a rank
        print(f"encdec: error: {message}", file=sys.stderr, flush=True)
    sys.exit(getattr(error, "exit_code", EXIT_USER_ERROR))


def global_rank() -> int:
    from lightning.pytorch.utilities import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0) or 0)
