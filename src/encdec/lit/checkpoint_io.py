"""Checkpoints written to a temporary file and renamed: a kill mid-save never leaves a truncated .ckpt behind."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from encdec.run_folder import write_atomic


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        write_atomic(Path(path), lambda handle: torch.save(checkpoint, handle), binary=True)
