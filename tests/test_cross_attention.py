"""Gated cross-attention (encdec.cross_attention) inside transformers' EncoderDecoderModel, on tiny random models.

Families without cross-attention get encdec's blocks; BERT, RoBERTa, GPT-2 and BART decoders use their own, and run
through the same checks so both paths (gated blocks added, or the family's own cross-attention) are covered.
"""

import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, BertConfig, BertModel, EncoderDecoderModel

from encdec.cross_attention import (
    CrossAttentionDecoderConfig,
    CrossAttentionDecoderForCausalLM,
    add_cross_attention,
    cross_attention_parameters,
    freeze_base,
    has_native_cross_attention,
)
from encdec.cross_attention_layers import find_decoder_layers
from encdec.tiny_configs import tiny_causal_lm_config

ADDED_FAMILIES = [
    "llama", "qwen2", "mistral", "gemma", "gemma2", "gpt_neox", "opt", "phi", "phi3", "falcon", "stablelm",
]  # fmt: skip
NATIVE_FAMILIES = ["bert", "roberta", "gpt2", "bart"]
ALL_FAMILIES = ADDED_FAMILIES + NATIVE_FAMILIES
# Parameter-name fragments of the native families' own cross-attention.
NATIVE_CROSS_ATTENTION_NAMES = ("crossattention", "encoder_attn", "enc_to_dec_proj")

# EncoderDecoderModel warns about its v4.12 loss change on every labelled forward: noise, not a fault.
pytestmark = [
    pytest.mark.filterwarnings("ignore:Version v4.12.0 introduces:FutureWarning"),
    pytest.mark.usefixtures("single_thread"),
]

ENCODER_WIDTH = 24  # differs from the decoders' 32, so the encoder-width path is always exercised
ENCODER_VOCAB = 100
DECODER_START, PAD, EOS = 1, 0, 2
SOURCE_LENGTH = 7  # longer than the tiny configs' sliding window (4)


def tiny_encoder() -> BertModel:
    torch.manual_seed(1)
    config = BertConfig(
        vocab_size=ENCODER_VOCAB,
        hidden_size=ENCODER_WIDTH,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=48,
    )
    return BertModel(config, add_pooling_layer=False)


def tiny_lm(family: str):
    torch.manual_seed(0)
    config = tiny_causal_lm_config(family)
    if family in NATIVE_FAMILIES:
        config.is_decoder = True
        config.add_cross_attention = True
    return AutoModelForCausalLM.from_config(config)


def compose(family: str, gate: float | None = None) -> EncoderDecoderModel:
    lm = tiny_lm(family)
    decoder = lm if family in NATIVE_FAMILIES else add_cross_attention(lm, encoder_hidden_size=ENCODER_WIDTH)
    if gate is not None and family in ADDED_FAMILIES:
        for block in decoder.cross_attention_blocks.values():
            torch.nn.init.constant_(block.attn_gate, gate)
    model = EncoderDecoderModel(encoder=tiny_encoder(), decoder=decoder)
    for config in (model.config, model.generation_config):
        config.decoder_start_token_id, config.pad_token_id, config.eos_token_id = DECODER_START, PAD, EOS
    return model.eval()


def source_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, ENCODER_VOCAB, (2, SOURCE_LENGTH), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 5:] = 0
    return input_ids, attention_mask


def decoder_batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    decoder_input_ids = torch.randint(3, 128, (2, 6), generator=generator)
    decoder_input_ids[:, 0] = DECODER_START
    decoder_attention_mask = torch.ones_like(decoder_input_ids)
    decoder_attention_mask[0, 4:] = 0
    return decoder_input_ids, decoder_attention_mask


def logits_of(model: EncoderDecoderModel, input_ids, attention_mask) -> torch.Tensor:
    decoder_input_ids, decoder_attention_mask = decoder_batch()
    return model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        decoder_input_ids=decoder_input_ids,
        decoder_attention_mask=decoder_attention_mask,
    ).logits


def cross_attention_named_parameters(model: EncoderDecoderModel, family: str) -> dict[str, torch.nn.Parameter]:
    if family in ADDED_FAMILIES:
        fragments = ("cross_attention_blocks",)
    else:
        fragments = NATIVE_CROSS_ATTENTION_NAMES
    named = {name: p for name, p in model.named_parameters() if any(f in name for f in fragments)}
    assert named, f"no cross-attention parameters found for {family}"
    return named


