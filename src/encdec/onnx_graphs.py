"""The two modules `export.py format=onnx` traces, with the decoder's KV cache as plain tensors in and out.

- `EncoderGraph`: the source -> `encoder_hidden_states` and what the decoder reads of it besides, computed once per
  batch: every cross-attention layer's keys/values (`cross.{j}.key`/`.value`), as `generate` fills the cross half of
  its cache at step 0; or, for a decoder whose self-attention cache starts with the source (the prefix-style pairing
  kinds), that cache before the first summary token (`past.{i}.key`/`.value`).
- `DecoderStepGraph`: one new token per row, the self-attention cache so far (`past.{i}.key`/`.value`) and the
  cross-attention keys/values -> the next token's logits and the grown cache (`present.{i}.key`/`.value`);
  `SourcePrefixStepGraph` the same for a prefix-style decoder, whose past starts with the source: it reads the source
  mask and that past only.

One decoder graph serves every step, the first included. The dynamo exporter cannot trace an empty past as a dynamic
input (it specialises size-0 dimensions), and the usual way round it, a second decoder graph for step 0 (optimum's
decoder_model.onnx + decoder_with_past_model.onnx), stores the decoder's weights twice. A cross-attention decoder's
runner starts the self-attention cache with one slot of zeros that the graph masks out (optimum's merged decoders feed
the same kind of dummy past at step 0), and its cross-attention projections run in the encoder graph; a prefix-style
decoder's past is never empty, since it starts with the source. A kind's decoder says it is prefix-style by having
`source_cache(encoder_hidden_states, source_mask) -> Cache` (the hook `encdec.prefix_attention` defines for the kinds
built on it): the encoder graph calls it, and the decoder's own forward continues the cache (its positions and mask
over source and summary), so this module names no kind.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.cache_utils import DynamicCache, EncoderDecoderCache

from encdec import pairings
from encdec.errors import EncdecError


def check_supported(model) -> None:
    """Decoders the graphs know how to carry: transformers' own cross-attention decoders (BERT, GPT-2, ...) and the
    pairing kinds marked `onnx` in `encdec.pairings` (encdec's gated cross-attention). Any other kind is refused by
    name rather than traced on a guess."""
    kinds = [
        pairings.kind_of_model_type(getattr(side, "model_type", None))
        for side in (model.config.encoder, model.config.decoder)
    ]
    unsupported = next((kind for kind in kinds if kind is not None and not kind.onnx), None)
    if unsupported is not None:
        supported = ", ".join(kind.name for kind in pairings.KINDS.values() if kind.onnx)
        raise EncdecError(
            f"format=onnx: the ONNX export does not support the {unsupported.name} pairing kind yet (it carries "
            f"a decoder's own cross-attention or these kinds: {supported}): use format=hf, or train with "
            "decoder.cross_attention.kind=gated"
        )


def reads_source_cache(model) -> bool:
    """Whether the decoder's self-attention cache starts with the source (its pairing kind's `source_cache` hook)."""
    return callable(getattr(model.decoder, "source_cache", None))


def cache_layout(model) -> tuple[list[tuple[int, int]], list[int]]:
    """The (heads, head size) of each self-attention layer the decoder caches, and which layers keep cross-attention
    keys/values (every layer for BERT and GPT-2, those with a block for encdec's cross-attention; none for a decoder
    whose self-attention cache starts with the source): found by running one decoder step as `generate` does, so any
    decoder is measured rather than assumed."""
    source = 2
    with torch.no_grad():
        _, cache = _first_step(model, torch.tensor([[1] * source]), torch.ones(1, source, dtype=torch.long))
    kind = model.config.decoder.model_type
    cross_layers = [index for index, layer in enumerate(cache.cross_attention_cache.layers) if _filled(layer)]
    length = cache.self_attention_cache.get_seq_length()
    if reads_source_cache(model):
        if cross_layers or length != source + 1:
            raise EncdecError(
                f"format=onnx: the {kind} decoder reads the source from its self-attention cache, but after a "
                f"{source}-token source and one token that cache holds {length} positions and {len(cross_layers)} "
                f"cross-attention layers keep keys/values (expected {source + 1} and none): the ONNX export would "
                "carry its cache wrongly"
            )
        return [(layer.keys.shape[1], layer.keys.shape[-1]) for layer in cache.self_attention_cache.layers], []
    if not cross_layers:
        raise EncdecError(
            f"format=onnx: the {kind} decoder keeps no cross-attention keys/values in its cache, which "
            "the ONNX export carries between steps: export a decoder with cross-attention (BERT, "
            "RoBERTa, GPT-2, encdec's gated cross-attention)"
        )
    if length != 1:
        raise EncdecError(
            f"format=onnx: the {kind} decoder's self-attention cache holds {length} positions after one token (a "
            "decoder mode that puts the source there, without a `source_cache` hook?): the ONNX export supports "
            "cross-attention decoders and pairing kinds with that hook only"
        )
    return [(layer.keys.shape[1], layer.keys.shape[-1]) for layer in cache.self_attention_cache.layers], cross_layers


def _filled(layer) -> bool:
    return getattr(layer, "keys", None) is not None and layer.keys.numel() > 0


def _first_step(model, input_ids, attention_mask) -> tuple[torch.Tensor, EncoderDecoderCache]:
    """The encoder states, and the cache after the decoder's first step as `generate` leaves it (its cross half is
    what the runner needs)."""
    states = _encoder_states(model, input_ids, attention_mask)
    start = torch.full_like(input_ids[:, :1], model.generation_config.decoder_start_token_id)
    cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
    model.decoder(
        input_ids=start,
        position_ids=torch.zeros_like(start),
        encoder_hidden_states=states,
        encoder_attention_mask=attention_mask,
        cache=cache,
        use_cache=True,
    )
    return states, cache


def _encoder_states(model, input_ids, attention_mask) -> torch.Tensor:
    states = model.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    if getattr(model, "enc_to_dec_proj", None) is not None:
        states = model.enc_to_dec_proj(states)
    return states


class EncoderGraph(nn.Module):
    def __init__(self, model, cross_layers: list[int]):
        super().__init__()
        self.model, self.cross_layers = model, cross_layers

    def forward(self, input_ids, attention_mask):
        if reads_source_cache(self.model):
            # The source's self-attention keys/values, as the decoder's first step fills them; the graph holds the
            # decoder weights that takes, if any (none for `prefix`, which unpacks what the encoder handed over).
            states = _encoder_states(self.model, input_ids, attention_mask)
            cache = self.model.decoder.source_cache(states, attention_mask)
            return states, *(tensor for layer in cache.layers for tensor in (layer.keys, layer.values))
        # The whole first decoder step is traced, but only its cross-attention projections reach an output; the
        # exporter drops the rest (the graph holds no decoder weight besides those projections).
        states, cache = _first_step(self.model, input_ids, attention_mask)
        layers = cache.cross_attention_cache.layers
        return states, *(tensor for index in self.cross_layers for tensor in (layers[index].keys, layers[index].values))


class DecoderStepGraph(nn.Module):
    def __init__(self, model, self_layers: int, cross_layers: list[int]):
        super().__init__()
        self.decoder = model.decoder
        self.self_layers, self.cross_layers = self_layers, cross_layers

    def forward(self, input_ids, encoder_hidden_states, encoder_attention_mask, *past):
        self_past, cross = past[: 2 * self.self_layers], past[2 * self.self_layers :]
        self_cache, cross_cache = DynamicCache(), DynamicCache()
        for index in range(self.self_layers):
            self_cache.update(self_past[2 * index], self_past[2 * index + 1], index)
        for position, index in enumerate(self.cross_layers):
            cross_cache.update(cross[2 * position], cross[2 * position + 1], index)
        cache = EncoderDecoderCache(self_cache, cross_cache)
        cache.is_updated = {index: index in self.cross_layers for index in range(len(cross_cache.layers))}
        # Slot 0 of the past is the runner's placeholder: masked out, and not counted in the new token's position.
        # Explicit positions also keep BERT from slicing its position buffer by the cache length, which the exporter
        # turns into a symbolic is_causal flag that SDPA cannot take.
        batch, past_length = input_ids.shape[0], self_past[0].shape[2]
        attention_mask = torch.cat(
            [
                torch.zeros(batch, 1, dtype=torch.long, device=input_ids.device),
                torch.ones(batch, past_length, dtype=torch.long, device=input_ids.device),
            ],
            dim=1,
        )
        positions = torch.full_like(input_ids, past_length - 1)
        # encoder_hidden_states is read for its shape only (the cross-attention keys/values come from the cache), as
        # the decoders want it there to take their cross-attention path at all.
        outputs = self.decoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=positions,
            encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask,
            cache=cache,
            use_cache=True,
        )
        layers = cache.self_attention_cache.layers
        return outputs.logits[:, -1, :], *(
            tensor for index in range(self.self_layers) for tensor in (layers[index].keys, layers[index].values)
        )


class SourcePrefixStepGraph(nn.Module):
    """`DecoderStepGraph` for a decoder whose self-attention cache starts with the source (`reads_source_cache`): one
    new token per row, the source mask and the cache so far (the source, then the summary) -> the next token's logits
    and the grown cache. No cross-attention keys/values, and no encoder states: once its cache holds the source, the
    decoder reads `encoder_hidden_states` for its batch and source sizes only (`PrefixDecoderForCausalLM._read_source`),
    so the graph hands it the source mask's shape in their place, and its own forward finds the new token's position
    and the mask over source and summary, as under `generate`."""

    def __init__(self, model, self_layers: int):
        super().__init__()
        self.decoder = model.decoder
        self.self_layers = self_layers

    def forward(self, input_ids, encoder_attention_mask, *past):
        cache = DynamicCache()
        for index in range(self.self_layers):
            cache.update(past[2 * index], past[2 * index + 1], index)
        outputs = self.decoder(
            input_ids=input_ids,
            encoder_hidden_states=encoder_attention_mask[:, :, None],
            encoder_attention_mask=encoder_attention_mask,
            cache=cache,
            use_cache=True,
        )
        return outputs.logits[:, -1, :], *(tensor for layer in cache.layers for tensor in (layer.keys, layer.values))
