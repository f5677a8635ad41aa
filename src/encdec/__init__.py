"""encdec: warm-start encoder-decoder models from any pretrained encoder and decoder, on Lightning + Hydra."""

from encdec import train  # noqa: F401  (the recipe, reachable as encdec.train.run)

__version__ = "0.1.0"
