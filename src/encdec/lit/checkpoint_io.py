"""How checkpoints are written: to a temporary file and renamed (a kill mid-save never leaves a truncated .ckpt
behind), and last.ckpt as a link, not a copy, when it holds the same state as the checkpoint just written."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

from encdec.lit import lightning_private
from encdec.run_folder import write_atomic


class AtomicCheckpointIO(TorchCheckpointIO):
    def __init__(self) -> None:
        super().__init__()
        # Set for validate and test after fit (train.py): they load only the weights of a checkpoint that also holds
        # the optimizer's state (AdamW: twice the trained weights). Mapped from the file instead of read, the state
        # is never touched, so it costs no memory. Not while fitting: a resumed optimizer would keep the file mapped.
        self.map_loads = False

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        write_atomic(Path(path), lambda handle: torch.save(checkpoint, handle), binary=True)

    def load_checkpoint(
        self, path, map_location=lambda storage, loc: storage, weights_only: bool | None = None
    ) -> dict[str, Any]:
        if not self.map_loads or not Path(path).is_file():
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        return torch.load(path, map_location=map_location, weights_only=weights_only, mmap=True)


class LinkedLastCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose last.ckpt holds the latest state and costs no second copy of the best.

    * Lightning 2.6 writes last.ckpt only when it writes a top-k checkpoint at the same step ("a last.ckpt copy
      whenever a checkpoint file gets saved"), so with the default save_top_k=1 it was always a byte-for-byte copy of
      the best, and a run killed after validations that did not improve resumed from the best step, losing the
      steps since. Here last.ckpt is written at every validation (every epoch end where validation runs then),
      when that validation ends, also at an epoch's end.
    * When a top-k checkpoint was written at the same step (the latest validation was the best so far), last.ckpt is
      a hard link to it instead of a second copy: half the disk and half the writing while a run keeps improving
      (2 GB per copy for SmolLM2 with its AdamW state). Not Lightning's `save_last="link"` symlink, which points at
      the newest top-k file, the best rather than the latest state. Checkpoints are replaced by atomic renames
      (AtomicCheckpointIO) and removed by unlinking a name, so writing or deleting either name never changes the
      other. A folder checkpoint (DeepSpeed) or a filesystem without hard links gets a copy, as in ModelCheckpoint.
    """

    @property
    def state_key(self) -> str:
        # ModelCheckpoint's key: checkpoints written before this class existed resume with their best-k state.
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_latest(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_latest(trainer)

    def _should_save_on_train_epoch_end(self, trainer) -> bool:
        # With validation at each epoch's end ModelCheckpoint saves after the epoch's end (on_train_epoch_end); save
        # when that validation ends instead, the state Lightning 2.6 restores correctly: with trainer.max_steps set it
        # resumes an on_train_epoch_end checkpoint one epoch short (12 of 16 steps for a 4-epoch run resumed after
        # its first epoch). Without validation batches, the epoch's end stays.
        if self._save_on_train_epoch_end is None and sum(_as_list(trainer.num_val_batches)) > 0:
            return False
        return super()._should_save_on_train_epoch_end(trainer)

    def _save_latest(self, trainer) -> None:
        lightning_private.save_last_now(self, trainer)

    def setup(self, trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        # The best checkpoint is written before last.ckpt and carries this path in its state; set from the start, it
        # is last.ckpt's path there too, so resuming from the link does not write a last-v1.ckpt beside last.ckpt.
        if self.save_last and not self.last_model_path and self.dirpath is not None:
            self.last_model_path = self.format_checkpoint_name({}, self.CHECKPOINT_NAME_LAST)

    def _save_last_checkpoint(self, trainer, monitor_candidates) -> None:
        just_written = self._last_checkpoint_saved
        if not (self.save_last is True and just_written and self._last_global_step_saved == trainer.global_step):
            return super()._save_last_checkpoint(trainer, monitor_candidates)
        last = self.format_checkpoint_name(monitor_candidates, self.CHECKPOINT_NAME_LAST)
        if os.path.abspath(last) == os.path.abspath(just_written):
            return None
        # Rank 0 decides (only its filesystem surely holds the file) and every rank follows: a copy is a collective
        # save, so ranks taking different paths would hang.
        linked = trainer.is_global_zero and os.path.isfile(just_written) and _hard_link(Path(just_written), Path(last))
        linked = trainer.strategy.broadcast(linked)
        if not linked:
            return super()._save_last_checkpoint(trainer, monitor_candidates)
        self.last_model_path = last
        return None


def _hard_link(target: Path, link: Path) -> bool:
    """`link` made a hard link to `target`, replacing any file there atomically; False where the filesystem refuses."""
    fd, tmp = tempfile.mkstemp(prefix=f".{link.name}.", suffix=".tmp", dir=link.parent)
    os.close(fd)
    os.unlink(tmp)
    try:
        os.link(target, tmp)
    except OSError:
        return False
    os.replace(tmp, link)
    return True


def _as_list(batches) -> list:
    return list(batches) if isinstance(batches, (list, tuple)) else [batches]
