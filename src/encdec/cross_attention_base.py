"""What both kinds of `decoder.cross_attention` build on: a pretrained model kept whole inside a `PreTrainedModel` of
encdec's own, with a config that nests the model's config and mirrors its fields.

- `WrappedLMConfig`: `base_config` is the wrapped model's config (the source of truth, serialised nested). Its fields
  are also mirrored at top level, because `generate` builds KV caches and generation defaults from the decoder's
  own config.
- `WrappedLM`: the model sits under `base_model_prefix`, so its pretrained weights keep their names there (`lm.`,
  `model.`); on reload it is rebuilt from `config.base_config`. A subclass adds its own modules in `_add_modules`,
  before `post_init` initialises them.
- `WrappedCausalLM`: the same for a causal LM under `lm`, with its output embeddings and `generate`.

The gated decoder (`cross_attention`) and the prefix pair (`prefix_attention`) subclass these; an hf_model/ export
carries this file next to theirs, so it imports nothing but torch and transformers.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect

from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, GenerationMixin, PreTrainedConfig, PreTrainedModel
from transformers.configuration_utils import SubConfigSpec

# Keys of the wrapped model's config that describe it as a standalone model, not the wrapper.
_NOT_MIRRORED = {
    "model_type",
    "architectures",
    "transformers_version",
    "auto_map",
    "dtype",
    "is_decoder",
    "add_cross_attention",
    "is_encoder_decoder",
    "cross_attention_hidden_size",
    "id2label",
    "label2id",
    "problem_type",
    "return_dict",
    "output_hidden_states",
    "chunk_size_feed_forward",
}
# Read through the wrapped config's `attribute_map` (GPT-2's `n_embd`, ...) so the wrapper always has the standard
# names.
_STANDARD_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "max_position_embeddings",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "tie_word_embeddings",
    "initializer_range",
)


class WrappedLMConfig(PreTrainedConfig):
    """A config whose `base_config` is the wrapped model's, its fields mirrored at top level (the wrapper's own
    fields win). Registered under no model type: only its subclasses are."""

    sub_configs_defaults = {"base_config": SubConfigSpec(config_class=AutoConfig, model_type="llama")}

    base_config: PreTrainedConfig | dict | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        own_fields = {f.name for f in dataclasses.fields(self)}
        for key, value in self.base_config.to_dict().items():
            if key not in own_fields and key not in _NOT_MIRRORED and not key.startswith("_"):
                setattr(self, key, value)
        for key in _STANDARD_FIELDS:
            if hasattr(self.base_config, key):
                setattr(self, key, getattr(self.base_config, key))
        if getattr(self, "head_dim", None) is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if getattr(self, "num_key_value_heads", None) is None:
            self.num_key_value_heads = self.num_attention_heads


def cache_argument(model: PreTrainedModel) -> str:
    """transformers 5.2x names the forward's cache `cache`; earlier versions (and some families) `past_key_values`."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


class WrappedLM(PreTrainedModel):
    """A pretrained model kept whole under `base_model_prefix` (weights keep their names), or rebuilt from
    `config.base_config` on reload."""

    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True
    _auto_class_of_wrapped = AutoModel

    def __init__(self, config: WrappedLMConfig, wrapped: PreTrainedModel | None = None):
        requested_attention = config.base_config._attn_implementation
        super().__init__(config)
        if wrapped is None:
            wrapped = self._auto_class_of_wrapped.from_config(
                copy.deepcopy(config.base_config), attn_implementation=requested_attention
            )
        if wrapped.config._attn_implementation is None:
            # With no implementation an LM silently drops its causal mask: summaries would read their future.
            wrapped.set_attn_implementation("sdpa" if wrapped._supports_sdpa else "eager")
        setattr(self, self.base_model_prefix, wrapped)
        self.config._attn_implementation_internal = wrapped.config._attn_implementation
        self._cache_argument = cache_argument(wrapped)
        self._add_modules(wrapped)
        self.post_init()

    def _add_modules(self, wrapped: PreTrainedModel) -> None:
        """A subclass's own modules and state, made here so that `post_init` initialises them."""

    def get_input_embeddings(self) -> nn.Module:
        return getattr(self, self.base_model_prefix).get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        getattr(self, self.base_model_prefix).set_input_embeddings(value)


class WrappedCausalLM(WrappedLM, GenerationMixin):
    """A pretrained causal LM kept whole as `self.lm`."""

    base_model_prefix = "lm"
    _auto_class_of_wrapped = AutoModelForCausalLM

    def get_output_embeddings(self) -> nn.Module | None:
        return self.lm.get_output_embeddings()

    def set_output_embeddings(self, new_embeddings: nn.Module) -> None:
        self.lm.set_output_embeddings(new_embeddings)
