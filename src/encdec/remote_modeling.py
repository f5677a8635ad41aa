"""The top-level classes an hf_model/ export names in its config's `auto_map` when a side is a pairing kind's class
(encdec's cross-attention, prefix pair, projector, ...: `encdec.pairings`): the model then loads where encdec is not
installed, as Hub models with custom code do.

The export copies this file as `modeling_encdec.py`, next to copies of every pairing kind's module and the modules they
import (encdec's own imports rewritten as relative ones), and writes those modules' names into `_KIND_MODULES`; so it
must import nothing but torch, transformers and its siblings.

transformers builds an `EncoderDecoderConfig`'s sub-configs by model_type, so the kinds' classes must be registered
with the Auto classes before the top-level config parses: importing their modules does that. A nested config's own
`auto_map` is never read, hence a top-level config and model class of our own.
"""

import importlib

from transformers import AutoConfig, EncoderDecoderConfig, EncoderDecoderModel
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from encdec.pairings import KINDS

# An installed encdec registered its classes first: keep them, or encdec code in the same process (LoRA, freezing,
# eval.py) would meet models of this copy's classes and fail its isinstance checks.
_INSTALLED = {
    name: CONFIG_MAPPING[name] for kind in KINDS.values() for name in kind.model_types if name in CONFIG_MAPPING
}

# The export writes here an import of each kind's module it carries, and their names.
_KIND_MODULES: tuple[str, ...] | None = None

# Importing a kind's module registers its Auto classes (an export imports them above, where `_KIND_MODULES` is set).
if _KIND_MODULES is None:
    for _kind in list(KINDS.values()):
        importlib.import_module(_kind.module)

for _name, _config in _INSTALLED.items():
    if CONFIG_MAPPING[_name] is not _config:
        AutoConfig.register(_name, _config, exist_ok=True)


class EncdecEncoderDecoderConfig(EncoderDecoderConfig):
    """`EncoderDecoderConfig`, loaded only after the kinds' classes are registered."""


class EncdecEncoderDecoderModel(EncoderDecoderModel):
    """`EncoderDecoderModel` with the config above; weights, forward and `generate` are transformers' own."""

    config_class = EncdecEncoderDecoderConfig
