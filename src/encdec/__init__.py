"""encdec: warm-start encoder-decoder models from any pretrained encoder and decoder, on Lightning + Hydra.

Importing encdec registers its cross-attention decoders with transformers' Auto classes, so exported models whose
decoder got encdec's cross-attention load with plain `EncoderDecoderModel.from_pretrained`.
"""

from encdec import cross_attention  # noqa: F401  (registers the Auto classes)

__version__ = "0.1.0"