@pytest.mark.parametrize(
    "family, native",
    [(family, False) for family in ADDED_FAMILIES]
    + [(family, True) for family in NATIVE_FAMILIES + ["electra", "bert-generation"]],
)
def test_has_native_cross_attention(family, native):
    assert has_native_cross_attention(tiny_causal_lm_config(family)) is native


def test_has_native_cross_attention_is_true_for_the_wrapper_and_refuses_encoder_only_configs():
    config = CrossAttentionDecoderConfig(base_config=tiny_causal_lm_config("llama"))
    assert has_native_cross_attention(config) is True
    with pytest.raises(ValueError, match="no causal-LM class"):
        has_native_cross_attention(tiny_causal_lm_config("t5"))


@pytest.mark.parametrize("family", ADDED_FAMILIES)
def test_added_cross_attention_is_exact_at_init(family):
    lm = tiny_lm(family).eval()
    weights_before = {name: tensor.clone() for name, tensor in lm.state_dict().items()}
    decoder_input_ids, decoder_attention_mask = decoder_batch()
    with torch.no_grad():
        bare_logits = lm(input_ids=decoder_input_ids, attention_mask=decoder_attention_mask).logits

        model = EncoderDecoderModel(encoder=tiny_encoder(), decoder=add_cross_attention(lm, encoder_hidden_size=24))
        wrapped_logits = logits_of(model.eval(), *source_batch())

    assert (wrapped_logits - bare_logits).abs().max().item() <= 1e-6
    wrapped_weights = model.decoder.lm.state_dict()
    assert all(torch.equal(wrapped_weights[name], tensor) for name, tensor in weights_before.items())
    assert not hasattr(model, "enc_to_dec_proj")  # keys/values read the encoder's width directly
    assert model.decoder.lm.config._attn_implementation in ("sdpa", "eager")


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_logits_depend_on_encoder_and_gradients_reach_cross_attention(family):
    model = compose(family, gate=1.0)
    input_ids, attention_mask = source_batch()
    other_input_ids, _ = source_batch(seed=1)
    padded_changed = input_ids.clone()
    padded_changed[1, 5:] = other_input_ids[1, 5:]

    logits = logits_of(model, input_ids, attention_mask)
    with torch.no_grad():
        other_logits = logits_of(model, other_input_ids, attention_mask)
        padding_changed_logits = logits_of(model, padded_changed, attention_mask)

    assert (logits - other_logits).abs().max().item() > 1e-4
    assert (logits - padding_changed_logits).abs().max().item() <= 1e-5  # the encoder padding mask is honoured
    logits.logsumexp(-1).sum().backward()
    for name, parameter in cross_attention_named_parameters(model, family).items():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    assert model.encoder.embeddings.word_embeddings.weight.grad.abs().sum() > 0


def test_only_gates_get_gradients_while_gates_are_zero():
    # Flamingo's zero gate: the first step moves the gates, after which the blocks themselves learn.
    model = compose("llama")
    logits_of(model, *source_batch()).logsumexp(-1).sum().backward()
    gates, projections = [], []
    for name, parameter in cross_attention_named_parameters(model, "llama").items():
        if name.endswith("attn_gate"):
            assert parameter.grad.abs().item() > 0, name
            gates.append(name)
        elif "q_proj" in name or "o_proj" in name:
            assert parameter.grad.abs().sum().item() == 0, name
            projections.append(name)
    # Something was checked: a renamed gate or projection would otherwise pass with no assert run.
    blocks = len(model.decoder.cross_attention_blocks)
    assert blocks == 2 and (len(gates), len(projections)) == (blocks, 2 * blocks), (gates, projections)


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_training_learns_through_cross_attention(family):
    # The target is the source's token, drawn afresh each step: without reading the encoder the best possible loss
    # is ln(17) ~ 2.83 ~ 0.58 x the initial ln(128), so ending below half the initial loss needs cross-attention.
    model = compose(family).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(60):
        token = torch.randint(3, 20, (16, 1), generator=generator)
        loss = model(input_ids=token.expand(16, 5), labels=token).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    final = sum(losses[-5:]) / 5
    assert final < 0.5 * losses[0], (losses[0], final)


