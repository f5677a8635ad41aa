"""The training loss without the full logits (model.fused_loss): the decoder's LM head is applied chunk by chunk.

The plain loss holds batch x target x vocab logits and their float32 copy (SmolLM2: 49k vocabulary, the largest
tensors of a step on a GPU). Here the model runs to the hidden states its LM head reads (the head's last linear is
the identity during the forward: BERT's transform, dense+GELU+LayerNorm, still runs, since it comes before that
linear), only the positions with a label are kept, and the cross-entropy is summed over chunks of `chunk_tokens`
of them. Each chunk's logits are made (in the head's dtype, then float32 as in the plain loss), reduced to a sum
and freed; backward recomputes them one chunk at a time (activation checkpointing), so one chunk of logits is
alive at any time. The sum over chunks divided by the labelled tokens is the plain loss, mean over non-ignored.

Validation and test always take the chunked path where the head allows it (Seq2SeqModule.evaluation_loss): without
gradients nothing is recomputed, so it costs nothing and spares the logits of the padded positions.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from encdec.data.tokenize import IGNORE_INDEX
from encdec.errors import EncdecError

# Families that change the logits after the LM head (Gemma 2/3 soft-capping, Cohere's scale, Granite's divisor):
# with the head as the identity, the change would fall on the hidden states.
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def _identity(hidden: torch.Tensor) -> torch.Tensor:
    # One function for every call, so a compiled forward sees the same head each time (no recompiles).
    return hidden


def lm_head(model: torch.nn.Module) -> torch.nn.Linear:
    """The decoder's output projection (its weight may be tied to the input embeddings; BERT's has a bias)."""
    head = model.decoder.get_output_embeddings()
    config = model.decoder.config
    config = getattr(config, "base_config", None) or config  # encdec's wrappers keep the LM's config there
    transforms = [name for name in LOGIT_TRANSFORMS if getattr(config, name, None) not in (None, 1, 1.0)]
    if not isinstance(head, torch.nn.Linear) or transforms:
        reason = f"changes its logits after the LM head ({transforms[0]})" if transforms else "has no linear LM head"
        raise EncdecError(f"model.fused_loss=true: the {config.model_type} decoder {reason}; set it false")
    return head


@contextlib.contextmanager
def hidden_states_out(head: torch.nn.Module):
    """While inside, `head` returns its input: the model's `logits` are the states the head would project."""
    head.forward = _identity
    try:
        yield
    finally:
        del head.forward  # the class's forward again


def _chunk_loss(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, labels: torch.Tensor):
    logits = F.linear(hidden, weight, bias)
    return F.cross_entropy(logits.float(), labels, reduction="sum")


def summed_cross_entropy(
    hidden: torch.Tensor, head: torch.nn.Linear, labels: torch.Tensor, chunk_tokens: int
) -> torch.Tensor:
    """`F.cross_entropy(head(hidden).float(), labels, ignore_index=IGNORE_INDEX, reduction="sum")`, holding at most
    `chunk_tokens` rows of logits at once in forward and in backward. Without gradients (evaluation) each chunk is
    computed once and freed; with them, backward recomputes it (activation checkpointing)."""
    keep = labels.flatten() != IGNORE_INDEX
    hidden = hidden.flatten(0, -2)[keep]
    labels = labels.flatten()[keep]
    total = hidden[:0].sum(dtype=torch.float32)  # 0, in the graph even when no position has a label
    recompute = torch.is_grad_enabled() and (hidden.requires_grad or head.weight.requires_grad)
    for hidden_chunk, label_chunk in zip(hidden.split(chunk_tokens), labels.split(chunk_tokens)):
        if recompute:
            chunk = checkpoint(_chunk_loss, hidden_chunk, head.weight, head.bias, label_chunk, use_reentrant=False)
        else:
            chunk = _chunk_loss(hidden_chunk, head.weight, head.bias, label_chunk)
        total = total + chunk
    return total


def chunked_cross_entropy(
    hidden: torch.Tensor, head: torch.nn.Linear, labels: torch.Tensor, chunk_tokens: int
) -> torch.Tensor:
    """`F.cross_entropy(head(hidden).float(), labels, ignore_index=IGNORE_INDEX)` (mean over labelled positions),
    holding at most `chunk_tokens` rows of logits at once in forward and in backward."""
    return summed_cross_entropy(hidden, head, labels, chunk_tokens) / (labels != IGNORE_INDEX).sum()
