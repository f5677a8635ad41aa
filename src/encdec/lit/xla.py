"""What trainer=tpu needs beyond Lightning's XLA strategy: checkpoints written atomically, and tied weights kept tied.

Lightning's XLA strategy takes only its XLACheckpointIO, which writes the file in place. encdec's last.ckpt is a hard
link to the best checkpoint when both hold one state (encdec.lit.checkpoint_io.LinkedLastCheckpoint), so writing
last.ckpt in place later also rewrote best-step2.ckpt with step 4's weights: train.py then validated, tested and
exported the last weights as the best (found with the tiny pair on PJRT_DEVICE=CPU). AtomicXLACheckpointIO writes
through a temporary file and a rename, as AtomicCheckpointIO does elsewhere.

Tied weights (an LM head sharing the word embeddings, BERT's head bias): each Trainer call ends with the strategy
moving the module to the CPU. Between devices whose tensors cannot be swapped in place (XLA and CPU), `Module.cpu()`
gives every module a new Parameter of its own, so two modules that shared one now hold equal copies. Lightning's XLA strategy re-ties only what is tied when its setup starts, so the fit after
train.py's first validation trained the LM head and the embeddings apart (they drifted 2e-4 apart in 3 steps of the
tiny pair, and the export held both), and the export after the test held two copies. Here the ties are recorded when
the first call sets the module up and restored at every later setup and teardown."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins import XLACheckpointIO
from lightning.pytorch.utilities import find_shared_parameters, set_shared_parameters
from lightning_utilities.core.apply_func import apply_to_collection
from omegaconf import DictConfig, ListConfig, OmegaConf

from encdec.run_folder import write_atomic


class AtomicXLACheckpointIO(XLACheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        """XLACheckpointIO's save (tensors off the device, configs as plain containers), through a renamed temp file."""
        import torch_xla.core.xla_model as xm

        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        checkpoint = apply_to_collection(checkpoint, (DictConfig, ListConfig), OmegaConf.to_container)
        on_cpu = xm._maybe_convert_to_cpu(checkpoint, convert=True)
        write_atomic(Path(path), lambda handle: torch.save(on_cpu, handle), binary=True)


def on_xla_device(trainer: L.Trainer | None) -> bool:
    return trainer is not None and trainer.strategy.root_device.type == "xla"


def keep_tied_parameters(module: L.LightningModule) -> None:
    """Record `module`'s shared parameters the first time (under XLA only), restore them every time after."""
    if not on_xla_device(module._trainer):
        return
    shared = getattr(module, "_encdec_shared_parameters", None)
    if shared is None:
        module._encdec_shared_parameters = find_shared_parameters(module)
    else:
        set_shared_parameters(module, shared)
