"""model.compile: the training forward compiled for a handful of shapes (widths padded to buckets).

Compiled with dynamic=False, a graph is specialised to its widths: inductor picks kernels and tiles for each, where
dynamic=True compiles one graph with symbolic sizes that serves every padded length less well. So batches are padded
to a few widths (`BUCKET_MULTIPLE`, through the collator's pad_to_multiple_of, as trainer=tpu does for XLA) and each
width pair gets its own graph. Only the batch's row count stays symbolic (`maybe_mark_dynamic`): under
data.max_tokens_per_batch, or in evaluation batches, the rows vary with the widths, and static rows would multiply
the graphs by every row count seen.

Shapes to expect: one graph per (source width, target width) pair a run meets, in training mode and again in eval
mode (the validation loss: dynamo guards on `module.training`), and one more of each for a pair met in a batch of a
single row (dynamo specialises a size of 1): at most 4 per pair. Widths are the multiples of 64 up to each length
limit, plus the limit itself: aclsum's 192 / 96 tokens give 3 x 2 pairs (at most 24 graphs), cnn_dailymail's
512 / 128 give 8 x 2 (at most 64). Batches from
elsewhere (`Seq2SeqModule(compile=True)` on a user's DataLoader) should be padded the same way, e.g.
`encdec.datamodule(..., pad_to_multiple_of=64)`: past RECOMPILE_LIMIT widths, dynamo runs the forward eagerly.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# Multiples of 64 rather than powers of two: a row wastes under 64 padded tokens (powers of two waste up to half of
# a long row), the widths stay multiples of the GPU's matmul tiles, and the count stays small (limit / 64 widths).
BUCKET_MULTIPLE = 64
# dynamo keeps this many graphs per function before running it eagerly (8 by default): 4 per width pair for up to 32
# pairs (1024 / 256-token limits: 16 x 4 pairs, would need more; in practice runs meet far fewer than all pairs).
RECOMPILE_LIMIT = 128
BATCH_KEYS = ("input_ids", "attention_mask", "decoder_input_ids", "decoder_attention_mask")


def bucket_multiple(data, compile: bool) -> int | None:
    """The batch widths' multiple: data.pad_to_multiple_of when set, else BUCKET_MULTIPLE under model.compile."""
    return data.get("pad_to_multiple_of") or (BUCKET_MULTIPLE if compile else None)


def compile_forward(forward: Callable, backend: str | Callable = "inductor") -> Callable:
    """`forward` compiled with static widths (a `backend` callable lets tests record each graph it is handed)."""
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"  # torch < 2.6: the latter
    setattr(config, name, max(getattr(config, name), RECOMPILE_LIMIT))
    return torch.compile(forward, dynamic=False, backend=backend)


def mark_rows_dynamic(inputs: dict) -> dict:
    """Let the row count vary without a new graph; the widths stay static (one graph per bucket)."""
    for key in BATCH_KEYS:
        if inputs.get(key) is not None:
            torch._dynamo.maybe_mark_dynamic(inputs[key], 0)
    return inputs