def test_training_with_frozen_base_changes_only_cross_attention():
    model = compose("llama").train()
    frozen = freeze_base(model)
    trainable = cross_attention_parameters(model)
    assert frozen == sum(p.numel() for p in model.decoder.lm.parameters())
    assert {id(p) for p in model.decoder.parameters() if p.requires_grad} == {id(p) for p in trainable}
    lm_before = copy.deepcopy(model.decoder.lm.state_dict())
    blocks_before = copy.deepcopy(model.decoder.cross_attention_blocks.state_dict())

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(60):
        token = torch.randint(3, 20, (16, 1), generator=generator)
        loss = model(input_ids=token.expand(16, 5), labels=token).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())

    # A frozen *random* LM is a harsh base (its head is random too); the loss must still clearly fall.
    assert sum(losses[-5:]) / 5 < 0.9 * losses[0]
    assert all(torch.equal(t, model.decoder.lm.state_dict()[n]) for n, t in lm_before.items())
    blocks_after = model.decoder.cross_attention_blocks.state_dict()
    assert all(not torch.equal(t, blocks_after[n]) for n, t in blocks_before.items() if n.endswith("attn_gate"))


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_generation_cached_equals_uncached_and_beam_search_runs(family):
    model = compose(family, gate=1.0)
    input_ids, attention_mask = source_batch()
    projections = []
    if family in ADDED_FAMILIES:
        for block in model.decoder.cross_attention_blocks.values():
            block.k_proj.register_forward_hook(lambda *_: projections.append("k"))
            block.v_proj.register_forward_hook(lambda *_: projections.append("v"))
    blocks = len(getattr(model.decoder, "cross_attention_blocks", ()))

    def generate(**kwargs):
        projections.clear()
        with torch.no_grad():
            return model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=8, **kwargs)

    greedy_cached = generate(use_cache=True, min_new_tokens=8)
    greedy_projections = len(projections)
    greedy_uncached = generate(use_cache=False, min_new_tokens=8)
    beam_cached = generate(use_cache=True, num_beams=3)
    beam_projections = len(projections)
    beam_uncached = generate(use_cache=False, num_beams=3)
    # generation.cache_implementation=static: preallocated self-attention caches (what CUDA graphs need);
    # configure_generation refuses it for OPT (positions from a 2D mask)
    greedy_static = (
        greedy_cached if family == "opt" else generate(use_cache=True, min_new_tokens=8, cache_implementation="static")
    )

    assert greedy_cached.shape == (2, 9)
    assert torch.equal(greedy_cached, greedy_uncached)
    assert torch.equal(greedy_static, greedy_cached)
    assert torch.equal(beam_cached, beam_uncached)
    assert beam_cached.shape[0] == 2 and beam_cached.shape[1] <= 9
    assert int(beam_cached.min()) >= 0 and int(beam_cached.max()) < model.decoder.config.vocab_size
    assert torch.all(beam_cached[:, 0] == DECODER_START)
    if family in ADDED_FAMILIES:
        # keys and values: one projection each per block per generate call, not one per step
        assert greedy_projections == beam_projections == 2 * blocks


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_beam_search_leaves_the_cross_attention_cache_in_place(family, monkeypatch):
    """encdec's beam search skips reordering the cross-attention keys/values (equal for every beam of a document)
    and returns exactly the beams of plain generate, which reorders both halves of the cache every step."""
    from transformers.cache_utils import DynamicCache

    from encdec.inference import generate_tokens

    model = compose(family, gate=1.0)
    input_ids, attention_mask = source_batch(seed=3)
    input_ids = torch.cat([input_ids, source_batch(seed=4)[0]])
    attention_mask = torch.cat([attention_mask, attention_mask])
    attention_mask[1, -3:] = 0  # a padded row among them
    reordered = []
    reorder = DynamicCache.reorder_cache
    monkeypatch.setattr(
        DynamicCache, "reorder_cache", lambda self, beam_idx: (reordered.append(self), reorder(self, beam_idx))
    )
    settings = dict(max_new_tokens=8, num_beams=3, no_repeat_ngram_size=2, length_penalty=1.0, early_stopping=True)
    with torch.no_grad():
        plain = model.generate(input_ids=input_ids, attention_mask=attention_mask, **settings)
        plain_caches = {id(cache) for cache in reordered}
        reordered.clear()
        ours = generate_tokens(model, input_ids, attention_mask, **settings)
        ours_caches = {id(cache) for cache in reordered}
    assert torch.equal(ours, plain)
    assert len(plain_caches) == 2 and len(ours_caches) == 1  # plain: self + cross reordered; ours: self only
    assert len(reordered) >= 7  # it did reorder the self-attention half at every step


