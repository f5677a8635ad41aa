"""Layer-aligned (prefix) cross-attention: the pair computes the pretrained LM on [source; summary] at step 0."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer, BertConfig, BertModel, EncoderDecoderModel
from transformers.cache_utils import DynamicLayer

from encdec import pairings
from encdec.errors import EncdecError
from encdec.prefix_attention import PrefixDecoderForCausalLM, PrefixEncoderModel, ReservedLayer, pair
from encdec.tiny_configs import tiny_causal_lm_config

FAMILIES = ["llama", "qwen2", "gpt2", "gemma"]
START, PAD, EOS = 1, 0, 2


pytestmark = pytest.mark.usefixtures("single_thread")


def lm_of(family: str):
    torch.manual_seed(0)
    config = tiny_causal_lm_config(family)
    if hasattr(config, "use_sliding_window"):
        config.use_sliding_window = False
    return AutoModelForCausalLM.from_config(config).eval()


def compose(lm) -> EncoderDecoderModel:
    base = AutoModel.from_config(lm.config)
    base.load_state_dict(lm.base_model.state_dict())
    encoder, decoder = pair(base, copy.deepcopy(lm))
    model = EncoderDecoderModel(encoder=encoder, decoder=decoder)
    for config in (model.config, model.generation_config):
        config.decoder_start_token_id, config.pad_token_id, config.eos_token_id = START, PAD, EOS
    return model.eval()


def batch():
    generator = torch.Generator().manual_seed(3)
    input_ids = torch.randint(3, 128, (3, 7), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 4:] = 0  # right-padded source
    attention_mask[2, 6:] = 0
    decoder_input_ids = torch.randint(3, 128, (3, 5), generator=generator)
    decoder_input_ids[:, 0] = START
    decoder_attention_mask = torch.ones_like(decoder_input_ids)
    decoder_attention_mask[0, 3:] = 0
    return input_ids, attention_mask, decoder_input_ids, decoder_attention_mask


@pytest.mark.parametrize("family", FAMILIES)
def test_step_zero_equals_the_lm_reading_source_then_summary(family):
    lm = lm_of(family)
    model = compose(lm)
    input_ids, attention_mask, decoder_input_ids, decoder_attention_mask = batch()
    with torch.no_grad():
        logits = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask,
        ).logits
        for row in range(3):
            source = input_ids[row, attention_mask[row].bool()]
            target = decoder_input_ids[row, decoder_attention_mask[row].bool()]
            alone = lm(input_ids=torch.cat([source, target])[None]).logits[0, len(source) :]
            torch.testing.assert_close(logits[row, : len(target)], alone, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_generation_equals_the_lm_continuing_the_source(family):
    lm = lm_of(family)
    model = compose(lm)
    input_ids, attention_mask, *_ = batch()
    with torch.no_grad():
        greedy = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=6, min_new_tokens=6)
        uncached = model.generate(
            input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=6, min_new_tokens=6, use_cache=False
        )
        beams = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=6, num_beams=3)
        for row in range(3):
            source = input_ids[row, attention_mask[row].bool()]
            prompt = torch.cat([source, torch.tensor([START])])[None]
            alone = lm.generate(
                input_ids=prompt,
                max_new_tokens=6,
                min_new_tokens=6,
                do_sample=False,
                pad_token_id=PAD,
                eos_token_id=EOS,
            )
            assert torch.equal(greedy[row], alone[0, len(source) :]), row
            alone_beams = lm.generate(
                input_ids=prompt, max_new_tokens=6, num_beams=3, do_sample=False, pad_token_id=PAD, eos_token_id=EOS
            )[0, len(source) :]
            assert torch.equal(beams[row, : len(alone_beams)], alone_beams), row
    assert torch.equal(greedy, uncached)


def test_training_moves_both_sides_and_the_loss_falls():
    model = compose(lm_of("llama")).train()
    input_ids, attention_mask, decoder_input_ids, decoder_attention_mask = batch()
    labels = torch.cat([decoder_input_ids[:, 1:], torch.full((3, 1), EOS)], dim=1)
    labels[decoder_attention_mask == 0] = -100
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(8):
        loss = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask,
            labels=labels,
        ).loss
        loss.backward()
        if not losses:
            encoder_grad = model.encoder.model.layers[0].self_attn.k_proj.weight.grad
            assert encoder_grad is not None and encoder_grad.abs().sum() > 0  # the source's keys learn too
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_save_and_reload_gives_the_same_logits(tmp_path):
    model = compose(lm_of("llama"))
    input_ids, attention_mask, decoder_input_ids, decoder_attention_mask = batch()
    model.save_pretrained(tmp_path)
    reloaded = EncoderDecoderModel.from_pretrained(tmp_path).eval()
    assert isinstance(reloaded.encoder, PrefixEncoderModel) and isinstance(reloaded.decoder, PrefixDecoderForCausalLM)
    with torch.no_grad():
        kwargs = dict(
            input_ids=input_ids,
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask,
        )
        assert torch.equal(model(**kwargs).logits, reloaded(**kwargs).logits)


def test_pairs_that_cannot_share_keys_and_values_are_refused():
    lm = lm_of("llama")
    deeper = AutoModel.from_config(tiny_causal_lm_config("llama", num_hidden_layers=3))
    with pytest.raises(ValueError, match="encoder has model_type=llama, num_hidden_layers=3"):
        pair(deeper, lm)
    bert = BertModel(
        BertConfig(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    )
    with pytest.raises(ValueError, match="the encoder is .bert.; use decoder.cross_attention.kind=gated"):
        pair(bert, lm)


TINY_LLAMA = [
    "init=random",
    "overrides.hidden_size=64",
    "overrides.num_hidden_layers=2",
    "overrides.head_dim=16",
    "overrides.num_attention_heads=4",
    "overrides.num_key_value_heads=2",
    "overrides.intermediate_size=128",
]


def test_train_py_pairs_one_llm_on_both_sides_through_keys_and_values(tmp_path):
    """The default pairing (SmolLM2 on both sides, kind=auto) as a tiny random Llama: prefix, encoder frozen."""
    from conftest import SMOKE, run_script

    run_dir = tmp_path / "run"
    sides = [f"{side}.{setting}" for side in ("encoder", "decoder") for setting in TINY_LLAMA]
    result = run_script("train.py", *SMOKE, *sides, f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    log = (run_dir / "train.log").read_text() + result.stdout + result.stderr
    assert "decoder.cross_attention.kind=auto: prefix" in log
    assert "model.freeze_encoder=null: the encoder is frozen" in log
    assert "model.freeze_decoder_layers=null: the decoder's embeddings and first 1 of 2 layers stay fixed" in log
    model = EncoderDecoderModel.from_pretrained(run_dir / "hf_model")
    assert isinstance(model.encoder, PrefixEncoderModel) and isinstance(model.decoder, PrefixDecoderForCausalLM)
    assert not any(name.startswith("enc_to_dec_proj") for name, _ in model.named_parameters())
    # no parameter was added: the encoder's base model and the decoder's LM (its head tied to its embeddings)
    assert len(list(model.parameters())) == 2 * len(list(model.encoder.model.parameters()))

    # The export carries the prefix pair's code: it loads and generates the same tokens where encdec is not installed.

    from encdec import inference
    from test_export import DOCUMENTS, load_without_encdec

    target = run_dir / "hf_model"
    assert "prefix_attention.py" in {p.name for p in target.glob("*.py")}
    loaded = load_without_encdec(target, tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(target)
    batch = tokenizer(DOCUMENTS, return_tensors="pt", padding=True)
    assert (
        loaded["greedy"]
        == inference.generate_tokens(model.eval(), batch["input_ids"], batch["attention_mask"]).tolist()
    )


def test_kind_auto_picks_prefix_only_for_one_architecture_and_bad_kinds_are_refused():
    from conftest import compose_config
    from encdec.models import build_model, cross_attention_kind, encoder_frozen, side_config

    def side(role):  # compose (unlike the command line) needs + for keys the preset does not list
        return [("+" if setting.startswith("overrides.") else "") + f"{role}.{setting}" for setting in TINY_LLAMA]

    tiny_llama = [*side("encoder"), *side("decoder")]
    llama_pair = compose_config(*tiny_llama)
    mixed = compose_config("encoder=tiny", *side("decoder"))
    llama_config = side_config(llama_pair.encoder, "encoder")[1]
    assert cross_attention_kind(llama_pair.decoder, llama_config) == "prefix"
    assert cross_attention_kind(mixed.decoder, BertConfig()) == "gated"
    deeper = side_config(
        compose_config(
            *side("decoder"),
            *[o for o in side("encoder") if "num_hidden_layers" not in o],
            "+encoder.overrides.num_hidden_layers=3",
        ).encoder,
        "encoder",
    )[1]
    assert cross_attention_kind(llama_pair.decoder, deeper) == "gated"
    assert encoder_frozen(llama_pair.model, "prefix") and not encoder_frozen(llama_pair.model, "gated")
    assert not encoder_frozen(compose_config(*tiny_llama, "model.freeze_encoder=false").model, "prefix")
    model, _, _ = build_model(llama_pair)
    assert isinstance(model.decoder, PrefixDecoderForCausalLM)
    assert not any(p.requires_grad for p in model.encoder.parameters())
    # model.freeze_decoder_layers=null: a third of the decoder's 2 layers (rounded: 1) and its embeddings stay fixed
    fixed = {name for name, p in model.decoder.named_parameters() if not p.requires_grad}
    assert fixed == {
        name
        for name, _ in model.decoder.named_parameters()
        if name.startswith(("lm.model.layers.0.", "lm.model.embed"))
    }
    assert all(p.requires_grad for p in model.decoder.lm.model.layers[1].parameters())
    trained_all, _, _ = build_model(compose_config(*tiny_llama, "model.freeze_decoder_layers=0"))
    assert all(p.requires_grad for p in trained_all.decoder.parameters())
    from encdec.checks import validate

    with pytest.raises(
        EncdecError, match=f"decoder.cross_attention.kind=bogus: use {' or '.join(('auto', *pairings.names()))}$"
    ):
        validate(compose_config(*tiny_llama, "decoder.cross_attention.kind=bogus"))
    with pytest.raises(EncdecError, match=r"kind=prefix: it needs a decoder-only LM .* the encoder is 'bert'"):
        build_model(compose_config("encoder=tiny", *side("decoder"), "decoder.cross_attention.kind=prefix"))


def test_reserved_layers_hold_what_dynamic_layers_hold_through_growth_and_beam_reorders():
    plain, reserved = DynamicLayer(), ReservedLayer(reserve=2)
    generator = torch.Generator().manual_seed(0)
    rooms = set()
    for step, length in enumerate([5, 1, 1, 1, 3, 1, 1, 1, 1, 1]):
        keys, values = (torch.randn(4, 2, length, 3, generator=generator) for _ in range(2))
        expected, got = plain.update(keys, values), reserved.update(keys, values)
        rooms.add(reserved._room[0].data_ptr())
        assert all(torch.equal(a, b) for a, b in zip(expected, got)), step
        if step == 6:  # beam search's calls between steps give new tensors; the next update reserves anew
            order = torch.tensor([3, 1, 1, 0])
            plain.reorder_cache(order)
            reserved.reorder_cache(order)
    assert reserved.get_seq_length() == plain.get_seq_length() == 16
    assert 1 < len(rooms) < 10  # grew in place between reservations, not a new tensor per step as torch.cat


@pytest.mark.parametrize("num_beams", [1, 3])
def test_generation_through_reserved_room_gives_the_scores_of_concatenation(monkeypatch, num_beams):
    import encdec.prefix_attention as prefix_attention

    model = compose(lm_of("llama"))
    input_ids, attention_mask, *_ = batch()
    kwargs = dict(max_new_tokens=9, min_new_tokens=9, num_beams=num_beams, output_scores=True)
    kwargs.update(return_dict_in_generate=True)
    with torch.no_grad():
        monkeypatch.setattr(prefix_attention, "ReservedLayer", functools.partial(ReservedLayer, reserve=2))
        reserved = model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        layers = reserved.past_key_values.self_attention_cache.layers
        assert all(isinstance(layer, ReservedLayer) for layer in layers)
        monkeypatch.setattr(prefix_attention, "reserve_room", lambda cache: None)
        plain = model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        assert type(plain.past_key_values.self_attention_cache.layers[0]) is DynamicLayer
    assert torch.equal(reserved.sequences, plain.sequences)
    assert all(torch.equal(a, b) for a, b in zip(reserved.scores, plain.scores))
