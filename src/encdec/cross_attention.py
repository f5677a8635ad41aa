"""Decoder families in encdec, and gated cross-attention for those that have none (Llama, Qwen2, Gemma, OPT, ...).

Adding a decoder family: transformers' causal-LM classes are the catalogue, so a family that transformers can build
with `AutoModelForCausalLM` needs no Python here. `has_native_cross_attention` asks its class whether it reads
`encoder_hidden_states` (BERT, RoBERTa, GPT-2, BART: their own cross-attention is used); every other family gets the
gated blocks below, after the decoder layers `find_decoder_layers` finds through the family's `_no_split_modules`;
and `decoder.cross_attention.kind=auto` picks the prefix pair (`prefix_attention`) where both sides are one
decoder-only architecture. So a family takes at most two files:

1. `conf/decoder/<name>.yaml`, a copy of `conf/decoder/llama.yaml` with its `pretrained` id (without it,
   `decoder=auto decoder.pretrained=ID` already works);
2. its model_type in `FAMILIES` of `scripts/decoder_families.py`, which builds a tiny random decoder of each family
   with a tiny encoder, runs a forward pass and `generate`, and prints the table of verified families (`--readme
   docs/decoders.md` rewrites it there).

Only when that script fails for the family: its config names the tiny sizes differently (add the name to
`encdec.tiny_configs._TINY_SIZES`), or its layers are not found (`cross_attention_layers.find_decoder_layers`).

How the gated decoder works: `CrossAttentionDecoderForCausalLM` keeps a real `AutoModelForCausalLM` as its `lm`
submodule (`cross_attention_base.WrappedCausalLM`: the pretrained weights keep their names under `lm.`) and adds one
`GatedCrossAttentionBlock` after every `every_n_layers`-th decoder layer, through a forward hook on that layer. The
blocks live in `cross_attention_blocks`, keyed by the index of the layer they follow. Their tanh gates start at zero,
so at initialisation the wrapper's logits equal the LM's.

The wrapper accepts `encoder_hidden_states`, which is all `transformers.EncoderDecoderModel` asks of a decoder, and is
registered with `AutoConfig` / `AutoModelForCausalLM` when this module is imported, so a saved `EncoderDecoderModel`
reloads with `EncoderDecoderModel.from_pretrained(folder)` after `import encdec.cross_attention`.

Encoder width: when `encoder_hidden_size` is given, the blocks project keys/values straight from the encoder's width
and the config sets `cross_attention_hidden_size`, which tells `EncoderDecoderModel` not to add its own (ungated,
randomly initialised) `enc_to_dec_proj`. Leave it `None` only when the encoder is as wide as the decoder, or to fall
back on `enc_to_dec_proj`.

KV cache: `generate` hands the decoder an `EncoderDecoderCache`; its self-attention half goes to the LM and the
cross-attention keys/values are computed once per call and kept in its cross-attention half. Plain `generate`'s beam
search reorders both halves every step; encdec's (`inference.generate_tokens`) leaves the cross-attention half alone,
since every beam of a document holds the same keys/values there.
"""

from __future__ import annotations

import copy
import functools
import importlib
import inspect
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedConfig, PreTrainedModel
from transformers import initialization as hf_init
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer, EncoderDecoderCache
from transformers.modeling_outputs import CausalLMOutputWithCrossAttentions
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

from encdec.cross_attention_base import WrappedCausalLM, WrappedLMConfig
from encdec.cross_attention_layers import (
    CrossAttentionContext,
    GatedCrossAttentionBlock,
    encoder_keep_mask,
    find_decoder_layers,
)

MODEL_TYPE = "encdec_cross_attention_decoder"


def has_native_cross_attention(config: PreTrainedConfig) -> bool:
    """Whether the causal-LM class `AutoModelForCausalLM` builds for `config` takes `encoder_hidden_states`."""
    try:
        causal_lm_class = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    except KeyError as missing:
        raise ValueError(f"transformers has no causal-LM class for model_type {config.model_type!r}") from missing
    return "encoder_hidden_states" in inspect.signature(causal_lm_class.forward).parameters


class CrossAttentionDecoderConfig(WrappedLMConfig):
    """Config of a causal LM wrapped with gated cross-attention.

    `base_config` is the wrapped LM's config, its fields mirrored at top level (`WrappedLMConfig`). The
    cross-attention settings carry a `cross_attention_` prefix so they cannot collide with mirrored fields (OPT has
    its own `dropout`, Falcon its own `num_heads`):

    - `cross_attention_every_n_layers`: a block after every n-th decoder layer (1 = all layers).
    - `cross_attention_num_heads`: defaults to the LM's `num_attention_heads`.
    - `cross_attention_dropout`: attention dropout inside the blocks.
    - `cross_attention_hidden_size`: the encoder's width, read by keys/values; `None` means the decoder's width
      (then `EncoderDecoderModel` projects wider/narrower encoders with its own `enc_to_dec_proj`).
    - `cross_attention_ffn_mult`: > 0 adds Flamingo's gated feed-forward (that multiple of the width) to each block.
    """

    model_type = MODEL_TYPE

    cross_attention_every_n_layers: int = 1
    cross_attention_num_heads: int | None = None
    cross_attention_dropout: float = 0.0
    cross_attention_hidden_size: int | None = None
    cross_attention_ffn_mult: int = 0
    is_decoder: bool = True
    add_cross_attention: bool = True

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.cross_attention_every_n_layers < 1:
            raise ValueError(f"cross_attention_every_n_layers must be >= 1, got {self.cross_attention_every_n_layers}")
        if self.cross_attention_num_heads is None:
            self.cross_attention_num_heads = self.num_attention_heads


