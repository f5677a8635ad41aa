"""The run folder contract: what is in it, how it is written (atomically), and how to find its pieces."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

from encdec.errors import EncdecError

CHECKPOINTS = "checkpoints"
HF_MODEL = "hf_model"
METRICS = "metrics.json"
PREDICTIONS = "predictions.jsonl"
ENCODER_TOKENIZER = "encoder_tokenizer"
DECODER_TOKENIZER = "decoder_tokenizer"
PRODUCTS = (CHECKPOINTS, HF_MODEL, METRICS, PREDICTIONS)
# What Hydra writes: the composed config and the command line's overrides.
SAVED_CONFIG = Path(".hydra") / "config.yaml"
SAVED_OVERRIDES = Path(".hydra") / "overrides.yaml"
# The loggers' folders (conf/logger/ names them; lightning_logs is Lightning's own default); csv's holds the curves.
WANDB = "wandb"
LOGGER_FOLDERS = ("csv", "tensorboard", WANDB, "lightning_logs")
CURVES_FILE = "metrics.csv"  # what Lightning's CSVLogger writes in its folder
CURVES = Path("csv") / CURVES_FILE
# The logs Hydra writes into a run folder, one per command.
HYDRA_LOGS = ("train.log", "eval.log", "predict.log")
# A sweep folder's Optuna summary (hparams_search=...), beside its numbered run folders.
OPTUNA_RESULTS = "optimization_results.yaml"
# checkpoints/: Lightning fills in {step}. The best (by the monitored metric), the latest validation's, and those
# every checkpoint.every_n_steps steps; train.py reads the step back from the best's name.
CHECKPOINT_SUFFIX = ".ckpt"
BEST_CHECKPOINT = "best-step{step}"
STEP_CHECKPOINT = "step{step}"
LAST_CHECKPOINT = f"last{CHECKPOINT_SUFFIX}"
# Scratch checkpoints of train.py's export and evaluation under FSDP and DeepSpeed (the full weights, gathered once),
# and the file a DeepSpeed checkpoint folder is gathered into beside it for eval.py and predict.py.
EXPORT_CHECKPOINT = f".export{CHECKPOINT_SUFFIX}"
BEST_FULL_WEIGHTS = f".best-full-weights{CHECKPOINT_SUFFIX}"
GATHERED_CHECKPOINT = f"full{CHECKPOINT_SUFFIX}"
# Pictures of the callbacks (encdec.lit.callbacks), one file a name and step; the ONNX export's default folder.
FIGURES = "figures"
ONNX = "onnx"


def best_checkpoint_name(step: int) -> str:
    return BEST_CHECKPOINT.format(step=step) + CHECKPOINT_SUFFIX


def checkpoint_files(run_dir: Path) -> list[Path]:
    """Every checkpoint in the run folder (a file, or a DeepSpeed checkpoint's folder), in no particular order."""
    return list((run_dir / CHECKPOINTS).glob(f"*{CHECKPOINT_SUFFIX}"))


def best_checkpoints(run_dir: Path) -> list[Path]:
    """The run's best checkpoints, oldest first."""
    best = (run_dir / CHECKPOINTS).glob(BEST_CHECKPOINT.format(step="*") + CHECKPOINT_SUFFIX)
    return sorted(best, key=lambda path: path.stat().st_mtime)


def figure_path(run_dir: Path, name: str, step: int) -> Path:
    """Where a picture `name` of step `step` is saved (its folder made)."""
    folder = run_dir / FIGURES
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{name}_step{step}.png"


def check_fresh(run_dir: Path, resumable: bool = True) -> None:
    """Refuse to write into a folder that already holds a run's products (never overwrite a user's results)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise EncdecError(f"hydra.run.dir={run_dir} is a file, not a folder: choose another hydra.run.dir")
    existing = [name for name in PRODUCTS if (run_dir / name).exists()]
    if existing:
        resume = f"continue it with resume={run_dir} or " if resumable and not (run_dir / METRICS).exists() else ""
        raise EncdecError(
            f"run folder {run_dir} already holds results ({', '.join(existing)}): {resume}choose another hydra.run.dir"
        )


def check_creatable(run_dir: Path, existing: Path | None) -> None:
    """Hydra makes the run folder before encdec runs, and fails with a traceback where it cannot: try the first
    folder it would make (and remove it at once), so that case is one line too."""
    if existing is None or existing == run_dir:
        return
    first_missing = run_dir.relative_to(existing).parts[0]
    if (existing / first_missing).exists():
        raise EncdecError(
            f"hydra.run.dir={run_dir} cannot be made: {existing / first_missing} is a file; "
            "choose a folder you can write to"
        )
    try:
        (existing / first_missing).mkdir()
        (existing / first_missing).rmdir()
    except OSError as error:
        raise EncdecError(
            f"hydra.run.dir={run_dir} cannot be made ({error.strerror} at {existing / first_missing}); "
            "choose a folder you can write to"
        ) from None


def remove_fresh_run_dir(run_dir: Path, existing: Path | None = None) -> None:
    """Remove a run folder that holds nothing but what Hydra wrote for this very run, or, when this run made the
    folder (`existing`, the deepest folder on its path that was there before the run, lies above it), none of a run's
    results (figures or curves of the validation before training stay no more than .hydra/ does); and the empty
    folders above it that Hydra made for it: those below `existing`, or, when that is unknown, its empty parent
    (outputs/<date>/)."""
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


def saved_config(run_dir: Path, culprit: str):
    """The config Hydra saved for the run in `run_dir`; an unreadable one is one line starting with `culprit`."""
    from omegaconf import OmegaConf

    saved = run_dir / SAVED_CONFIG
    try:
        return OmegaConf.load(saved)
    except Exception as error:  # noqa: BLE001 - YAML parser and OmegaConf errors alike
        raise EncdecError(
            f"{culprit}: {saved.relative_to(run_dir)} is not readable YAML ({type(error).__name__}): "
            "restore it from a copy of the run"
        ) from None


def record_setting(run_dir: Path, key: str, value: Any) -> None:
    """Set `key` in the config Hydra saved for the run (where there is one), so the run folder records what ran, not
    only what was asked (the command line stays in .hydra/overrides.yaml)."""
    from omegaconf import OmegaConf

    saved = run_dir / SAVED_CONFIG
    if saved.is_file():
        config = OmegaConf.load(saved)
        OmegaConf.update(config, key, value)
        write_text_atomic(saved, OmegaConf.to_yaml(config))


def single_file_checkpoint(checkpoint: Path, scratch: Path) -> Path:
    """`checkpoint` itself when it is one file; a DeepSpeed checkpoint folder (weights in per-rank shards) gathered
    into one float32 file at `scratch`, in the .ckpt layout eval.py and predict.py read."""
    if checkpoint.is_file():
        return checkpoint
    from lightning.pytorch.utilities.deepspeed import convert_zero_checkpoint_to_fp32_state_dict

    with contextlib.redirect_stdout(io.StringIO()):  # it prints "Saving fp32 state dict to …"
        convert_zero_checkpoint_to_fp32_state_dict(checkpoint, scratch)
    return scratch


def write_atomic(path: Path, write: Callable[[IO], None], binary: bool = False) -> None:
    """Write through a temporary sibling and rename: readers never see a half-written file, even after a kill."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it owner-only; results are for the whole group to read
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        _raise_naming(error, path)
        raise


def _follow_umask(folder: Path) -> None:
    """Files and folders under `folder` get the modes the umask gives new ones (0644/0755 under 022), as a plain
    open() would: mkdtemp makes the folder owner-only, and transformers writes model.safetensors through an
    owner-only temporary file (0600)."""
    mask = _umask()
    for path in [folder, *folder.rglob("*")]:
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


def _raise_naming(error: BaseException, path: Path) -> None:
    """A full disk as `write()` reports it names no file: raised again naming the one being written (for the user's
    error line); any other error is left as it is."""
    if isinstance(error, OSError) and error.errno == errno.ENOSPC and not error.filename:
        raise OSError(errno.ENOSPC, error.strerror or os.strerror(errno.ENOSPC), str(path)) from error


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """What a write killed before its rename left behind (`.NAME.*.tmp` files, `.hf_model.*` folders): never read,
    since no name of the run folder points at them, but a checkpoint's worth of disk each. Returns what it removed."""
    stale = [*run_dir.glob(f"{CHECKPOINTS}/.*.tmp"), *run_dir.glob(".*.tmp"), *run_dir.glob(f".{HF_MODEL}.*")]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    return stale


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    """Make a rename inside `folder` survive a power loss (POSIX; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, lambda handle: handle.write(text))


def write_json(path: Path, data: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def write_folder_atomic(target: Path, fill: Callable[[Path], None]) -> None:
    """`fill` a temporary sibling, then rename it to `target`: a kill never leaves a half-written folder, and a
    previous `target` is replaced only once the new one is whole. Modes follow the umask."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        fill(tmp)
        _follow_umask(tmp)
        previous = None
        if target.exists():
            # Moved aside, not deleted, until the new export is in place: a kill in between loses neither.
            previous = Path(tempfile.mkdtemp(prefix=f".{target.name}.previous.", dir=target.parent))
            os.replace(target, previous / target.name)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
        if previous is not None:
            shutil.rmtree(previous, ignore_errors=True)
    except BaseException as error:
        shutil.rmtree(tmp, ignore_errors=True)
        _raise_naming(error, target)
        raise
