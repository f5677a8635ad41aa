"""Print a Markdown table of decoder families and how each gets cross-attention in encdec.

Every row is measured, not typed: a tiny random config of the family is built, the decoder gets cross-attention
(its own when `has_native_cross_attention` says so, encdec's gated blocks otherwise), is composed with a tiny BERT
encoder in `transformers.EncoderDecoderModel`, and runs one forward pass plus a short greedy `generate`.

    python scripts/decoder_families.py [MODEL_TYPE ...]
"""

from __future__ import annotations

import argparse
import sys
import warnings

import torch
import transformers
from transformers import AutoModelForCausalLM, BertConfig, BertModel, EncoderDecoderModel

from encdec.cross_attention import (
    CrossAttentionDecoderForCausalLM,
    add_cross_attention,
    has_native_cross_attention,
    tiny_causal_lm_config,
)
from encdec.cross_attention_layers import find_decoder_layers

FAMILIES = [
    # no cross-attention of their own: encdec adds it
    "llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen3_moe", "gemma", "gemma2", "gemma3_text", "gpt_neox",
    "opt", "phi", "phi3", "falcon", "stablelm", "olmo", "olmo2", "granite", "cohere", "starcoder2", "smollm3",
    "gptj", "gpt_neo", "codegen", "bloom",
    # their causal-LM class takes encoder_hidden_states
    "gpt2", "bert", "roberta", "xlm-roberta", "electra", "bert-generation", "bart", "mbart", "marian", "pegasus",
    "blenderbot",
]  # fmt: skip

ENCODER_WIDTH = 24


def tiny_encoder() -> BertModel:
    config = BertConfig(
        vocab_size=100, hidden_size=ENCODER_WIDTH, num_hidden_layers=1, num_attention_heads=2, intermediate_size=48
    )
    return BertModel(config, add_pooling_layer=False)


def check_family(model_type: str) -> dict[str, str]:
    row = {"model_type": model_type, "class": "?", "cross_attention": "?", "layers": "", "verified": "no", "note": ""}
    try:
        config = tiny_causal_lm_config(model_type)
        native = has_native_cross_attention(config)
        row["cross_attention"] = "native" if native else "added by encdec"
        if native:
            config.is_decoder = True
            config.add_cross_attention = True
        torch.manual_seed(0)
        lm = AutoModelForCausalLM.from_config(config)
        row["class"] = type(lm).__name__
        if native:
            decoder = lm
        else:
            layers = find_decoder_layers(lm)
            row["layers"] = next(name for name, module in lm.named_modules() if module is layers)
            decoder = add_cross_attention(lm, encoder_hidden_size=ENCODER_WIDTH)
            assert isinstance(decoder, CrossAttentionDecoderForCausalLM)
        model = EncoderDecoderModel(encoder=tiny_encoder(), decoder=decoder).eval()
        for target in (model.config, model.generation_config):
            target.decoder_start_token_id, target.pad_token_id, target.eos_token_id = 1, 0, 2
        source = torch.randint(3, 100, (2, 7))
        with torch.no_grad():
            logits = model(input_ids=source, decoder_input_ids=torch.ones(2, 3, dtype=torch.long)).logits
            generated = model.generate(input_ids=source, max_new_tokens=3, min_new_tokens=3)
        assert logits.shape == (2, 3, config.vocab_size) and torch.isfinite(logits).all()
        assert generated.shape == (2, 4)
        row["verified"] = "yes"
    except Exception as error:  # one broken family must not hide the others
        row["note"] = f"{type(error).__name__}: {str(error).splitlines()[0][:90]}"
    return row


def markdown_table(rows: list[dict[str, str]]) -> str:
    header = "| model_type | transformers causal-LM class | cross-attention | decoder layers | verified | note |"
    lines = [header, "| --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        layers = f"`{row['layers']}`" if row["layers"] else ""
        lines.append(
            f"| {row['model_type']} | {row['class']} | {row['cross_attention']} | {layers} | {row['verified']} "
            f"| {row['note']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_types", nargs="*", default=FAMILIES, help="model types to check (default: all)")
    model_types = parser.parse_args(argv).model_types
    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    torch.set_num_threads(1)  # tiny models: threads only add synchronisation
    rows = [check_family(model_type) for model_type in model_types]
    print(markdown_table(rows))
    return 0 if all(row["verified"] == "yes" for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
