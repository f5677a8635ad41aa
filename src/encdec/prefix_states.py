"""Layer-aligned prefix read through the decoder's own key and value projections (pairing kind `prefix_states`).

The `prefix` kind (encdec.prefix_attention) hands the decoder the keys and values the frozen encoder computed, so
fine-tuning moves the decoder's keys for the summary while the source's keys stay where the pretrained LM put them.
Here the encoder hands over what enters each of its layers (the residual stream, `[batch, source, layers * hidden]`)
and the decoder makes the source's keys and values itself, with each layer's own input norm, key and value
projections (and key norm, where the family has one) and rotary positions from 0. Source and summary keys then move
together as the decoder trains, and the summary loss reaches those projections through the source, at the cost of
two small projections per layer over the source: the encoder still runs once, frozen and without gradient. No
parameter is new, so step 0 computes exactly what `prefix` (and the pretrained LM on `[document; summary]`) does.
"""

from __future__ import annotations

import copy

import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, PreTrainedModel
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutput

from encdec.prefix_attention import (
    PrefixDecoderConfig,
    PrefixDecoderForCausalLM,
    PrefixEncoderConfig,
    PrefixEncoderModel,
)
from encdec.prefix_attention import (
    pairing_problem as prefix_pairing_problem,
)

ENCODER_TYPE = "encdec_states_encoder"
DECODER_TYPE = "encdec_states_decoder"
# Families whose attention makes its cached keys as `_fill_cache` does (k_proj, optional k_norm over each head,
# rotary from the model's `rotary_emb`): tests/test_pairings.py checks each against the `prefix` kind at step 0.
FAMILIES = ("llama", "mistral", "qwen2", "qwen3")


class StatesEncoderConfig(PrefixEncoderConfig):
    """Config of a decoder-only LM run as an encoder that hands over every layer's input hidden states."""

    model_type = ENCODER_TYPE


class StatesDecoderConfig(PrefixDecoderConfig):
    """Config of a decoder-only LM that makes the source's keys and values from the encoder's per-layer states."""

    model_type = DECODER_TYPE


def packed_width(config) -> int:
    return config.num_hidden_layers * config.hidden_size


class StatesEncoderModel(PrefixEncoderModel):
    """A decoder-only LM's base model run causally over the source; its output is what enters each of its layers,
    side by side: `[batch, source, layers * hidden]`."""

    config_class = StatesEncoderConfig
    config: StatesEncoderConfig

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, **kwargs) -> BaseModelOutput:
        for unused in ("return_dict", "output_attentions", "output_hidden_states", "token_type_ids"):
            kwargs.pop(unused, None)
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            use_cache=False,
            output_hidden_states=True,
            **kwargs,
        )
        # hidden_states: each layer's input, then the final norm's output (not read).
        return BaseModelOutput(last_hidden_state=torch.cat(outputs.hidden_states[:-1], dim=-1))


class StatesDecoderForCausalLM(PrefixDecoderForCausalLM):
    """A pretrained causal LM whose self-attention cache starts with keys and values it makes from the encoder's
    per-layer states."""

    config_class = StatesDecoderConfig
    config: StatesDecoderConfig

    def _fill_cache(self, cache: Cache, encoder_hidden_states: torch.Tensor, source_mask: torch.Tensor) -> None:
        batch, source, width = encoder_hidden_states.shape
        if width != packed_width(self.config):
            raise ValueError(
                f"the encoder handed over {width} values per source token, the decoder reads "
                f"{packed_width(self.config)} ({self.config.num_hidden_layers} layers x {self.config.hidden_size}): "
                "prefix_states needs the same architecture and sizes on both sides"
            )
        base = self.lm.base_model
        states = encoder_hidden_states.view(batch, source, self.config.num_hidden_layers, -1).unbind(2)
        # Positions from 0 over the padded source, as the encoder's own forward counts them.
        positions = torch.arange(source, device=encoder_hidden_states.device)[None].expand(batch, -1)
        cos, sin = base.rotary_emb(states[0], positions)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # over the heads
        for index, (layer, hidden) in enumerate(zip(base.layers, states)):
            attention = layer.self_attn
            normed = layer.input_layernorm(hidden)
            shape = (batch, source, -1, attention.head_dim)
            keys = attention.k_proj(normed).view(shape)
            if getattr(attention, "k_norm", None) is not None:
                keys = attention.k_norm(keys)
            keys = keys.transpose(1, 2)
            values = attention.v_proj(normed).view(shape).transpose(1, 2)
            cache.update(keys * cos + _rotate_half(keys) * sin, values, index)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def pairing_problem(encoder_config, decoder_config, side=None) -> str | None:
    """Why these two configs cannot pair this way, or None: `prefix`'s rule, and a family whose attention is known."""
    problem = prefix_pairing_problem(encoder_config, decoder_config)
    if problem:
        return problem
    if decoder_config.model_type not in FAMILIES:
        return (
            f"it makes the source's keys as {', '.join(FAMILIES)} attention does; the decoder is "
            f"'{decoder_config.model_type}'"
        )
    return None


def build(encoder: PreTrainedModel, lm: PreTrainedModel, side=None):
    """The pairing kind's entry (`encdec.pairings`): the wrapped pair, where it keeps the loaded models, and no new
    parameters."""
    problem = pairing_problem(encoder.config, lm.config)
    if problem:
        raise ValueError(
            f"decoder.cross_attention.kind=prefix_states: {problem}; use decoder.cross_attention.kind=gated"
        )
    encoder = StatesEncoderModel(StatesEncoderConfig(base_config=copy.deepcopy(encoder.config)), encoder)
    decoder = StatesDecoderForCausalLM(StatesDecoderConfig(base_config=copy.deepcopy(lm.config)), lm)
    return encoder, decoder, "model.", "lm.", set()


AutoConfig.register(ENCODER_TYPE, StatesEncoderConfig, exist_ok=True)
AutoConfig.register(DECODER_TYPE, StatesDecoderConfig, exist_ok=True)
AutoModel.register(StatesEncoderConfig, StatesEncoderModel, exist_ok=True)
AutoModelForCausalLM.register(StatesDecoderConfig, StatesDecoderForCausalLM, exist_ok=True)
