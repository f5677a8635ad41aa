"""Resume: everything that makes `resume=RUN` continue a killed run exactly, beyond Lightning's own restore.

What a resumed run must reproduce, and where this module does it:

* **The resume point** (`resume_point`): the run's saved config and its newest complete checkpoint; a finished,
  foreign or empty run folder, or a truncated newest checkpoint, is one line. (`cli.resume_arguments` points Hydra at
  the run's own folder before this runs.)
* **RNG and sampler state** (`save_state`, `restore_state`, called from the LightningModule's checkpoint hooks): the
  torch, CUDA, numpy and Python generators of every rank, and the training batches of the checkpoint's epoch already
  trained, which `encdec.data.sampling.ResumableBatchSampler.resume_at` skips (a streamed split,
  `data.streaming=true`: also the stream's position at the start of the trained batch's buffer,
  `encdec.data.streaming.StreamedBatches`).
* **Checkpoint timing** (`checkpoint_callbacks`, `StepCheckpoint`): `checkpoint.every_n_steps` checkpoints are saved
  when the step's batch ends, before a validation that may follow at the same step, and a run resumed from such a
  checkpoint would skip that validation (its metrics, and any best checkpoint it would have chosen, are lost): at
  those steps the save waits for the validation's end. last.ckpt is written at every validation
  (`encdec.lit.checkpoint_io.LinkedLastCheckpoint`).
* **Logger continuity** (`resumed_logger`, `ContinuedCSVHistory`): Lightning's CSV writer deletes an existing
  `metrics.csv` when it opens its folder, so a resumed run's curve (the one report.py plots) would start at the
  resumed step. The rows are read before that and those the checkpoint covers are written back once it has restored
  the step; rows logged after the checkpoint are dropped, since the resumed run logs those steps again. TensorBoard's
  own `purge_step` hides the killed run's events past the checkpoint. A wandb run continues under the killed run's
  id; online, wandb appends to that run; offline, wandb cannot resume, so the second part is a second offline folder
  with the same id.

The Lightning internals these need are functions in `encdec.lit.lightning_private`, with the versions checked.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

import hydra
import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig

from encdec import run_folder
from encdec.errors import EncdecError
from encdec.lit import lightning_private as private
from encdec.lit.checkpoint_io import LinkedLastCheckpoint
from encdec.lit.xla import on_xla_device

# -- the resume point -----------------------------------------------------------------------------------------------


def resume_point(run_dir: Path):
    """The saved config of a killed run and the newest checkpoint to continue from."""
    cfg = run_folder.saved_config(run_dir, f"resume={run_dir}")
    if cfg.get("task_name", "train") != "train":
        raise EncdecError(
            f"resume={run_dir} is the output of {cfg.task_name}.py, not a training run: give a train.py run folder"
        )
    if (run_dir / run_folder.METRICS).exists():
        raise EncdecError(
            f"resume={run_dir}: this run already finished ({run_folder.METRICS} exists); start a new run instead"
        )
    run_folder.remove_stale_temporaries(run_dir)
    checkpoints = sorted(run_folder.checkpoint_files(run_dir), key=_modified)
    if not checkpoints:
        raise EncdecError(
            f"resume={run_dir}: no checkpoint in {run_dir / run_folder.CHECKPOINTS}; start a new run instead"
        )
    newest = checkpoints[-1]
    if newest.is_file() and not _readable_checkpoint(newest):
        raise EncdecError(
            f"resume={run_dir}: {newest.relative_to(run_dir)} is truncated or corrupt (not a complete torch file); "
            "move it aside to resume from the checkpoint before it"
        )
    cfg.resume = str(run_dir)
    return cfg, newest


def _readable_checkpoint(path: Path) -> bool:
    """torch.save writes a zip archive; a cut-off one has no central directory at its end. Reads only that index."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return bool(archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _modified(checkpoint: Path) -> float:
    """When a checkpoint was last written. DeepSpeed's are folders whose files are rewritten in place on every save
    (last.ckpt/latest, last.ckpt/checkpoint/…), which leaves the folder's own mtime at its first save."""
    if checkpoint.is_dir():
        return max((p.stat().st_mtime for p in checkpoint.rglob("*")), default=checkpoint.stat().st_mtime)
    return checkpoint.stat().st_mtime