@pytest.mark.parametrize("family", ["mistral", "gemma2"])
def test_cross_attention_cache_keeps_the_whole_source_despite_sliding_window(family):
    model = compose(family, gate=1.0)
    assert model.config.decoder.sliding_window < SOURCE_LENGTH
    input_ids, attention_mask = source_batch()
    decoder_input_ids, _ = decoder_batch()
    with torch.no_grad():
        output = model(
            input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids, use_cache=True
        )
    cross_layers = output.cache.cross_attention_cache.layers
    for name in model.decoder.cross_attention_blocks:
        assert cross_layers[int(name)].keys.shape[-2] == SOURCE_LENGTH


def test_every_n_layers_and_gated_feed_forward():
    lm = AutoModelForCausalLM.from_config(tiny_causal_lm_config("llama", num_hidden_layers=4)).eval()
    decoder_input_ids, _ = decoder_batch()
    with torch.no_grad():
        bare_logits = lm(input_ids=decoder_input_ids).logits
    decoder = add_cross_attention(lm, every_n_layers=2, num_heads=2, encoder_hidden_size=24, ffn_mult=2)
    assert sorted(decoder.cross_attention_blocks) == ["1", "3"]
    assert decoder.cross_attention_blocks["1"].num_heads == 2
    model = EncoderDecoderModel(encoder=tiny_encoder(), decoder=decoder).eval()
    input_ids, attention_mask = source_batch()
    with torch.no_grad():
        at_init = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids).logits
        assert (at_init - bare_logits).abs().max().item() <= 1e-6
        for block in decoder.cross_attention_blocks.values():
            torch.nn.init.constant_(block.ffn_gate, 0.5)
        ffn_only = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids).logits
    assert (ffn_only - bare_logits).abs().max().item() > 1e-4


def test_random_decoder_from_config_mirrors_the_lm_config():
    base = tiny_causal_lm_config("qwen2", use_sliding_window=True, tie_word_embeddings=True)
    config = CrossAttentionDecoderConfig(base_config=base, cross_attention_hidden_size=ENCODER_WIDTH)
    decoder = AutoModelForCausalLM.from_config(config)

    assert isinstance(decoder, CrossAttentionDecoderForCausalLM)
    assert type(decoder.lm).__name__ == "Qwen2ForCausalLM"
    for key in (
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "max_position_embeddings",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
        "tie_word_embeddings",
        "sliding_window",
        "layer_types",
    ):
        assert getattr(config, key) == getattr(base, key), key
    assert config.head_dim == base.hidden_size // base.num_attention_heads  # Qwen2Config itself has no head_dim
    assert config.is_decoder and config.add_cross_attention
    assert config.cross_attention_num_heads == base.num_attention_heads
    assert decoder.lm.lm_head.weight is decoder.lm.model.embed_tokens.weight
    assert all(block.attn_gate.item() == 0.0 for block in decoder.cross_attention_blocks.values())
    assert not hasattr(EncoderDecoderModel(encoder=tiny_encoder(), decoder=decoder), "enc_to_dec_proj")

    same_width = AutoModelForCausalLM.from_config(CrossAttentionDecoderConfig(base_config=base))
    assert hasattr(EncoderDecoderModel(encoder=tiny_encoder(), decoder=same_width), "enc_to_dec_proj")


def test_deep_copy_runs_its_own_cross_attention():
    # The per-layer hooks are bound methods of the wrapper, so a copy's layers must call the copy (EMA, SWA, ...).
    model = compose("llama", gate=1.0)
    clone = copy.deepcopy(model)
    for block in model.decoder.cross_attention_blocks.values():
        torch.nn.init.constant_(block.attn_gate, 0.0)
    input_ids, attention_mask = source_batch()
    with torch.no_grad():
        clone_logits = logits_of(clone, input_ids, attention_mask)
        bare_logits = logits_of(model, input_ids, attention_mask)
        del model
        assert torch.equal(logits_of(clone, *source_batch(seed=1)), logits_of(clone, *source_batch(seed=1)))
    assert (clone_logits - bare_logits).abs().max().item() > 1e-4


