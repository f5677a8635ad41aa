"""Pairing kind `prefix_states`: the decoder's own key/value projections read what enters each encoder layer. Step 0
equals the `prefix` kind bit for bit; training sends the summary loss through the source into those projections."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import AutoModel, AutoTokenizer, EncoderDecoderModel

from encdec import prefix_states
from encdec.prefix_attention import pair
from test_prefix_attention import EOS, PAD, START, TINY_LLAMA, batch, compose, lm_of

pytestmark = pytest.mark.usefixtures("single_thread")


def compose_states(lm) -> EncoderDecoderModel:
    base = AutoModel.from_config(lm.config)
    base.load_state_dict(lm.base_model.state_dict())
    encoder, decoder, *_ = prefix_states.build(base, copy.deepcopy(lm))
    model = EncoderDecoderModel(encoder=encoder, decoder=decoder)
    for config in (model.config, model.generation_config):
        config.decoder_start_token_id, config.pad_token_id, config.eos_token_id = START, PAD, EOS
    return model.eval()


def labelled(decoder_input_ids, decoder_attention_mask):
    labels = torch.cat([decoder_input_ids[:, 1:], torch.full((decoder_input_ids.shape[0], 1), EOS)], dim=1)
    labels[decoder_attention_mask == 0] = -100
    return labels


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "mistral"])
def test_step_zero_equals_the_prefix_kind_bit_for_bit(family):
    lm = lm_of(family)
    input_ids, attention_mask, decoder_input_ids, decoder_attention_mask = batch()
    inputs = dict(
        input_ids=input_ids,
        attention_mask=attention_mask,
        decoder_input_ids=decoder_input_ids,
        decoder_attention_mask=decoder_attention_mask,
    )
    with torch.no_grad():
        theirs = compose(lm)(**inputs).logits
        ours = compose_states(lm)(**inputs).logits
        greedy = dict(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=6, min_new_tokens=6)
        assert torch.equal(compose(lm).generate(**greedy), compose_states(lm).generate(**greedy))
    assert torch.equal(ours, theirs)


def test_the_summary_loss_reaches_the_decoders_projections_through_the_source_only_there():
    """Same batch, same weights: the decoder's key projection gets a different gradient than under `prefix` (the
    source's keys are its own now), its query projection the same one, and the frozen encoder none."""
    lm = lm_of("llama")
    input_ids, attention_mask, decoder_input_ids, decoder_attention_mask = batch()
    grads = {}
    for name, model in (("prefix", compose(lm)), ("states", compose_states(lm))):
        model.train()
        model.encoder.requires_grad_(False)
        model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask,
            labels=labelled(decoder_input_ids, decoder_attention_mask),
        ).loss.backward()
        attention = model.decoder.lm.model.layers[0].self_attn
        grads[name] = {part: getattr(attention, part).weight.grad.clone() for part in ("q_proj", "k_proj", "v_proj")}
        assert all(p.grad is None for p in model.encoder.parameters())
    for part in ("k_proj", "v_proj"):
        difference = (grads["states"][part] - grads["prefix"][part]).abs().max().item()
        assert difference > 1e-4 * grads["prefix"][part].abs().max().item(), part
    torch.testing.assert_close(grads["states"]["q_proj"], grads["prefix"]["q_proj"], rtol=1e-4, atol=1e-7)


def test_pairs_it_cannot_read_are_refused_by_name():
    gpt2 = lm_of("gpt2")
    with pytest.raises(
        ValueError, match="kind=prefix_states: it makes the source's keys as llama, .* the decoder is 'gpt2'"
    ):
        prefix_states.build(AutoModel.from_config(gpt2.config), gpt2)
    llama = lm_of("llama")
    with pytest.raises(ValueError, match="kind=prefix_states: the decoder reads the encoder's keys and values"):
        prefix_states.build(AutoModel.from_config(lm_of("qwen2").config), llama)
    with pytest.raises(ValueError, match="handed over 7 values per source token, the decoder reads"):
        compose_states(llama).decoder._fill_cache(None, torch.zeros(1, 2, 7), torch.ones(1, 2))
    encoder, decoder = pair(AutoModel.from_config(llama.config), llama)  # the prefix kind still pairs them
    assert decoder.config.model_type == "encdec_prefix_decoder"


def test_train_py_trains_it_exports_it_and_it_generates_the_same_without_encdec(tmp_path):
    from conftest import SMOKE, run_script
    from encdec import inference
    from test_export import DOCUMENTS, load_without_encdec

    run_dir = tmp_path / "run"
    sides = [f"{side}.{setting}" for side in ("encoder", "decoder") for setting in TINY_LLAMA]
    result = run_script(
        "train.py", *SMOKE, *sides, "decoder.cross_attention.kind=prefix_states", f"hydra.run.dir={run_dir}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "model.freeze_encoder=null: the encoder is frozen (decoder.cross_attention.kind=prefix_states)" in (
        (run_dir / "train.log").read_text() + result.stdout + result.stderr
    )
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["train/steps"] == 2 and 0 < metrics["val/loss"] < 20
    target = run_dir / "hf_model"
    assert {"prefix_states.py", "prefix_attention.py"} <= {p.name for p in target.glob("*.py")}
    model = EncoderDecoderModel.from_pretrained(target).eval()
    assert type(model.decoder).__name__ == "StatesDecoderForCausalLM"
    from_checkpoint, _, _ = inference.load_trained(run_dir / "checkpoints" / "last.ckpt")
    tokenizer = AutoTokenizer.from_pretrained(target)
    inputs = tokenizer(DOCUMENTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        labels = torch.tensor([[5, 6, 7, 8]] * len(DOCUMENTS))
        assert torch.allclose(
            model(**inputs, labels=labels).logits, from_checkpoint.eval()(**inputs, labels=labels).logits, atol=1e-5
        )
    loaded = load_without_encdec(target, tmp_path)
    assert loaded["greedy"] == inference.generate_tokens(model, inputs["input_ids"], inputs["attention_mask"]).tolist()
    beam = inference.generate_tokens(model, inputs["input_ids"], inputs["attention_mask"], num_beams=3)
    assert loaded["beam"] == beam.tolist()
