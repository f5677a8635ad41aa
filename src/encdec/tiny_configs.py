"""Tiny random configs of transformers' model types (hidden 32, 2 layers, vocab 128): tests and
`scripts/decoder_families.py` build every decoder family from them in milliseconds. Training and exports never import
this module."""

from __future__ import annotations

import dataclasses
import inspect

from transformers import PreTrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

_TINY_SIZES = {
    "vocab_size": 128,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "intermediate_size": 64,
    "max_position_embeddings": 128,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    # GPT-2, OPT, BART, Falcon... name the same sizes differently; each config keeps only the names it declares.
    "n_positions": 128,
    "n_inner": 64,
    "ffn_dim": 64,
    "word_embed_proj_dim": 32,
    "d_model": 32,
    "decoder_layers": 2,
    "decoder_attention_heads": 4,
    "decoder_ffn_dim": 64,
    "encoder_layers": 2,
    "encoder_attention_heads": 4,
    "encoder_ffn_dim": 64,
    "decoder_start_token_id": 1,
    "sliding_window": 4,
    "rotary_dim": 4,  # GPT-J, CodeGen: must not exceed head_dim
    "attention_types": [[["global", "local"], 1]],  # GPT-Neo: one global+local pair = 2 layers
}


def tiny_causal_lm_config(model_type: str, **overrides) -> PreTrainedConfig:
    """A tiny random config of `model_type` (hidden 32, 2 layers, vocab 128) for tests and the family table.

    Only the keys the family's config class declares (fields or `attribute_map`) are passed, so derived fields
    (`head_dim`, `layer_types`, ...) are computed by the family itself. `sliding_window` is 4 where it exists, so
    sliding-window code paths are exercised by short sequences.
    """
    config_class = CONFIG_MAPPING[model_type]
    declared = {f.name for f in dataclasses.fields(config_class)} | set(config_class.attribute_map)
    settable = {
        name
        for name in declared
        if not isinstance(inspect.getattr_static(config_class, name, None), property)
        or inspect.getattr_static(config_class, name).fset is not None
    }
    sizes = {key: value for key, value in {**_TINY_SIZES, **overrides}.items() if key in settable}
    return config_class(**sizes)
