"""The clock of one training run (Steps: tokens and end time per step), its warm-up, and the FLOPs and MFU of a
step (bench/train_throughput.py --device cuda)."""

from __future__ import annotations

import time

from encdec.data.tokenize import IGNORE_INDEX


class Steps:
    """Per-step token counts and end times; tokens are counted from the batches the model actually got.

    The first `skip` steps run untimed (torch.compile's compilation, cuDNN or allocator warm-up): the clock starts at
    step `skip`, and only the steps after it count. With `exclude_new_widths` (+compile runs) a timed step whose
    (source, target) width pair no earlier step had (so its graph compiles now) is bracketed by syncs and left out of
    the clock and the tokens: tokens/s is the steady state a long run reaches once each width bucket has its graph,
    and `compile_seconds_in_timed_steps` says what the left-out compilations cost. `max_wall_seconds` (+compile runs)
    also stops the run that long after its first step, compilations included, once it has 5 steady seconds: one graph
    per width bucket can take minutes to compile, more than a bounded GPU call has.
    """

    def __init__(
        self,
        device: str = "cpu",
        max_seconds: float | None = None,
        skip: int = 0,
        exclude_new_widths: bool = False,
        max_wall_seconds: float | None = None,
    ):
        self.batches: list[dict] = []
        self.starts: list[float] = []
        self.ends: list[float] = []
        self.device = device
        self.max_seconds = max_seconds
        self.skip = skip
        self.capped = False
        self.exclude_new_widths = exclude_new_widths
        self.seen: set = set()
        self.excluded: list[int] = []
        self.excluded_seconds = 0.0
        self._excluding = False
        self.max_wall_seconds = max_wall_seconds
        self.wall_capped = False

    def _sync(self) -> None:
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()

    def start(self) -> None:
        step = len(self.starts)
        widths = self.batches[step]["widths"] if len(self.batches) > step else None
        new = widths is not None and widths not in self.seen
        self.seen.add(widths)
        self._excluding = self.exclude_new_widths and new and step >= self.skip
        if step == self.skip or self._excluding:
            self._sync()  # the clock starts with an idle GPU (warm-up, FLOP count and skipped steps finished)
        self.starts.append(time.perf_counter())

    def end(self, last: bool) -> bool:
        """Stamp a step's end; True when --max-seconds says stop after this step. On CUDA only the final end waits for
        the GPU: a sync per step would stop the CPU from queueing ahead, as it does in real training."""
        if self._excluding:  # a compiling step: its whole time (host and GPU) leaves the clock
            self._sync()
            self.excluded_seconds += time.perf_counter() - self.starts[-1]
            self.excluded.append(len(self.ends))
            self._excluding = False
        now = time.perf_counter()
        timed = len(self.ends) >= self.skip
        elapsed = now - self.starts[self.skip] - self.excluded_seconds if timed else 0.0
        capped = timed and self.max_seconds is not None and elapsed >= self.max_seconds
        # The wall cap waits for a few steady seconds (5, or --max-seconds if less): a tokens/s over 100-odd steps.
        steady = min(5.0, self.max_seconds or 5.0)
        walled = timed and self.max_wall_seconds is not None and elapsed >= steady
        walled = walled and now - self.starts[0] >= self.max_wall_seconds
        stop = capped or walled
        if last or stop:
            self._sync()
            now = time.perf_counter()
        self.ends.append(now)
        self.capped = self.capped or (capped and not last)
        self.wall_capped = self.wall_capped or (walled and not last)
        return stop

    def count(self, batch) -> None:
        mask, labels = batch["attention_mask"], batch["labels"]
        self.batches.append(
            {
                "rows": int(labels.shape[0]),
                "source": int(mask.sum()),
                "target": int((labels != IGNORE_INDEX).sum()),
                "padded": int(mask.numel() + labels.numel()),
                "widths": (int(mask.shape[1]), int(labels.shape[1])),
            }
        )

    def summary(self) -> dict:
        if len(self.ends) <= self.skip:
            raise SystemExit(f"--skip-steps {self.skip}: the run had only {len(self.ends)} steps")
        excluded = set(self.excluded)
        timed = [i for i in range(self.skip, len(self.ends)) if i not in excluded]
        if not timed:
            raise SystemExit(f"every timed step compiled a new width pair ({len(excluded)}): run longer")
        steps = len(timed)
        batches = [self.batches[i] for i in timed]
        seconds = self.ends[-1] - self.starts[self.skip] - self.excluded_seconds
        source = sum(b["source"] for b in batches)
        target = sum(b["target"] for b in batches)
        padded = sum(b["padded"] for b in batches)
        # Width pairs (source, target): under +compile each new pair compiles a graph, so a pair first met in a timed
        # step puts a compilation inside the clock (raise --compile-skip-steps when this is not 0).
        seen = {b["widths"] for b in self.batches[: self.skip]}
        new_timed = 0
        for b in self.batches[self.skip : len(self.ends)]:
            new_timed += b["widths"] not in seen
            seen.add(b["widths"])
        return {
            "steps": steps,
            "seconds": round(seconds, 2),
            "s_per_step": round(seconds / steps, 3),
            "rows_per_step": round(sum(b["rows"] for b in batches) / steps, 2),
            "real_tokens": source + target,
            "target_tokens": target,
            "padded_tokens": padded,
            "padding_fraction": round(1 - (source + target) / padded, 4),
            "tokens_per_s": round((source + target) / seconds, 1),
            "target_tokens_per_s": round(target / seconds, 1),
            "width_pairs": len(seen),
            "new_width_pairs_in_timed_steps": new_timed,
            **({"untimed_first_steps": self.skip} if self.skip else {}),
            **({"untimed_seconds": round(self.starts[self.skip] - self.starts[0], 2)} if self.skip else {}),
            **(
                {
                    "compile_steps_left_out": len(excluded),
                    "compile_seconds_in_timed_steps": round(self.excluded_seconds, 2),
                }
                if self.exclude_new_widths
                else {}
            ),
            **({"capped_by_max_seconds": self.capped} if self.max_seconds is not None else {}),
            **({"capped_by_compile_max_seconds": self.wall_capped} if self.max_wall_seconds is not None else {}),
        }


