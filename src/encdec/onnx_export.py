"""`python export.py model_path=RUN format=onnx`: the model as two ONNX graphs with the decoder's KV cache as inputs
and outputs (`encdec/onnx_graphs.py` says which), plus a runner that needs only onnxruntime, numpy and tokenizers
(`encdec/onnx_runner.py`, copied as `runner.py`).
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
from encdec.onnx_graphs import (
    DecoderStepGraph,
    EncoderGraph,
    SourcePrefixStepGraph,
    cache_layout,
    check_supported,
    reads_source_cache,
)

RUNNER = "runner.py"
EXAMPLE_PAST = 3  # example past length: the exporter specialises dimensions it sees at 0 or 1


def check_available() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as missing:
        raise EncdecError(
            f"format=onnx needs {missing.name}: pip install 'encdec[onnx]' (onnx, onnxruntime, onnxscript)"
        ) from None


def export_onnx(model, encoder_tokenizer, decoder_tokenizer, target: Path, max_source_length: int) -> None:
    """Write the ONNX export of `model` to `target` (atomically, as hf_model/)."""
    from encdec import run_folder

    check_available()
    check_supported(model)
    model = model.float().eval()
    self_shapes, cross_layers = cache_layout(model)
    self_layers = len(self_shapes)
    past_names = [f"past.{i}.{part}" for i in range(self_layers) for part in ("key", "value")]
    # A prefix-style decoder's cache starts with the source: the encoder graph gives it, the runner starts from it.
    source_past = reads_source_cache(model)

    def fill(folder: Path) -> None:
        documents = encoder_tokenizer(
            ["a first document of some words .", "a second , longer document with more words than the first one has ."],
            return_tensors="pt",
            padding=True,
        )
        source_ids, source_mask = documents["input_ids"], documents["attention_mask"]
        with torch.no_grad():
            states, *encoded = EncoderGraph(model, cross_layers)(source_ids, source_mask)
        # Example sizes above 1, with sizes from 1 allowed: the exporter specialises dimensions it sees at 0 or 1.
        batch, source, past = (torch.export.Dim(name, min=1) for name in ("batch", "source", "past"))
        cross_names = [f"cross.{j}.{part}" for j in range(len(cross_layers)) for part in ("key", "value")]
        cross = encoded[: len(cross_names)]
        _export(
            EncoderGraph(model, cross_layers),
            (source_ids, source_mask),
            folder / "encoder.onnx",
            ["input_ids", "attention_mask"],
            ["encoder_hidden_states", *cross_names, *(past_names if source_past else [])],
            ({0: batch, 1: source}, {0: batch, 1: source}),
        )
        # One tensor per input: the exporter would make inputs that alias one tensor one graph input. A past that
        # starts with the source is longer than it.
        past_length = EXAMPLE_PAST + (source_ids.shape[1] if source_past else 0)
        self_past = [torch.randn(2, heads, past_length, size) for heads, size in self_shapes for _ in range(2)]
        tokens = torch.full((2, 1), model.generation_config.decoder_start_token_id, dtype=torch.long)
        present_names = [name.replace("past.", "present.") for name in past_names]
        if source_past:
            _export(
                SourcePrefixStepGraph(model, self_layers),
                (tokens, source_mask, *self_past),
                folder / "decoder.onnx",
                ["input_ids", "encoder_attention_mask", *past_names],
                ["logits", *present_names],
                ({0: batch}, {0: batch, 1: source}, ({0: batch, 2: past},) * len(past_names)),
            )
        else:
            _export(
                DecoderStepGraph(model, self_layers, cross_layers),
                (tokens, states, source_mask, *self_past, *cross),
                folder / "decoder.onnx",
                ["input_ids", "encoder_hidden_states", "encoder_attention_mask", *past_names, *cross_names],
                ["logits", *present_names],
                (
                    {0: batch},
                    {0: batch, 1: source},
                    {0: batch, 1: source},  # the last: the cache (`*past`)
                    ({0: batch, 2: past},) * len(past_names) + ({0: batch, 2: source},) * len(cross_names),
                ),
            )
        encoder_tokenizer.save_pretrained(folder / run_folder.ENCODER_TOKENIZER)
        decoder_tokenizer.save_pretrained(folder / run_folder.DECODER_TOKENIZER)
        for side in (run_folder.ENCODER_TOKENIZER, run_folder.DECODER_TOKENIZER):
            if not (folder / side / "tokenizer.json").is_file():
                raise EncdecError(
                    f"format=onnx: the {side.split('_')[0]} tokenizer has no tokenizer.json (not a fast "
                    "tokenizer), which the runner reads: use a model with a fast tokenizer"
                )
        model.generation_config.save_pretrained(folder)
        settings = {"max_source_length": max_source_length, "encoder_pad_token_id": encoder_tokenizer.pad_token_id}
        (folder / "encdec_onnx.json").write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
        shutil.copyfile(Path(__file__).with_name("onnx_runner.py"), folder / RUNNER)
        _check_against_pytorch(folder, model, source_ids, source_mask)

    run_folder.write_folder_atomic(target, fill)


def _check_against_pytorch(folder: Path, model, source_ids, source_mask) -> None:
    """Three cached ONNX steps against PyTorch's full forward on the example: a decoder whose cache the graphs carry
    wrongly (a mode they do not know) stops the export here, not in a user's summaries."""
    from encdec.onnx_runner import OnnxSummarizer

    runner = OnnxSummarizer(folder)
    encoded = runner.encode(source_ids.numpy(), source_mask.numpy())
    tokens = torch.full((len(source_ids), 1), model.generation_config.decoder_start_token_id, dtype=torch.long)
    cache, worst = runner.start_cache(encoded), 0.0
    for _ in range(3):
        logits, cache = runner.step(tokens[:, -1:].numpy(), encoded, cache)
        with torch.no_grad():
            expected = model(input_ids=source_ids, attention_mask=source_mask, decoder_input_ids=tokens).logits[:, -1]
        worst = max(worst, float(abs(logits - expected.numpy()).max()))
        tokens = torch.cat([tokens, expected.argmax(-1, keepdim=True)], dim=1)
    if worst > 1e-3:
        raise EncdecError(
            f"format=onnx: the exported {model.config.decoder.model_type} decoder's logits differ from "
            f"PyTorch's by {worst:.2g} within three steps: this decoder's cache is not one the ONNX "
            "export knows how to carry"
        )


def _export(module: nn.Module, args: tuple, path: Path, input_names, output_names, dynamic_shapes) -> None:
    # The exporter reports each stage on stdout and warns about internals a user cannot act on (torchvision ops).
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(),
            args,
            str(path),
            dynamo=True,
            input_names=input_names,
            output_names=output_names,
            dynamic_shapes=dynamic_shapes,
            optimize=False,
            verbose=False,
        )
