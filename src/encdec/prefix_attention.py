"""Layer-aligned cross-attention: the decoder's own self-attention reads the encoder's keys and values as a prefix.

With a decoder-only LM (Llama, Qwen2, SmolLM2, ...) on both sides, the encoder runs the LM causally over the source and
hands over, for every layer, the keys and values its self-attention computed (rotary positions applied). The decoder
puts them in front of its self-attention cache and continues: each target position attends to the source tokens of
its own layer and to the summary so far, with positions counting on from the end of its source. No parameter is new,
so at step 0 the pair computes exactly what the pretrained LM computes on `[document; summary]`: a language model
already reading its source, where random or gated cross-attention first has to learn to (bench/README.md, "Learning
curves"). Encoder and decoder keep separate weights (or share them with `model.share_weights=true`), so fine-tuning
may move them apart, as an encoder-decoder does.

`EncoderDecoderModel` hands the decoder one tensor, `encoder_hidden_states`; the encoder packs its per-layer keys and
values into it as `[batch, source, layers * 2 * kv_heads * head_dim]`. The encoder's `hidden_size` stays the LM's, so
`EncoderDecoderModel` adds no projection; `generate` repeats the packed tensor per beam like any encoder output.

Both classes are registered with transformers' Auto classes when this module is imported (`import encdec` does), so
a saved model reloads with `EncoderDecoderModel.from_pretrained(folder)`.
"""

from __future__ import annotations

import copy

import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer, EncoderDecoderCache
from transformers.modeling_outputs import BaseModelOutput, CausalLMOutputWithCrossAttentions
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_FOR_MASKED_LM_MAPPING

from encdec.cross_attention import CrossAttentionDecoderConfig
from encdec.cross_attention_base import WrappedCausalLM, WrappedLM

# What the decoder's self-attention must share with the encoder's to read its cache.
_SAME_SIZES = ("num_hidden_layers", "num_key_value_heads", "head_dim", "hidden_size")
ENCODER_TYPE = "encdec_prefix_encoder"
DECODER_TYPE = "encdec_prefix_decoder"


class PrefixEncoderConfig(CrossAttentionDecoderConfig):
    """Config of a decoder-only LM run as an encoder that hands over its per-layer keys and values (`base_config`:
    the LM's config, its fields mirrored at top level, as for encdec's gated decoder, whose unused `cross_attention_*`
    fields it inherits)."""

    model_type = ENCODER_TYPE
    is_decoder: bool = False
    add_cross_attention: bool = False


class PrefixDecoderConfig(CrossAttentionDecoderConfig):
    """Config of a decoder-only LM that reads the encoder's per-layer keys and values through its own self-attention."""

    model_type = DECODER_TYPE


def packed_width(config) -> int:
    """The width of the packed keys and values: every layer's keys and values, all key/value heads."""
    return config.num_hidden_layers * 2 * config.num_key_value_heads * config.head_dim


def pack_keys_values(cache: Cache) -> torch.Tensor:
    """A filled cache's keys and values of every layer as one `[batch, source, layers * 2 * kv_heads * head_dim]`.

    Without gradients (a frozen encoder, evaluation, generation) each layer is copied into the result and dropped
    from the cache at once, so the packed copy is never held beside the whole cache and per-layer stacks (three
    copies before: 1.3 GB for 50 aclsum papers through SmolLM2). Same values; the stacking path stays for autograd
    and for ONNX tracing."""
    tracing = torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
    if not tracing and not any(layer.keys.requires_grad for layer in cache.layers):
        return _pack_releasing(cache)
    # Each layer's keys/values: [batch, kv_heads, source, head_dim] -> [batch, source, 2, kv_heads, head_dim].
    per_layer = [torch.stack((layer.keys, layer.values), dim=1).permute(0, 3, 1, 2, 4) for layer in cache.layers]
    batch, source = per_layer[0].shape[:2]
    return torch.stack(per_layer, dim=2).reshape(batch, source, -1)


def _pack_releasing(cache: Cache) -> torch.Tensor:
    first = cache.layers[0].keys
    batch, kv_heads, source, head_dim = first.shape
    packed = first.new_empty(batch, source, len(cache.layers), 2, kv_heads, head_dim)
    for index, layer in enumerate(cache.layers):
        packed[:, :, index, 0] = layer.keys.transpose(1, 2)
        packed[:, :, index, 1] = layer.values.transpose(1, 2)
        layer.keys = layer.values = None
    return packed.view(batch, source, -1)


