"""A run's peak memory, for its summary and metrics.json, and handing freed memory back between a run's phases.

Peak RSS is the most resident memory the process (rank 0's, under DDP) ever held: the kernel's high-water mark
(VmHWM on Linux, ru_maxrss elsewhere), which `/usr/bin/time -v` also reports as "Maximum resident set size". The CUDA
peak is torch's `max_memory_allocated` on the process's device: what tensors held, not what the caching allocator
reserved around them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import sys

GB = 1e9  # metrics.json and the summary count decimal gigabytes


def peak_rss_bytes() -> int | None:
    """The process's resident-set high-water mark in bytes, or None where the platform does not tell (Windows)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, kibibytes on Linux and the BSDs


def cuda_peak_bytes() -> int | None:
    """torch's peak CUDA allocation on this process's device, or None when CUDA was never used here."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return int(torch.cuda.max_memory_allocated())


def peak_memory_metrics() -> dict[str, float]:
    """`memory/peak_rss_gb` and, where CUDA ran, `memory/peak_cuda_gb` (decimal GB, 3 decimals)."""
    metrics = {}
    for name, peak in (("memory/peak_rss_gb", peak_rss_bytes()), ("memory/peak_cuda_gb", cuda_peak_bytes())):
        if peak is not None:
            metrics[name] = round(peak / GB, 3)
    return metrics


def describe(metrics: dict[str, float]) -> str:
    """The summary's line: `peak memory: 3.21 GB RSS, 11.02 GB CUDA`."""
    parts = [f"{metrics['memory/peak_rss_gb']:.2f} GB RSS"] if "memory/peak_rss_gb" in metrics else []
    if "memory/peak_cuda_gb" in metrics:
        parts.append(f"{metrics['memory/peak_cuda_gb']:.2f} GB CUDA")
    return "peak memory: " + (", ".join(parts) or "not measured on this platform")


def release_training_state(trainer) -> None:
    """After fit: Lightning's strategy keeps the optimizer, and with it AdamW's two float32 copies of every trained
    weight (1.08 GB for the default model), through validate and test, which never use it. Drop it (DeepSpeed's
    engine holds its own), and hand the freed memory back before evaluation."""
    from lightning.pytorch.strategies import DeepSpeedStrategy

    if not isinstance(trainer.strategy, DeepSpeedStrategy):
        trainer.strategy.optimizers = []
        trainer.strategy.lr_scheduler_configs = []
    release_freed_memory()


def release_freed_memory() -> None:
    """Collect garbage and, with glibc, return the heap's free pages to the system (malloc_trim). A phase's freed
    tensors otherwise stay in the process's heap, fragmented, and the next phase's peak stands on top of them."""
    gc.collect()
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


@functools.cache
def _glibc():
    """The C library when it has glibc's malloc_trim (not musl, macOS or Windows), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") else None
