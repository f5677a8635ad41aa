"""Turn a GGUF checkpoint (e.g. the packaged SmolLM2) into a plain Hugging Face folder, once.

transformers reads GGUF directly (`from_pretrained(dir, gguf_file=name)`), but it dequantises the whole file on every
load and the result cannot be saved as is. `gguf_to_hf_folder` does that work once and keeps a float32 safetensors
folder (model, generation config, tokenizer) in the user's cache; later calls return the folder immediately.

Cache location: `<cache_dir>/<gguf stem>-<key>`, with `cache_dir` defaulting to `$ENCDEC_CACHE/gguf` or
`~/.cache/encdec/gguf` (`$XDG_CACHE_HOME` honoured). The key hashes the file's size and modification time, so a
changed file gets a new folder. The folder is built under a temporary name and renamed into place, so a killed
conversion never leaves a half-written folder behind; a lock file makes concurrent callers (e.g. DDP ranks) wait for
one conversion instead of repeating it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, concurrent callers may both convert (the first rename wins)
    fcntl = None

SOURCE_RECORD = "gguf_source.json"


def default_cache_dir() -> Path:
    """Where converted GGUF folders go unless `cache_dir` says otherwise."""
    if root := os.environ.get("ENCDEC_CACHE"):
        return Path(root).expanduser() / "gguf"
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "encdec" / "gguf"


def cache_key(gguf_path: Path) -> str:
    stat = gguf_path.stat()
    return hashlib.sha256(f"{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]


def gguf_to_hf_folder(gguf_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """The HF folder (float32 safetensors + tokenizer) converted from `gguf_path`, converting on first use."""
    gguf_path = Path(gguf_path).expanduser().resolve()
    if not gguf_path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {gguf_path}")
    cache_root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = cache_root / f"{gguf_path.stem}-{cache_key(gguf_path)}"
    return build_once(target, lambda folder: convert_gguf(gguf_path, folder))


def build_once(target: Path, build: Callable[[Path], None]) -> Path:
    """Return `target`, first running `build(temporary_folder)` and renaming it to `target` if it does not exist."""
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(target.parent / f".{target.name}.lock"):
        if target.is_dir():  # another process finished while we waited for the lock
            return target
        if fcntl is not None:
            # Holding the lock, any temporary folder left for this target belongs to a killed conversion.
            for leftover in target.parent.glob(f".{target.name}.tmp-*"):
                shutil.rmtree(leftover, ignore_errors=True)
        temporary = target.parent / f".{target.name}.tmp-{os.getpid()}"
        shutil.rmtree(temporary, ignore_errors=True)
        try:
            build(temporary)
            os.rename(temporary, target)
        except BaseException:
            shutil.rmtree(temporary, ignore_errors=True)
            if target.is_dir():  # lost a lock-free race to another process: its folder is complete
                return target
            raise
    return target


@contextlib.contextmanager
def _exclusive_lock(lock_path: Path) -> Iterator[None]:
    if fcntl is None:
        yield
        return
    with open(lock_path, "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantise `gguf_path` into `out_dir`: float32 safetensors, generation config, tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    source_dir, file_name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(source_dir, gguf_file=file_name)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # batching needs a pad; the eos id is the usual stand-in
    dequantised = AutoModelForCausalLM.from_pretrained(source_dir, gguf_file=file_name, dtype=torch.float32)

    # The GGUF-loaded model is flagged as quantised and refuses `save_pretrained`: move its float32 weights into a
    # plain model built from the same config minus the GGUF quantisation entry.
    config_dict = dequantised.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict["dtype"] = "float32"
    config_dict["pad_token_id"] = tokenizer.pad_token_id
    model_type = config_dict.pop("model_type")
    plain = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **config_dict), dtype=torch.float32)
    plain.load_state_dict(dequantised.state_dict(), strict=True)
    plain.generation_config = dequantised.generation_config
    plain.generation_config.pad_token_id = tokenizer.pad_token_id
    del dequantised

    out_dir.mkdir(parents=True)
    plain.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    stat = gguf_path.stat()
    record = {
        "gguf_file": str(gguf_path),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "conversion_seconds": round(time.perf_counter() - started, 1),
    }
    (out_dir / SOURCE_RECORD).write_text(json.dumps(record, indent=2) + "\n")
