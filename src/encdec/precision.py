"""trainer.precision=auto: bf16-mixed where the hardware multiplies bf16 natively, 32-true where bf16 would be slower.

On a CPU, bf16 pays only with AMX (Intel Sapphire Rapids and later: `amx_bf16` in /proc/cpuinfo), where oneDNN's bf16
matrix multiplies run in the tile unit: the default model trains 1.9x faster than in fp32 there (docs/scaling.md,
"Precision"). Without AMX, bf16 is emulated or converted per instruction and runs up to ~15x slower than fp32 (AVX2
machines), so auto keeps fp32 there. On CUDA, bf16-mixed wherever the GPU computes in bf16 (Ampere and later).
"""

from __future__ import annotations

from pathlib import Path

AUTO = "auto"


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The first processor's feature flags; empty where /proc/cpuinfo does not exist (macOS, Windows)."""
    try:
        lines = cpuinfo.read_text().splitlines()
    except OSError:
        return frozenset()
    for line in lines:
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def resolve(precision, accelerator) -> tuple[str, str | None]:
    """(the precision Lightning gets, why; None when the user named one)."""
    if str(precision) != AUTO:
        return precision, None
    import torch

    accelerator = str(accelerator)
    on_cuda = accelerator in ("gpu", "cuda") or (accelerator == AUTO and torch.cuda.is_available())
    if on_cuda:
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return "bf16-mixed", "this GPU computes in bf16"
        return "32-true", "this GPU has no bf16"
    if accelerator not in ("cpu", AUTO):
        return "32-true", f"trainer.accelerator={accelerator} is neither a CPU nor a CUDA GPU"
    if "amx_bf16" in cpu_flags():
        return "bf16-mixed", "this CPU multiplies bf16 in hardware (AMX)"
    return "32-true", "this CPU has no AMX, where bf16 runs slower than fp32"


def apply_auto(trainer_cfg) -> str | None:
    """trainer.precision=auto replaced in `trainer_cfg` by what it resolves to; the line that says so, or None."""
    precision, why = resolve(trainer_cfg.get("precision"), trainer_cfg.get("accelerator"))
    if why is None:
        return None
    trainer_cfg.precision = precision
    return f"trainer.precision=auto: {precision} ({why})"