# -- RNG and sampler state ------------------------------------------------------------------------------------------


def save_state(checkpoint: dict, trainer: L.Trainer | None) -> None:
    """Into `checkpoint["encdec"]`: every generator a training step draws from, on every rank. Lightning restores
    loops, optimizer and scheduler; with these a resumed run continues bit for bit."""
    rng = {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": _numpy_state_to_tensors(np.random.get_state()),
        "python": random.getstate(),
    }
    if on_xla_device(
        trainer
    ):  # dropout on an XLA device draws from torch_xla's own seed, which torch's state leaves out
        rng["xla"] = _xla_model().get_rng_state()
    checkpoint["encdec"]["rng"] = rng
    stream = getattr(trainer.datamodule, "train_stream", None) if trainer is not None else None
    done, epoch_finished = private.batches_done_in_epoch(checkpoint)
    if stream is not None and done and not epoch_finished:
        # data.streaming=true: where the stream's buffer of the last trained batch starts (encdec.data.streaming)
        checkpoint["encdec"]["stream"] = stream.state_dict(checkpoint["epoch"], done)
    if trainer is not None and trainer.world_size > 1:
        # Every rank draws its own dropout masks (batches of other shapes use up other amounts of the same seed's
        # stream) but only rank 0 writes the file: keep each rank's state. Every rank runs this hook.
        per_rank = [None] * trainer.world_size
        torch.distributed.all_gather_object(per_rank, rng)
        checkpoint["encdec"]["rng_per_rank"] = per_rank


def restore_state(checkpoint: dict, trainer: L.Trainer | None) -> None:
    """This rank's generators as saved, and the training batches of the saved epoch to skip."""
    saved = checkpoint.get("encdec", {})
    rng = saved.get("rng")
    per_rank = saved.get("rng_per_rank") or []
    if trainer is not None and len(per_rank) == trainer.world_size:
        rng = per_rank[trainer.global_rank]
    if rng:
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        np.random.set_state(_numpy_state_from_tensors(rng["numpy"]))
        random.setstate(_tuples(rng["python"]))
        if "xla" in rng and on_xla_device(trainer):
            _xla_model().set_rng_state(rng["xla"])
    done, epoch_finished = private.batches_done_in_epoch(checkpoint)
    position = None
    if epoch_finished:
        # The epoch is done. Lightning may build the loader's iterator before it tells the sampler the new epoch (it
        # does under DDP), which would replay the finished epoch's order: name the next epoch now.
        position = (checkpoint["epoch"] + 1, 0)
    elif done:
        position = (checkpoint["epoch"], done)
    datamodule = trainer.datamodule if trainer is not None else None
    if datamodule is not None and position is not None:
        datamodule.resume_position = position
        datamodule.stream_resume = saved.get("stream")
        if getattr(datamodule, "train_sampler", None) is not None:
            datamodule.train_sampler.resume_at(*position)
        if getattr(datamodule, "train_stream", None) is not None:
            datamodule.train_stream.resume_at(*position, datamodule.stream_resume)


def _xla_model():
    import torch_xla.core.xla_model as xm

    return xm


def _tuples(value):
    """Python's RNG state as random.setstate takes it: torch_xla's save (XLACheckpointIO) writes tuples as lists."""
    return tuple(_tuples(item) for item in value) if isinstance(value, (list, tuple)) else value


def _numpy_state_to_tensors(state) -> dict:
    # numpy arrays are not allowed in weights_only checkpoints; tensors and plain numbers are.
    name, keys, position, has_gauss, cached_gaussian = state
    return {
        "name": name,
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "position": int(position),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached_gaussian),
    }