def autocast(device: str, precision: str):
    """torch.autocast for a *-mixed precision (what Lightning and Seq2SeqTrainer wrap the forward in), else nothing."""
    import contextlib

    import torch

    if not precision.endswith("-mixed"):
        return contextlib.nullcontext()
    return torch.autocast(device, dtype=torch.bfloat16 if precision.startswith("bf16") else torch.float16)


def warm_up(model, device: str = "cpu", precision: str = "32-true") -> None:
    """One untimed forward/backward so that first-call costs (allocator, kernels) hit no timed step."""
    import torch

    ids = torch.full((2, 64), 1000, device=device)
    with autocast(device, precision):
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), decoder_input_ids=ids[:, :16], use_cache=False)
    out.logits.float().mean().backward()
    model.zero_grad(set_to_none=True)


def representative_batch(rows: list[dict], batch_size: int, pad: int, start: int, device: str) -> dict:
    """batch_size rows around the median source length, collated by encdec's collate (right padding)."""
    from encdec.data.tokenize import Seq2SeqCollator

    ordered = sorted(rows, key=lambda r: (len(r["input_ids"]), len(r["labels"])))
    first = max(0, min(len(ordered) // 2 - batch_size // 2, len(ordered) - batch_size))
    chosen = ordered[first : first + batch_size]
    longest = max(len(r["input_ids"]) + len(r["labels"]) for r in chosen)
    batch = Seq2SeqCollator(pad, pad, start, longest, longest)(chosen)
    return {k: v.to(device) for k, v in batch.items()}


def count_step_flops(model, batch: dict, device: str, precision: str) -> dict:
    """FLOPs of one real training step (forward + backward, encdec's loss) on `batch`, by FlopCounterMode.

    FlopCounterMode counts matmuls (mm/addmm/bmm/baddbmm) and fused attention kernels (SDPA flash/efficient/cuDNN)
    by their shapes, so the count is what runs on padded tensors: attention at full length (causal masks are not
    halved), nothing for elementwise ops, norms, softmax or the optimizer. On CPU, SDPA's CPU kernel is not counted
    (a few % of the total); on CUDA it is.
    """
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        with autocast(device, precision):
            logits = model(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                decoder_input_ids=batch["decoder_input_ids"],
                decoder_attention_mask=batch["decoder_attention_mask"],
                use_cache=False,
            ).logits
        loss = F.cross_entropy(logits.float().flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE_INDEX)
        loss.backward()
    model.zero_grad(set_to_none=True)
    flops = int(counter.get_total_flops())
    rows, source = batch["input_ids"].shape
    target = batch["labels"].shape[1]
    padded = rows * (source + target)
    real = int(batch["attention_mask"].sum()) + int((batch["labels"] != IGNORE_INDEX).sum())
    del logits, loss
    if device == "cuda":
        torch.cuda.synchronize()
    return {
        "flop_count_batch": [int(rows), int(source), int(target)],
        "flops_per_step": flops,
        "flops_per_padded_token": flops / padded,
        "flops_per_real_token_of_that_batch": flops / real,
    }


def mfu_fields(summary: dict, flops: dict, peak_tflops: float) -> dict:
    """Executed FLOP/s = FLOPs per padded token x padded tokens / s (padding costs FLOPs too); useful = the same rate
    on non-pad tokens only. MFU = FLOP/s / peak."""
    per_token = flops["flops_per_padded_token"]
    executed = per_token * summary["padded_tokens"] / summary["seconds"] / 1e12
    useful = per_token * summary["real_tokens"] / summary["seconds"] / 1e12
    return {
        "achieved_tflops": round(executed, 3),
        "useful_tflops": round(useful, 3),
        "peak_tflops": peak_tflops,
        "mfu": round(executed / peak_tflops, 4),
        "useful_mfu": round(useful / peak_tflops, 4),
    }