class CrossAttentionDecoderForCausalLM(WrappedCausalLM):
    """A pretrained causal LM (`self.lm`) plus zero-gated cross-attention blocks (`self.cross_attention_blocks`)."""

    config_class = CrossAttentionDecoderConfig
    config: CrossAttentionDecoderConfig
    _supports_flex_attn = True

    def __init__(self, config: CrossAttentionDecoderConfig, lm: PreTrainedModel | None = None):
        # Only to keep the `lm=` keyword that callers of earlier versions pass.
        super().__init__(config, lm)

    def _add_modules(self, lm: PreTrainedModel) -> None:
        config = self.config
        every_n = config.cross_attention_every_n_layers
        decoder_layers = find_decoder_layers(lm)
        self.cross_attention_blocks = nn.ModuleDict(
            {
                str(layer_index): GatedCrossAttentionBlock(
                    hidden_size=config.hidden_size,
                    encoder_hidden_size=config.cross_attention_hidden_size or config.hidden_size,
                    num_heads=config.cross_attention_num_heads,
                    dropout=config.cross_attention_dropout,
                    ffn_mult=config.cross_attention_ffn_mult,
                )
                for layer_index in range(len(decoder_layers))
                if (layer_index + 1) % every_n == 0
            }
        )
        # A plain tuple, not a submodule: the layers stay where the LM keeps them (and in its state-dict keys).
        self._hooked_decoder_layers = tuple((int(i), decoder_layers[int(i)]) for i in self.cross_attention_blocks)
        self._hook_decoder_layers()
        self._cross_attention_context: CrossAttentionContext | None = None
        self._lm_takes_logits_to_keep = "logits_to_keep" in inspect.signature(lm.forward).parameters

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, GatedCrossAttentionBlock):
            hf_init.zeros_(module.attn_gate)
            if module.ffn_gate is not None:
                hf_init.zeros_(module.ffn_gate)

    def _hook_decoder_layers(self) -> None:
        """Run each cross-attention block after its decoder layer, as a forward hook on that layer. Re-installed where
        missing on every forward: Lightning's DeepSpeed strategy strips every module hook before it wraps a model for
        validation or test, and without the hooks the decoder would silently stop reading the encoder."""
        for layer_index, layer in self._hooked_decoder_layers:
            hooks = layer._forward_hooks.values()
            if not any(getattr(hook, "func", None) == self._after_decoder_layer for hook in hooks):
                layer.register_forward_hook(functools.partial(self._after_decoder_layer, layer_index))

    def _after_decoder_layer(self, layer_index: int, _module: nn.Module, _inputs: Any, output: Any):
        context = self._cross_attention_context
        if context is None or layer_index not in context.keys_values:
            return output
        block = self.cross_attention_blocks[str(layer_index)]
        key, value = context.keys_values[layer_index]
        record = context.cross_attentions
        if isinstance(output, tuple):
            return (block(output[0], key, value, context.encoder_keep_mask, record), *output[1:])
        return block(output, key, value, context.encoder_keep_mask, record)

    def resize_token_embeddings(self, *args, **kwargs) -> nn.Embedding:
        # The LM resizes itself (ties included); the mirrored and nested vocab sizes must follow, or a saved
        # model would rebuild the old vocabulary on reload.
        embeddings = self.lm.resize_token_embeddings(*args, **kwargs)
        self.config.vocab_size = self.config.base_config.vocab_size = self.lm.config.vocab_size
        return embeddings

    def _cross_keys_values(
        self,
        encoder_hidden_states: torch.Tensor | None,
        cache: EncoderDecoderCache | None,
    ) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """Per block: K/V from the cross-attention cache when filled, else projected now (and cached if possible)."""
        keys_values = {}
        for name, block in self.cross_attention_blocks.items():
            layer_index = int(name)
            if cache is not None and cache.is_updated.get(layer_index):
                cached = cache.cross_attention_cache.layers[layer_index]
                keys_values[layer_index] = (cached.keys, cached.values)
                continue
            if encoder_hidden_states is None:
                continue
            key, value = block.project_encoder(encoder_hidden_states)
            if cache is not None:
                cross_layers = cache.cross_attention_cache.layers
                while len(cross_layers) <= layer_index:
                    cross_layers.append(DynamicLayer())
                # The cross cache is built from the decoder config, so it may hold sliding-window layers that would
                # crop a long source; the encoder's keys/values always need a plain full-length layer.
                cross_layers[layer_index] = DynamicLayer()
                key, value = cross_layers[layer_index].update(key, value)
                cache.is_updated[layer_index] = True
            keys_values[layer_index] = (key, value)
        return keys_values

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        cache: Cache | None = None,
        position_ids: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithCrossAttentions:
        past_key_values = kwargs.pop("past_key_values", None)
        cache = cache if cache is not None else past_key_values
        kwargs.pop("cache_position", None)  # removed from transformers 5; the LM derives positions from the cache
        kwargs.pop("return_dict", None)
        use_cache = use_cache if use_cache is not None else self.config.use_cache
        has_cross_attention = len(self.cross_attention_blocks) > 0
        self._hook_decoder_layers()

        if cache is None and use_cache and has_cross_attention:
            cache = EncoderDecoderCache(DynamicCache(config=self.lm.config), DynamicCache())
        if isinstance(cache, EncoderDecoderCache):
            cross_cache, self_attention_cache = cache, cache.self_attention_cache
        else:
            cross_cache, self_attention_cache = None, cache

        keys_values = self._cross_keys_values(encoder_hidden_states, cross_cache) if has_cross_attention else {}
        self._cross_attention_context = CrossAttentionContext(
            keys_values=keys_values,
            encoder_keep_mask=encoder_keep_mask(encoder_attention_mask),
            cross_attentions=[] if kwargs.get("output_attentions") else None,
        )
        context = self._cross_attention_context
        lm_kwargs = {self._cache_argument: self_attention_cache}
        if self._lm_takes_logits_to_keep:
            lm_kwargs["logits_to_keep"] = logits_to_keep
        try:
            outputs = self.lm(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                inputs_embeds=inputs_embeds,
                labels=labels,
                use_cache=use_cache,
                return_dict=True,
                **lm_kwargs,
                **kwargs,
            )
        finally:
            # Hooks only act inside this forward: calling `self.lm` directly still gives the bare LM.
            self._cross_attention_context = None

        logits = outputs.logits
        if not self._lm_takes_logits_to_keep and isinstance(logits_to_keep, int) and logits_to_keep > 0:
            logits = logits[:, -logits_to_keep:]
        returned_cache = None
        if use_cache:
            returned_cache = cross_cache if cross_cache is not None else getattr(outputs, "cache", None)
        return CausalLMOutputWithCrossAttentions(
            loss=outputs.loss,
            logits=logits,
            cache=returned_cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            cross_attentions=tuple(context.cross_attentions) if context.cross_attentions is not None else None,
        )


