"""`python export.py model_path=RUN format=onnx`: the model as two ONNX graphs plus a runner that needs only
onnxruntime, numpy and tokenizers (`encdec/onnx_runner.py`, copied as `runner.py`).

Layout: `encoder.onnx` runs once per batch; `decoder.onnx` takes every decoder token so far and returns the next
token's logits. It recomputes the decoder's self-attention each step instead of carrying a KV cache: one graph with
no past inputs, which the dynamo exporter cannot make dynamic at size 0 (the first step's empty past).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import warnings
from pathlib import Path

import torch
from torch import nn

from encdec.errors import EncdecError

RUNNER = "runner.py"


class _Encoder(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.encoder = model.encoder

    def forward(self, input_ids, attention_mask):
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


class _NextTokenLogits(nn.Module):
    """EncoderDecoderModel's decoder half, as `generate` calls it without a cache, for the last position only."""

    def __init__(self, model):
        super().__init__()
        self.decoder = model.decoder
        self.enc_to_dec_proj = getattr(model, "enc_to_dec_proj", None)

    def forward(self, decoder_input_ids, encoder_hidden_states, encoder_attention_mask):
        if self.enc_to_dec_proj is not None:
            encoder_hidden_states = self.enc_to_dec_proj(encoder_hidden_states)
        # Explicit positions: BERT slices a position buffer by the input length otherwise, which the exporter turns
        # into a symbolic is_causal flag that SDPA cannot take.
        positions = torch.arange(decoder_input_ids.shape[1], device=decoder_input_ids.device)
        outputs = self.decoder(input_ids=decoder_input_ids, position_ids=positions.expand_as(decoder_input_ids),
                               encoder_hidden_states=encoder_hidden_states,
                               encoder_attention_mask=encoder_attention_mask, use_cache=False)
        return outputs.logits[:, -1, :]


def check_available() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as missing:
        raise EncdecError(f"format=onnx needs {missing.name}: pip install 'encdec[onnx]' (onnx, onnxruntime, "
                          "onnxscript)") from None


def export_onnx(model, encoder_tokenizer, decoder_tokenizer, target: Path, max_source_length: int) -> None:
    """Write the ONNX export of `model` to `target` (atomically, as hf_model/)."""
    from encdec import run_folder

    check_available()
    model = model.float().eval()

    def fill(folder: Path) -> None:
        documents = encoder_tokenizer(["a first document of some words .", "a second , longer document with more "
                                       "words than the first one has ."], return_tensors="pt", padding=True)
        source_ids, source_mask = documents["input_ids"], documents["attention_mask"]
        with torch.no_grad():
            states = _Encoder(model)(source_ids, source_mask)
        # Example sizes above 1, with sizes from 1 allowed: the exporter specialises dimensions it sees at 0 or 1.
        batch, source, target_length = (torch.export.Dim(name, min=1) for name in ("batch", "source", "target"))
        tokens = torch.full((2, 3), model.generation_config.decoder_start_token_id, dtype=torch.long)
        _export(_Encoder(model), (source_ids, source_mask), folder / "encoder.onnx", ["input_ids", "attention_mask"],
                ["encoder_hidden_states"], ({0: batch, 1: source}, {0: batch, 1: source}))
        _export(_NextTokenLogits(model), (tokens, states, source_mask), folder / "decoder.onnx",
                ["decoder_input_ids", "encoder_hidden_states", "encoder_attention_mask"], ["logits"],
                ({0: batch, 1: target_length}, {0: batch, 1: source}, {0: batch, 1: source}))
        encoder_tokenizer.save_pretrained(folder / run_folder.ENCODER_TOKENIZER)
        decoder_tokenizer.save_pretrained(folder / run_folder.DECODER_TOKENIZER)
        for side in (run_folder.ENCODER_TOKENIZER, run_folder.DECODER_TOKENIZER):
            if not (folder / side / "tokenizer.json").is_file():
                raise EncdecError(f"format=onnx: the {side.split('_')[0]} tokenizer has no tokenizer.json (not a fast "
                                  "tokenizer), which the runner reads: use a model with a fast tokenizer")
        model.generation_config.save_pretrained(folder)
        settings = {"max_source_length": max_source_length, "encoder_pad_token_id": encoder_tokenizer.pad_token_id}
        (folder / "encdec_onnx.json").write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
        shutil.copyfile(Path(__file__).with_name("onnx_runner.py"), folder / RUNNER)

    run_folder.write_folder_atomic(target, fill)


def _export(module: nn.Module, args: tuple, path: Path, input_names, output_names, dynamic_shapes) -> None:
    # The exporter reports each stage on stdout and warns about internals a user cannot act on (torchvision ops).
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), args, str(path), dynamo=True, input_names=input_names,
                          output_names=output_names, dynamic_shapes=dynamic_shapes, optimize=False, verbose=False)
