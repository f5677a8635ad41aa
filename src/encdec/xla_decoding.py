"""Greedy decoding with static shapes, for XLA (trainer=tpu): `generate`'s greedy tokens without its retracing.

transformers' `generate` grows its inputs by one token per step and runs its logits processors and stopping criteria
with host reads (`unfinished.max() == 0`, n-gram tables), so under XLA every step traces and compiles new small graphs
and waits on the device: a validation of 16 tokens for 2 rows of the tiny pair had not ended after 13 minutes on a
2-core CPU (docs/scaling.md "TPU"). Here every shape is fixed: the encoder runs once, the decoder recomputes the whole
buffer of 1 + max_new_tokens tokens each step (causal attention: position t reads only positions <= t, so the logits
there are those an incremental step gives), the step's position is a device tensor, tokens go in with index_copy_,
rows that ended are masked (pad) instead of stopping early, and each step ends with one XLA sync. All steps are one
graph, compiled once per batch shape. The loop is plain torch: on eager CPU it gives `generate`'s greedy tokens
(tests/test_xla_decoding.py), padded to the full width.

Honoured: max_new_tokens (else max_length - 1), min_new_tokens, no_repeat_ngram_size (as a tensor op over the buffer),
eos_token_id (one or several), pad_token_id, decoder_start_token_id. Beam search, sampling and other processors are
not: they are ignored with one warning, and decoding is greedy.
"""

from __future__ import annotations

import copy
import warnings

import torch

# Settings this loop honours, or that do not change greedy tokens (beam-only and length settings).
_GREEDY_DEFAULTS = {
    "num_beams": (None, 1),
    "do_sample": (None, False),
    "repetition_penalty": (None, 1.0),
    "encoder_repetition_penalty": (None, 1.0),
    "encoder_no_repeat_ngram_size": (None, 0),
    "bad_words_ids": (None,),
    "suppress_tokens": (None,),
    "begin_suppress_tokens": (None,),
    "forced_bos_token_id": (None,),
    "forced_eos_token_id": (None,),
    "sequence_bias": (None,),
    "min_length": (None, 0),
}
_IGNORED = {"synced_gpus", "use_cache", "cache_implementation", "return_dict_in_generate"}


@torch.no_grad()
def greedy_tokens(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, **overrides) -> torch.Tensor:
    """`model.generate(input_ids, attention_mask, **overrides)`'s greedy tokens, shape (rows, 1 + max_new_tokens):
    the decoder start token, then the summary, then pad once a row has ended."""
    config = copy.deepcopy(model.generation_config)
    unused = config.update(**{k: v for k, v in overrides.items() if k not in _IGNORED})
    _warn_unsupported(config, unused)
    new_tokens = config.max_new_tokens or (config.max_length - 1)
    device, rows = input_ids.device, input_ids.shape[0]
    eos = torch.tensor(_as_list(config.eos_token_id), dtype=torch.long, device=device).view(1, -1)
    pad = config.pad_token_id if config.pad_token_id is not None else _as_list(config.eos_token_id)[0]
    start = config.decoder_start_token_id
    if start is None:
        start = config.bos_token_id

    encoder_outputs = model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)
    buffer = torch.full((rows, 1 + new_tokens), pad, dtype=torch.long, device=device)
    buffer[:, 0] = start
    unfinished = torch.ones(rows, dtype=torch.bool, device=device)
    position = torch.zeros((), dtype=torch.long, device=device)  # the last filled position: a tensor, not a constant
    sync = _xla_sync(device)
    encoded = {"encoder_outputs": encoder_outputs, "attention_mask": attention_mask, "use_cache": False}
    for _ in range(new_tokens):
        logits = model(**encoded, decoder_input_ids=buffer).logits
        scores = logits.index_select(1, position.view(1)).squeeze(1).float()
        if config.min_new_tokens:
            early = (position < config.min_new_tokens).view(1, 1)
            banned = torch.zeros_like(scores, dtype=torch.bool).index_fill_(1, eos.view(-1), True)
            scores = scores.masked_fill(banned & early, -float("inf"))
        if config.no_repeat_ngram_size:
            scores = _ban_repeated_ngrams(buffer, position, scores, config.no_repeat_ngram_size)
        chosen = torch.where(unfinished, scores.argmax(-1), pad)
        buffer.index_copy_(1, (position + 1).view(1), chosen.view(rows, 1))
        unfinished = unfinished & ~(chosen.view(rows, 1) == eos).any(-1)
        position = position + 1
        sync()
    return buffer


def _ban_repeated_ngrams(buffer: torch.Tensor, position: torch.Tensor, scores: torch.Tensor, n: int) -> torch.Tensor:
    """transformers' NoRepeatNGramLogitsProcessor over the filled part (positions <= `position`) of a fixed buffer:
    each complete n-gram whose first n-1 tokens equal the last n-1 filled tokens bans its last token."""
    width = buffer.shape[1]
    if width < n:
        return scores
    rows, starts = buffer.shape[0], width - n + 1
    offsets = torch.arange(2 - n, 1, device=buffer.device)  # the last n-1 filled positions
    prefix = buffer.index_select(1, (position + offsets).clamp(min=0))
    # Every window of n tokens, (rows, starts, n), by one gather (unfold has no XLA lowering: a host round trip).
    spans = torch.arange(starts, device=buffer.device).view(-1, 1) + torch.arange(n, device=buffer.device)
    windows = buffer.index_select(1, spans.flatten()).view(rows, starts, n)
    complete = torch.arange(starts, device=buffer.device) <= position + 1 - n
    matches = (windows[..., :-1] == prefix.unsqueeze(1)).all(-1) & complete
    vocab = scores.shape[-1]
    banned = torch.zeros((scores.shape[0], vocab + 1), dtype=torch.bool, device=scores.device)
    banned.scatter_(1, torch.where(matches, windows[..., -1].clamp(max=vocab), vocab), True)
    return scores.masked_fill(banned[:, :vocab], -float("inf"))


def _warn_unsupported(config, unused: dict) -> None:
    """One warning naming the settings this loop does not apply (it decodes greedily all the same)."""
    ignored = sorted(unused)
    for key, neutral in _GREEDY_DEFAULTS.items():
        value = getattr(config, key, None)
        if value not in neutral and not (isinstance(value, (list, dict)) and not value):
            ignored.append(f"{key}={value}")
    if ignored:
        warnings.warn(
            f"XLA decodes greedily with static shapes (encdec.xla_decoding): ignored {', '.join(ignored)}",
            stacklevel=3,
        )


def _as_list(value) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


def _xla_sync(device: torch.device):
    """One XLA graph per decoding step (torch_xla.sync), or nothing off XLA."""
    if device.type != "xla":
        return lambda: None
    import torch_xla

    return torch_xla.sync