def add_cross_attention(
    lm: PreTrainedModel,
    every_n_layers: int = 1,
    num_heads: int | None = None,
    dropout: float = 0.0,
    encoder_hidden_size: int | None = None,
    ffn_mult: int = 0,
) -> CrossAttentionDecoderForCausalLM:
    """Wrap an already loaded causal LM (weights kept, not copied) with zero-gated cross-attention blocks.

    `encoder_hidden_size`: pass the encoder's width so keys/values read it directly (no `enc_to_dec_proj`).
    The blocks are created on the LM's device and in its dtype.
    """
    config = CrossAttentionDecoderConfig(
        base_config=copy.deepcopy(lm.config),
        cross_attention_every_n_layers=every_n_layers,
        cross_attention_num_heads=num_heads,
        cross_attention_dropout=dropout,
        cross_attention_hidden_size=encoder_hidden_size,
        cross_attention_ffn_mult=ffn_mult,
    )
    wrapped = CrossAttentionDecoderForCausalLM(config, lm=lm)
    wrapped.cross_attention_blocks.to(device=lm.device, dtype=lm.dtype)
    return wrapped


def _cross_attention_decoders(model: nn.Module) -> list[CrossAttentionDecoderForCausalLM]:
    decoders = [module for module in model.modules() if isinstance(module, CrossAttentionDecoderForCausalLM)]
    if not decoders:
        raise ValueError(f"{type(model).__name__} holds no CrossAttentionDecoderForCausalLM")
    return decoders


def cross_attention_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of every added cross-attention block (gates included) inside `model`."""
    return [p for decoder in _cross_attention_decoders(model) for p in decoder.cross_attention_blocks.parameters()]


def freeze_base(model: nn.Module) -> int:
    """Freeze the wrapped pretrained LM(s) inside `model`, leaving the cross-attention blocks (and anything else,
    e.g. the encoder) trainable. Returns the number of parameters frozen."""
    frozen = 0
    for decoder in _cross_attention_decoders(model):
        for parameter in decoder.lm.parameters():
            parameter.requires_grad_(False)
            frozen += parameter.numel()
    return frozen


def __getattr__(name: str):
    # `tiny_causal_lm_config` lived here until it moved to `encdec.tiny_configs`: old imports keep working, and an
    # hf_model/ export, which copies this file, does not have to carry the tiny configs.
    if name == "tiny_causal_lm_config":
        return importlib.import_module("encdec.tiny_configs").tiny_causal_lm_config
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


AutoConfig.register(MODEL_TYPE, CrossAttentionDecoderConfig, exist_ok=True)
AutoModelForCausalLM.register(CrossAttentionDecoderConfig, CrossAttentionDecoderForCausalLM, exist_ok=True)