def test_fully_padded_source_keeps_logits_finite_and_exact_at_init():
    lm = tiny_lm("qwen2").eval()
    decoder_input_ids, decoder_attention_mask = decoder_batch()
    with torch.no_grad():
        bare_logits = lm(input_ids=decoder_input_ids, attention_mask=decoder_attention_mask).logits
        model = EncoderDecoderModel(encoder=tiny_encoder(), decoder=add_cross_attention(lm, encoder_hidden_size=24))
        input_ids, attention_mask = source_batch()
        attention_mask[1] = 0
        logits = logits_of(model.eval(), input_ids, attention_mask)
    assert torch.isfinite(logits).all()
    assert (logits - bare_logits).abs().max().item() <= 1e-6


def test_resizing_token_embeddings_survives_save_and_reload(tmp_path: Path):
    model = compose("gemma")  # tied input/output embeddings
    model.decoder.resize_token_embeddings(136)
    assert model.config.decoder.vocab_size == model.config.decoder.base_config.vocab_size == 136
    assert model.decoder.lm.lm_head.weight.shape[0] == 136
    input_ids, attention_mask = source_batch()
    with torch.no_grad():
        logits = logits_of(model, input_ids, attention_mask)
    model.save_pretrained(tmp_path)
    reloaded = EncoderDecoderModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(logits_of(reloaded, input_ids, attention_mask), logits)


def test_decoder_with_labels_returns_the_shifted_causal_lm_loss():
    lm = tiny_lm("llama").eval()
    decoder = add_cross_attention(lm)
    decoder_input_ids, _ = decoder_batch()
    with torch.no_grad():
        expected = lm(input_ids=decoder_input_ids, labels=decoder_input_ids).loss
        output = decoder(
            input_ids=decoder_input_ids, labels=decoder_input_ids, encoder_hidden_states=torch.randn(2, 5, 32)
        )
    assert torch.equal(output.loss, expected)


def test_gradient_checkpointing_gives_the_same_gradients():
    def gate_gradients(checkpointing: bool) -> tuple[list[torch.Tensor], int]:
        """The cross-attention gradients, and how many activation values the forward kept for backward."""
        model = compose("llama", gate=0.5).train()
        if checkpointing:
            model.activation_checkpointing_enable({"use_reentrant": False})
        input_ids, attention_mask = source_batch()
        labels, _ = decoder_batch()
        kept = []

        def pack(tensor):
            kept.append(tensor.numel())
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        loss.backward()
        return [p.grad.clone() for p in cross_attention_parameters(model)], sum(kept)

    (plain, kept_plain), (checkpointed, kept_checkpointed) = gate_gradients(False), gate_gradients(True)
    # Checkpointing was really on: the forward kept under half the activations (measured: 25986 of 72308 values).
    assert kept_checkpointed < 0.5 * kept_plain, (kept_checkpointed, kept_plain)
    assert len(plain) == len(checkpointed) == 14  # 2 blocks: gate, norm weight and bias, q, k, v, o projections
    assert all(gradient.abs().sum() > 0 for gradient in plain)
    for a, b in zip(plain, checkpointed):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