def unpack_keys_values(packed: torch.Tensor, config) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Inverse of `pack_keys_values`: per layer, keys and values as `[batch, kv_heads, source, head_dim]`."""
    batch, source, width = packed.shape
    if width != packed_width(config):
        raise ValueError(
            f"the encoder handed over {width} values per source token, the decoder reads {packed_width(config)} "
            f"({config.num_hidden_layers} layers x 2 x {config.num_key_value_heads} kv heads x {config.head_dim}): "
            "prefix cross-attention needs the same architecture and sizes on both sides"
        )
    layers = packed.view(batch, source, config.num_hidden_layers, 2, config.num_key_value_heads, config.head_dim)
    layers = layers.permute(2, 3, 0, 4, 1, 5)  # [layers, 2, batch, kv_heads, source, head_dim]
    return [(layer[0], layer[1]) for layer in layers]


def continue_positions(source_mask: torch.Tensor) -> torch.Tensor:
    """Per row, the position after its last source token: where its summary starts (right or left padding)."""
    positions = torch.arange(1, source_mask.shape[1] + 1, device=source_mask.device)
    return (source_mask.to(positions.dtype) * positions).amax(dim=1)


class PrefixEncoderModel(WrappedLM):
    """A decoder-only LM's base model (`self.model`) run causally over the source; its output is the packed keys and
    values of every layer (`pack_keys_values`), not hidden states."""

    config_class = PrefixEncoderConfig
    config: PrefixEncoderConfig
    base_model_prefix = "model"

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, **kwargs) -> BaseModelOutput:
        for unused in ("return_dict", "output_attentions", "output_hidden_states", "token_type_ids"):
            kwargs.pop(unused, None)
        # A plain cache, not one built from the config: a sliding-window layer would crop a long source.
        cache = DynamicCache()
        self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            use_cache=True,
            **{self._cache_argument: cache},
            **kwargs,
        )
        return BaseModelOutput(last_hidden_state=pack_keys_values(cache))


class PrefixDecoderForCausalLM(WrappedCausalLM):
    """A pretrained causal LM (`self.lm`) whose self-attention cache starts with the encoder's keys and values."""

    config_class = PrefixDecoderConfig
    config: PrefixDecoderConfig

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        position_ids: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithCrossAttentions:
        cache = kwargs.pop("cache", None)
        cache = kwargs.pop("past_key_values", None) if cache is None else cache
        for unused in ("cache_position", "return_dict", "output_attentions"):
            kwargs.pop(unused, None)
        use_cache = use_cache if use_cache is not None else self.config.use_cache
        self_cache = cache.self_attention_cache if isinstance(cache, EncoderDecoderCache) else cache
        if encoder_hidden_states is not None:
            if self_cache is None:
                self_cache = DynamicCache()
            attention_mask, position_ids = self._read_source(
                self_cache,
                encoder_hidden_states,
                encoder_attention_mask,
                attention_mask,
                position_ids,
                input_ids if input_ids is not None else inputs_embeds,
            )
        outputs = self.lm(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            labels=labels,
            **{self._cache_argument: self_cache},
            use_cache=use_cache or encoder_hidden_states is not None,
            logits_to_keep=logits_to_keep,
            return_dict=True,
            **kwargs,
        )
        return CausalLMOutputWithCrossAttentions(
            loss=outputs.loss,
            logits=outputs.logits,
            cache=(cache if cache is not None else self_cache) if use_cache else None,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    def _read_source(self, cache, encoder_hidden_states, source_mask, target_mask, position_ids, inputs):
        """Fill an empty cache with the source's keys and values; the attention mask and positions over both."""
        batch, source = encoder_hidden_states.shape[:2]
        if source_mask is None:
            source_mask = torch.ones(batch, source, dtype=torch.long, device=encoder_hidden_states.device)
        if cache.get_seq_length() == 0:
            if inputs.shape[1] == 1 and not torch.is_grad_enabled():
                reserve_room(cache)  # generation: one token a step follows
            self._fill_cache(cache, encoder_hidden_states, source_mask)
        done = cache.get_seq_length() - source  # summary tokens already in the cache (generation)
        length = inputs.shape[1]
        if target_mask is None:
            target_mask = torch.ones(batch, done + length, dtype=source_mask.dtype, device=source_mask.device)
        elif target_mask.shape[1] == length and done > 0:
            target_mask = torch.cat([target_mask.new_ones(batch, done), target_mask], dim=1)
        if position_ids is None:
            steps = torch.arange(done, done + length, device=source_mask.device)
            position_ids = continue_positions(source_mask)[:, None] + steps
        return torch.cat([source_mask, target_mask.to(source_mask.dtype)], dim=1), position_ids

    def source_cache(self, encoder_hidden_states: torch.Tensor, source_mask: torch.Tensor) -> DynamicCache:
        """The self-attention cache before the first summary token: the source's keys and values alone. The ONNX
        export's encoder graph computes it once per batch; its decoder graph continues it (`encdec.onnx_graphs`)."""
        cache = DynamicCache()
        self._fill_cache(cache, encoder_hidden_states, source_mask)
        return cache

    def _fill_cache(self, cache: Cache, encoder_hidden_states: torch.Tensor, source_mask: torch.Tensor) -> None:
        """The source's keys and values into the empty cache: here unpacked from what the encoder handed over."""
        for layer_index, (keys, values) in enumerate(unpack_keys_values(encoder_hidden_states, self.config)):
            cache.update(keys, values, layer_index)


class ReservedLayer(DynamicLayer):
    """A `DynamicLayer` that appends in place into room reserved behind its keys and values, where `DynamicLayer`
    concatenates: each generated token would otherwise copy the whole cache, source included (for 50 aclsum papers
    through SmolLM2, 0.4-0.7 GB a step). The room doubles when it runs out; after beam search reorders, repeats or
    crops the cache (new tensors), the next update reserves anew. Keys and values are views of the room holding the
    same values as `DynamicLayer`'s, so attention reads the same numbers."""

    def __init__(self, reserve: int = 128):
        super().__init__()
        self.reserve = reserve
        self._room: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # keys' room, values' room, view

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        length = self.get_seq_length()
        end = length + key_states.shape[-2]
        room = self._room
        ours = room is not None and self.keys is room[2]  # nothing replaced the tensors since our last update
        if ours and room[0].shape[-2] >= end:
            keys_room, values_room = room[:2]
        else:
            if ours:
                self.reserve *= 2
            keys_room, values_room = (
                self._reserved(self.keys, key_states, end),
                self._reserved(self.values, value_states, end),
            )
        keys_room[..., length:end, :] = key_states
        values_room[..., length:end, :] = value_states
        self.keys, self.values = keys_room[..., :end, :], values_room[..., :end, :]
        self._room = (keys_room, values_room, self.keys)
        return self.keys, self.values

    def _reserved(self, past: torch.Tensor, update: torch.Tensor, end: int) -> torch.Tensor:
        room = update.new_empty(*update.shape[:-2], end + self.reserve, update.shape[-1])
        if past.numel():
            room[..., : past.shape[-2], :] = past
        return room


def reserve_room(cache: Cache) -> None:
    """Make an empty dynamic cache's plain layers `ReservedLayer`s (sliding-window and offloaded caches stay)."""
    if type(cache) is not DynamicCache or cache.offloading:
        return
    if cache.layer_class_to_replicate is DynamicLayer:
        cache.layer_class_to_replicate = ReservedLayer
    cache.layers = [
        ReservedLayer() if type(layer) is DynamicLayer and not layer.is_initialized else layer for layer in cache.layers
    ]


def pairing_problem(encoder_config, decoder_config, side=None) -> str | None:
    """Why these two configs cannot talk through keys and values, or None when they can: both must be one decoder-only
    architecture with the same layers and key/value heads (a model with a masked-LM head, BERT or RoBERTa, reads both
    ways and has no cache to hand over)."""
    for role, config in (("encoder", encoder_config), ("decoder", decoder_config)):
        if type(config) in MODEL_FOR_MASKED_LM_MAPPING or type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
            return (
                f"it needs a decoder-only LM (Llama, Qwen2, SmolLM2, GPT-2, ...) on both sides; the {role} is "
                f"'{config.model_type}'"
            )
    sizes = [
        (config.model_type, *(getattr(config, key, None) for key in _SAME_SIZES))
        for config in (encoder_config, decoder_config)
    ]
    if sizes[0] != sizes[1]:
        encoder, decoder = (
            ", ".join(f"{k}={v}" for k, v in zip(("model_type", *_SAME_SIZES), values)) for values in sizes
        )
        return (
            f"the decoder reads the encoder's keys and values layer by layer, so both need one architecture and "
            f"sizes; encoder has {encoder}, decoder {decoder}"
        )
    return None


def pair(encoder: PreTrainedModel, lm: PreTrainedModel) -> tuple[PrefixEncoderModel, PrefixDecoderForCausalLM]:
    """Wrap a loaded decoder-only base model (the encoder) and causal LM (the decoder) to talk through keys and values.
    A ValueError says why a pair cannot (encdec.models turns it into the one-line user error)."""
    problem = pairing_problem(encoder.config, lm.config)
    if problem:
        raise ValueError(f"decoder.cross_attention.kind=prefix: {problem}; use decoder.cross_attention.kind=gated")
    return prefix_encoder(encoder), prefix_decoder(lm)


def build(encoder: PreTrainedModel, lm: PreTrainedModel, side=None):
    """The pairing kind's entry (`encdec.pairings`): the wrapped pair, where it keeps the loaded models, and no new
    parameters."""
    encoder, decoder = pair(encoder, lm)
    return encoder, decoder, "model.", "lm.", set()


def prefix_encoder(model: PreTrainedModel) -> PrefixEncoderModel:
    """Wrap a loaded decoder-only base model (weights kept, not copied) as an encoder of keys and values."""
    config = PrefixEncoderConfig(base_config=copy.deepcopy(model.config))
    return PrefixEncoderModel(config, model)


def prefix_decoder(lm: PreTrainedModel) -> PrefixDecoderForCausalLM:
    """Wrap a loaded causal LM (weights kept, not copied) to read an encoder's keys and values as its prefix."""
    config = PrefixDecoderConfig(base_config=copy.deepcopy(lm.config))
    return PrefixDecoderForCausalLM(config, lm)


AutoConfig.register(ENCODER_TYPE, PrefixEncoderConfig, exist_ok=True)
AutoConfig.register(DECODER_TYPE, PrefixDecoderConfig, exist_ok=True)
AutoModel.register(PrefixEncoderConfig, PrefixEncoderModel, exist_ok=True)
AutoModelForCausalLM.register(PrefixDecoderConfig, PrefixDecoderForCausalLM, exist_ok=True)
