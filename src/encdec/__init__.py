"""encdec: warm-start encoder-decoder models from any pretrained encoder and decoder, on Lightning + Hydra.

`import encdec` (and so `import encdec.report`, `encdec.run_folder`, `encdec.errors`) imports neither torch nor
transformers. Once transformers is imported, encdec's cross-attention decoders and its prefix pair's encoder and
decoder are registered with its Auto classes (encdec.auto_classes), so exported models that use them load with plain
`EncoderDecoderModel.from_pretrained` / `AutoModelForSeq2SeqLM.from_pretrained`.

The Python API (README "From Python"), imported on first use:

    build_model(encoder, decoder, **options) -> (EncoderDecoderModel, encoder tokenizer, decoder tokenizer)
    datamodule(model, encoder_tokenizer, decoder_tokenizer, data="aclsum", **settings) -> SummarizationDataModule
    Seq2SeqModule(model, decoder_tokenizer)    the LightningModule; trains on ordinary input_ids/labels batches too
    summarize(model_path, texts, **generation) -> summaries
    compose(encoder, decoder, data=..., **options) -> the training config those build from
    EncdecError                                  what every user error raises: one line naming the culprit and fix
"""

from encdec import auto_classes as _auto_classes
from encdec.lazy import lazy_names

_auto_classes.install()

__version__ = "0.1.0"

# name -> module that defines it; loaded by __getattr__ so `import encdec` does not import Lightning.
_API = {
    "build_model": "encdec.api",
    "compose": "encdec.api",
    "datamodule": "encdec.api",
    "summarize": "encdec.api",
    "Seq2SeqModule": "encdec.lit.module",
    "SummarizationDataModule": "encdec.lit.datamodule",
    "EncdecError": "encdec.errors",
}
__all__ = sorted(_API)


__getattr__, __dir__ = lazy_names(__name__, _API)
