"""Every Lightning internal encdec relies on, in one place, with the Lightning versions it was checked on.

Lightning has no public API for what exact resume needs: when a step checkpoint may be written, what the fit loop's
saved progress means, which logging step a restored run is at. Each use is a function here (named for what encdec
needs, not for the attribute), so a Lightning release that moves one breaks one function, and the tests that cover
it say which: tests/test_resume.py (bitwise resume, logging steps, mid-epoch positions), tests/test_checkpoints.py
(last.ckpt, step checkpoints), tests/test_cross_attention.py (DeepSpeed hooks). `scripts/check_latest.sh` runs them
against the newest Lightning the version fence in pyproject.toml allows.

Not wrappable as functions: `encdec.lit.checkpoint_io.LinkedLastCheckpoint` overrides ModelCheckpoint's private
`_should_save_on_train_epoch_end` and `_save_last_checkpoint`, and reads `_save_on_train_epoch_end`,
`_last_checkpoint_saved`, `_last_global_step_saved` (tests/test_checkpoints.py covers each).
"""

from __future__ import annotations

import warnings

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

# Lightning releases these internals were read in and tested against (tests above); the fence allows this minor only.
CHECKED_ON = ("2.6.6",)


def warn_if_unchecked() -> None:
    """One warning when the installed Lightning is a minor release these internals were not checked on."""
    minor = ".".join(L.__version__.split(".")[:2])
    if all(".".join(version.split(".")[:2]) != minor for version in CHECKED_ON):
        warnings.warn(
            f"encdec's exact resume was checked on Lightning {', '.join(CHECKED_ON)}, not {L.__version__}: "
            "run scripts/check_latest.sh before trusting resume= on it",
            stacklevel=2,
        )


# -- the fit loop ---------------------------------------------------------------------------------------------------


def batches_done_in_epoch(checkpoint: dict) -> tuple[int, bool]:
    """(training batches of the checkpoint's epoch already trained, whether that was the epoch's last batch), read
    from the fit loop's saved progress. `processed`, not `completed`: step checkpoints are written in
    on_train_batch_end, before `completed` counts the batch."""
    progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.batch_progress", {})
    return int(progress.get("current", {}).get("processed", 0)), bool(progress.get("is_last_batch", False))


def validates_after_this_batch(trainer: L.Trainer) -> bool:
    """Lightning's own decision whether validation runs right after the current training batch, made right after
    on_train_batch_end with the same state. A validation interval in time (val_check_interval as a duration) could
    decide otherwise a moment later, so then this says no."""
    if not trainer.enable_validation or getattr(trainer, "_val_check_time_interval", None) is not None:
        return False
    fit_loop = trainer.fit_loop
    return bool(fit_loop.epoch_loop._should_check_val_fx(fit_loop._data_fetcher))


def logging_step(trainer: L.Trainer) -> int:
    """The step Lightning's loggers log at (batches that stepped an optimizer), as restored from a checkpoint."""
    return int(trainer.fit_loop.epoch_loop._batches_that_stepped)


def set_logging_step(trainer: L.Trainer, step: int) -> None:
    trainer.fit_loop.epoch_loop._batches_that_stepped = int(step)


# -- ModelCheckpoint ------------------------------------------------------------------------------------------------


def every_n_train_steps(callback: ModelCheckpoint) -> int:
    return int(callback._every_n_train_steps or 0)


def save_now(callback: ModelCheckpoint, trainer: L.Trainer) -> None:
    """What ModelCheckpoint does at a save point: the top-k checkpoint and last.ckpt (unless saving is skipped, e.g.
    during the sanity check or when this step was already saved)."""
    if callback._should_skip_saving_checkpoint(trainer):
        return
    candidates = callback._monitor_candidates(trainer)
    callback._save_topk_checkpoint(trainer, candidates)
    callback._save_last_checkpoint(trainer, candidates)


def save_last_now(callback: ModelCheckpoint, trainer: L.Trainer) -> None:
    """last.ckpt alone, unless anything was saved at this step already (then last.ckpt was written with it)."""
    if callback.save_last and not callback._should_skip_saving_checkpoint(trainer):
        callback._save_last_checkpoint(trainer, callback._monitor_candidates(trainer))


# -- strategies -----------------------------------------------------------------------------------------------------


def remove_deepspeed_hooks(module) -> None:
    """DeepSpeed ZeRO-3 leaves parameter-gathering hooks on the module it wrapped; a module reused after fit (a
    second validate) must drop them."""
    from lightning.pytorch.strategies.deepspeed import remove_module_hooks

    remove_module_hooks(module)
