"""The top-level classes an hf_model/ export names in its config's `auto_map` when its decoder got encdec's
cross-attention: the model then loads where encdec is not installed, as Hub models with custom code do.

The export copies this file as `modeling_encdec.py`, next to copies of `cross_attention.py` and the modules it imports
(encdec's own imports rewritten as relative ones), so it must import nothing but torch, transformers and its siblings.

transformers builds an `EncoderDecoderConfig`'s decoder config by model_type, so the decoder's classes must be
registered with the Auto classes before the top-level config parses: importing `.cross_attention` does that. A nested
config's own `auto_map` is never read, hence a top-level config and model class of our own.
"""

from transformers import AutoConfig, EncoderDecoderConfig, EncoderDecoderModel
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

_MODEL_TYPES = ("encdec_cross_attention_decoder", "encdec_prefix_encoder", "encdec_prefix_decoder")
# An installed encdec registered its classes first: keep them, or encdec code in the same process (LoRA, freezing,
# eval.py) would meet models of this copy's classes and fail its isinstance checks.
_INSTALLED = {name: CONFIG_MAPPING[name] for name in _MODEL_TYPES if name in CONFIG_MAPPING}

from .cross_attention import CrossAttentionDecoderConfig  # noqa: E402,F401  (registers the decoder's Auto classes)
from .prefix_attention import PrefixDecoderConfig  # noqa: E402,F401  (and the prefix pair's)

for _name, _config in _INSTALLED.items():
    if CONFIG_MAPPING[_name] is not _config:
        AutoConfig.register(_name, _config, exist_ok=True)


class EncdecEncoderDecoderConfig(EncoderDecoderConfig):
    """`EncoderDecoderConfig`, loaded only after the cross-attention decoder is registered."""


class EncdecEncoderDecoderModel(EncoderDecoderModel):
    """`EncoderDecoderModel` with the config above; weights, forward and `generate` are transformers' own."""

    config_class = EncdecEncoderDecoderConfig