RELOAD_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    import encdec.cross_attention  # registers the wrapped decoder with the Auto classes
    from transformers import EncoderDecoderModel
    torch.set_num_threads(1)
    out_dir = sys.argv[1]
    inputs = torch.load(f"{out_dir}/inputs.pt")
    results = {}
    for family in sys.argv[2:]:
        model = EncoderDecoderModel.from_pretrained(f"{out_dir}/{family}").eval()
        with torch.no_grad():
            results[family] = model(**inputs).logits
        results[family + ":decoder_class"] = type(model.decoder).__name__
    torch.save(results, f"{out_dir}/reloaded.pt")
    """
)


def save_all_families(out_dir: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    input_ids, attention_mask = source_batch()
    decoder_input_ids, decoder_attention_mask = decoder_batch()
    inputs = dict(
        input_ids=input_ids,
        attention_mask=attention_mask,
        decoder_input_ids=decoder_input_ids,
        decoder_attention_mask=decoder_attention_mask,
    )
    torch.save(inputs, out_dir / "inputs.pt")
    expected = {}
    for family in ALL_FAMILIES:
        model = compose(family, gate=0.5)
        with torch.no_grad():
            expected[family] = model(**inputs).logits
        model.save_pretrained(out_dir / family)
        files = {p.name for p in (out_dir / family).iterdir()}
        assert "model.safetensors" in files and not any(name.endswith(".bin") for name in files), files
    return inputs, expected


def test_save_and_reload_gives_identical_logits(tmp_path: Path):
    inputs, expected = save_all_families(tmp_path)
    saved_config = json.loads((tmp_path / "gemma" / "config.json").read_text())
    assert saved_config["decoder"]["model_type"] == "encdec_cross_attention_decoder"
    assert saved_config["decoder"]["base_config"]["model_type"] == "gemma"
    for family in ALL_FAMILIES:
        model = EncoderDecoderModel.from_pretrained(tmp_path / family).eval()
        with torch.no_grad():
            assert torch.equal(model(**inputs).logits, expected[family]), family
        if family in ADDED_FAMILIES:
            assert isinstance(model.decoder, CrossAttentionDecoderForCausalLM)
            assert model.decoder.lm.config._attn_implementation in ("sdpa", "eager")


@pytest.mark.slow  # the fresh interpreter pays for importing the encdec package (lightning included)
def test_save_and_reload_in_a_fresh_process(tmp_path: Path):
    _, expected = save_all_families(tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), *sys.path])}
    subprocess.run(
        [sys.executable, "-c", RELOAD_SCRIPT, str(tmp_path), *ALL_FAMILIES], check=True, env=env, timeout=300
    )
    reloaded = torch.load(tmp_path / "reloaded.pt")
    for family in ALL_FAMILIES:
        assert torch.equal(reloaded[family], expected[family]), family
        if family in ADDED_FAMILIES:
            assert reloaded[family + ":decoder_class"] == "CrossAttentionDecoderForCausalLM"


@pytest.mark.parametrize("family", ["llama", "gpt_neox"])
def test_added_cross_attention_returns_its_weights_when_asked(family):
    # The cross-attention heatmap callback reads outputs.cross_attentions, as for BERT/GPT-2/BART decoders.
    model = compose(family, gate=0.5)
    input_ids, attention_mask = source_batch()
    decoder_input_ids, decoder_attention_mask = decoder_batch()
    inputs = dict(
        input_ids=input_ids,
        attention_mask=attention_mask,
        decoder_input_ids=decoder_input_ids,
        decoder_attention_mask=decoder_attention_mask,
    )
    with torch.no_grad():
        plain = model(**inputs)
        shown = model(**inputs, output_attentions=True)
    assert plain.cross_attentions is None
    torch.testing.assert_close(shown.logits, plain.logits)  # asking for weights changes no output
    blocks = list(model.decoder.cross_attention_blocks.values())
    assert len(shown.cross_attentions) == len(blocks)
    heads = blocks[0].num_heads
    for weights in shown.cross_attentions:
        assert weights.shape == (2, heads, decoder_input_ids.shape[1], SOURCE_LENGTH)
        torch.testing.assert_close(weights.sum(-1), torch.ones(2, heads, decoder_input_ids.shape[1]))
        assert weights[1, :, :, 5:].abs().max() == 0  # padded source positions get no attention
        assert weights[0, :, :, 5:].min() > 0


def test_beam_search_cache_with_an_explicit_dynamic_cache_implementation():
    """generation.cache_implementation=dynamic: generate refuses a cache object beside it, so encdec clears it."""
    from encdec.inference import generate_tokens

    model = compose("bert", gate=1.0)
    input_ids, attention_mask = source_batch()
    with torch.no_grad():
        plain = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=6, num_beams=3)
        model.generation_config.cache_implementation = "dynamic"
        ours = generate_tokens(model, input_ids, attention_mask, max_new_tokens=6, num_beams=3)
    assert torch.equal(ours, plain)
    assert model.generation_config.cache_implementation == "dynamic"  # the model's own setting is left as it was


def test_cross_attention_survives_a_strategy_that_strips_module_hooks():
    # Lightning's DeepSpeedStrategy clears every module's forward hooks before it wraps a model for validate or test;
    # the blocks hang off the decoder layers as hooks, so without re-installing them the decoder would ignore the source.
    from lightning.pytorch.strategies.deepspeed import remove_module_hooks

    model = compose("llama", gate=1.0)
    input_ids, attention_mask = source_batch()
    with torch.no_grad():
        before = logits_of(model, input_ids, attention_mask)
        remove_module_hooks(model)
        after = logits_of(model, input_ids, attention_mask)
        logits_of(model, input_ids, attention_mask)
    assert torch.equal(before, after)
    layers = find_decoder_layers(model.decoder.lm)
    hooks_per_layer = [len(layers[int(name)]._forward_hooks) for name in model.decoder.cross_attention_blocks]
    assert hooks_per_layer == [1] * len(model.decoder.cross_attention_blocks)  # re-installed once, not per forward
