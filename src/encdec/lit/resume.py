"""What makes `resume=` continue a killed run exactly, beyond Lightning's own restore.

* `StepCheckpoint`: the `checkpoint.every_n_steps` checkpoints. Lightning saves them when the step's batch ends,
  before the validation that may follow at the same step, and a run resumed from such a checkpoint skips that
  validation (its metrics, and any best checkpoint it would have chosen, are lost). At those steps the save waits for
  the validation's end.
* `ContinuedCSVHistory`: Lightning's CSV writer deletes an existing `metrics.csv` when it opens its folder, so a
  resumed run's curve (the one report.py plots) would start at the resumed step. The rows are read before that and
  those the checkpoint covers are written back once it has restored the step; rows logged after the checkpoint are
  dropped, since the resumed run logs those steps again.
* `tensorboard_resume_arguments`: TensorBoard's own `purge_step` hides the killed run's events past the checkpoint.
* `wandb_resume_arguments`: the resumed run logs under the killed run's wandb id; online, wandb appends to that run.
  wandb cannot resume offline runs itself: there the second part is a second offline folder with the same id.
"""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

METRICS_FILE = "metrics.csv"


class StepCheckpoint(ModelCheckpoint):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._save_after_validation = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        due = self._every_n_train_steps >= 1 and trainer.global_step % self._every_n_train_steps == 0
        if due and _validates_after_this_batch(trainer):
            self._save_after_validation = True
            return
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_validation_end(self, trainer, pl_module) -> None:
        if not self._save_after_validation:
            return super().on_validation_end(trainer, pl_module)
        self._save_after_validation = False
        if not self._should_skip_saving_checkpoint(trainer):
            candidates = self._monitor_candidates(trainer)
            self._save_topk_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)


def _validates_after_this_batch(trainer: L.Trainer) -> bool:
    # Lightning's own decision, made right after this hook with the same state; a validation interval in time
    # (val_check_interval as a duration) could decide otherwise a moment later, so then nothing is deferred.
    if not trainer.enable_validation or getattr(trainer, "_val_check_time_interval", None) is not None:
        return False
    epoch_loop = trainer.fit_loop.epoch_loop
    return bool(epoch_loop._should_check_val_fx(trainer.fit_loop._data_fetcher))


class ContinuedCSVHistory(L.Callback):
    def __init__(self, loggers: list) -> None:
        # Read now: the loggers' writers do not exist yet, and creating one deletes the file.
        self._saved: dict[int, tuple[list[str], list[dict[str, str]]]] = {}
        for logger in loggers:
            path = Path(logger.log_dir) / METRICS_FILE if isinstance(logger, CSVLogger) else None
            if path is not None and path.is_file():
                with path.open(newline="", encoding="utf-8") as handle:
                    reader = csv.DictReader(handle)
                    rows = list(reader)
                self._saved[id(logger)] = (list(reader.fieldnames or []), rows)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            if id(logger) not in self._saved:
                continue
            header, rows = self._saved.pop(id(logger))
            stepped = trainer.fit_loop.epoch_loop._batches_that_stepped  # the step count its logs used, as restored
            kept = [row for row in rows if _covered(row, header, trainer.global_step, stepped)]
            writer = logger.experiment
            with open(writer.metrics_file_path, "w", newline="", encoding="utf-8") as handle:
                table = csv.DictWriter(handle, fieldnames=header)
                table.writeheader()
                table.writerows(kept)
            # The writer then appends, and rewrites the header itself if a new metric appears.
            writer.metrics_keys = list(header)


    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Resumed from a checkpoint of the last step, fit runs no batch, so Lightning's logging step stays one behind
        # (a checkpoint saved when a batch ends holds the count before that batch's increment): the validation and
        # test after fit would log at step N-1, not N as in the run never stopped.
        loop = trainer.fit_loop.epoch_loop
        loop._batches_that_stepped = max(loop._batches_that_stepped, trainer.global_step)


def _covered(row: dict[str, str], header: list[str], step: int, stepped: int) -> bool:
    """Training rows of steps before the checkpoint's (the resumed run repeats that step's), and validation rows
    logged up to `stepped`, the logging step the checkpoint restored: a validation in the middle of an epoch logs at
    its step - 1, one at an epoch's end at its step, so a validation row at the checkpoint's step belongs to the
    checkpoint only when it was saved after an epoch-end validation (a kill while the next validation's best
    checkpoint was written left that validation's row, which the resumed run logs again)."""
    try:
        logged_at = int(float(row.get("step") or ""))
    except ValueError:
        return False
    if any(row.get(k) for k in header if k.startswith("val/")):
        return logged_at <= stepped
    return logged_at < step


def checkpoint_step(path: Path) -> int | None:
    """The optimizer step a Lightning checkpoint file was written at, read without loading its tensors."""
    import torch

    if not path.is_file():
        return None  # a DeepSpeed checkpoint is a folder of shards
    try:
        return int(torch.load(path, map_location="cpu", mmap=True, weights_only=True)["global_step"])
    except Exception:  # noqa: BLE001 - unreadable here: Lightning reports it when it restores the checkpoint
        return None


def tensorboard_resume_arguments(step: int | None) -> dict:
    """TensorBoard hides the killed run's events from `step` on: the resumed run logs those steps again."""
    return {} if step is None else {"purge_step": step}


def wandb_resume_arguments(spec, run_dir: Path) -> dict:
    """Keyword arguments that make a WandbLogger continue the run it logged in `run_dir` (none if it logged none)."""
    if spec.get("id"):
        return {}
    folders = sorted((run_dir / "wandb").glob("*run-*-*"), key=lambda p: p.name.split("-")[-2])
    folders = [folder for folder in folders if folder.is_dir() and not folder.is_symlink()]
    if not folders:
        return {}
    arguments = {"id": folders[0].name.rsplit("-", 1)[1]}
    if not spec.get("offline", False):
        arguments["resume"] = "allow"  # offline, wandb ignores `resume` with a warning
    return arguments