def _numpy_state_from_tensors(saved: dict):
    keys = saved["keys"].numpy().astype(np.uint32)
    return saved["name"], keys, saved["position"], saved["has_gauss"], saved["cached_gaussian"]


# -- checkpoint timing ----------------------------------------------------------------------------------------------


def checkpoint_callbacks(checkpoint: DictConfig, run_dir: Path) -> tuple[LinkedLastCheckpoint, list[ModelCheckpoint]]:
    """The best/last checkpoint callback, and it with the step checkpoints (checkpoint.every_n_steps) if any."""
    best = LinkedLastCheckpoint(
        dirpath=run_dir / run_folder.CHECKPOINTS,
        filename=run_folder.BEST_CHECKPOINT,
        auto_insert_metric_name=False,
        monitor=checkpoint.monitor,
        mode=checkpoint.mode,
        save_top_k=checkpoint.save_top_k,
        save_last=checkpoint.save_last,
    )
    callbacks: list[ModelCheckpoint] = [best]
    if checkpoint.get("every_n_steps"):
        keep = checkpoint.get("keep_steps")
        # keep_steps=N: the N newest step checkpoints (the "best" N by step); null keeps them all.
        kept = {"monitor": "step", "mode": "max", "save_top_k": keep} if keep else {"save_top_k": -1}
        callbacks.append(
            StepCheckpoint(
                dirpath=run_dir / run_folder.CHECKPOINTS,
                filename=run_folder.STEP_CHECKPOINT,
                auto_insert_metric_name=False,
                every_n_train_steps=checkpoint.every_n_steps,
                **kept,
            )
        )
    return best, callbacks


class StepCheckpoint(ModelCheckpoint):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._save_after_validation = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        every = private.every_n_train_steps(self)
        due = every >= 1 and trainer.global_step % every == 0
        if due and private.validates_after_this_batch(trainer):
            self._save_after_validation = True
            return
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_validation_end(self, trainer, pl_module) -> None:
        if not self._save_after_validation:
            return super().on_validation_end(trainer, pl_module)
        self._save_after_validation = False
        private.save_now(self, trainer)


class ContinuedCSVHistory(L.Callback):
    def __init__(self, loggers: list) -> None:
        # Read now: the loggers' writers do not exist yet, and creating one deletes the file.
        self._saved: dict[int, tuple[list[str], list[dict[str, str]]]] = {}
        for logger in loggers:
            path = Path(logger.log_dir) / run_folder.CURVES_FILE if isinstance(logger, CSVLogger) else None
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
            stepped = private.logging_step(trainer)  # the step count its logs used, as restored
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
        private.set_logging_step(trainer, max(private.logging_step(trainer), trainer.global_step))


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
    folders = sorted((run_dir / run_folder.WANDB).glob("*run-*-*"), key=lambda p: p.name.split("-")[-2])
    folders = [folder for folder in folders if folder.is_dir() and not folder.is_symlink()]
    if not folders:
        return {}
    arguments = {"id": folders[0].name.rsplit("-", 1)[1]}
    if not spec.get("offline", False):
        arguments["resume"] = "allow"  # offline, wandb ignores `resume` with a warning
    return arguments


def resumed_logger(spec: DictConfig, run_dir: Path, resume_from: Path | None):
    """The logger `spec` names, continuing the killed run's history when resuming."""
    target = str(spec.get("_target_", ""))
    if resume_from is not None and target.endswith("WandbLogger"):
        return hydra.utils.instantiate(spec, **wandb_resume_arguments(spec, run_dir))
    if resume_from is not None and target.endswith("TensorBoardLogger"):
        return hydra.utils.instantiate(spec, **tensorboard_resume_arguments(checkpoint_step(resume_from)))
    return hydra.utils.instantiate(spec)
