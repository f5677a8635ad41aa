"""model.attn_implementation, model.gradient_checkpointing and model.compile: same numbers, different cost."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from conftest import compose_config
from encdec.errors import EncdecError
from encdec.lit.module import Seq2SeqModule
from encdec.models import build_model

NO_DROPOUT = [
    f"+{side}.overrides.{key}=0.0"
    for side in ("encoder", "decoder")
    for key in ("hidden_dropout_prob", "attention_probs_dropout_prob")
]


def build(*overrides: str):
    torch.manual_seed(0)
    model, encoder_tokenizer, decoder_tokenizer = build_model(
        compose_config("encoder=tiny", "decoder=tiny", *NO_DROPOUT, *overrides)
    )
    return model, encoder_tokenizer, decoder_tokenizer


def loss_and_grads(model, encoder_tokenizer, decoder_tokenizer, compile: bool = False):
    source = encoder_tokenizer(["a paper about parsing with graphs", "short"], return_tensors="pt", padding=True)
    target = decoder_tokenizer(["parsing graphs", "a much longer summary of it"], return_tensors="pt", padding=True)
    labels = target["input_ids"].masked_fill(target["attention_mask"] == 0, -100)
    start = torch.full((2, 1), model.config.decoder_start_token_id)
    batch = {
        "input_ids": source["input_ids"],
        "attention_mask": source["attention_mask"],
        "decoder_input_ids": torch.cat([start, target["input_ids"][:, :-1]], 1),
        "decoder_attention_mask": torch.cat([torch.ones(2, 1, dtype=torch.long), target["attention_mask"][:, :-1]], 1),
        "labels": labels,
    }
    module = Seq2SeqModule(model, decoder_tokenizer, optimizer=torch.optim.AdamW, compile=compile)
    model.train()
    model.zero_grad()
    loss = module.loss(batch)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, module


def test_default_attention_is_sdpa_on_both_sides():
    model, _, _ = build()
    assert model.encoder.config._attn_implementation == "sdpa"
    assert model.decoder.config._attn_implementation == "sdpa"


def test_eager_attention_gives_the_same_loss_and_gradients():
    sdpa_loss, sdpa_grads, _ = loss_and_grads(*build())
    model, *tokenizers = build("model.attn_implementation=eager")
    assert model.encoder.config._attn_implementation == model.decoder.config._attn_implementation == "eager"
    eager_loss, eager_grads, _ = loss_and_grads(model, *tokenizers)
    assert eager_loss == pytest.approx(sdpa_loss, rel=1e-5)
    assert set(eager_grads) == set(sdpa_grads)
    assert all(torch.allclose(eager_grads[n], sdpa_grads[n], atol=1e-5) for n in sdpa_grads)


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is not None, reason="flash-attn is installed here")
def test_unavailable_attention_is_one_line_naming_the_setting():
    with pytest.raises(EncdecError, match=r"^model\.attn_implementation=flash_attention_2: .*\(null keeps"):
        build("model.attn_implementation=flash_attention_2")


def test_gradient_checkpointing_recomputes_to_the_same_gradients():
    plain_loss, plain_grads, _ = loss_and_grads(*build())
    model, *tokenizers = build("model.gradient_checkpointing=true")
    for side in (model.encoder, model.decoder):
        assert getattr(side, "is_activation_checkpointing", None) or side.is_gradient_checkpointing
    ckpt_loss, ckpt_grads, _ = loss_and_grads(model, *tokenizers)
    assert ckpt_loss == pytest.approx(plain_loss, rel=1e-6)
    assert set(ckpt_grads) == set(plain_grads)
    assert all(torch.allclose(ckpt_grads[n], plain_grads[n], atol=1e-6) for n in plain_grads)


def test_compile_leaves_parameter_names_and_generation_alone(monkeypatch):
    compiled = []

    def fake_compile(function, **kwargs):
        compiled.append(kwargs)
        return function

    monkeypatch.setattr(torch, "compile", fake_compile)
    model, encoder_tokenizer, decoder_tokenizer = build()
    names = list(Seq2SeqModule(model, decoder_tokenizer, optimizer=torch.optim.AdamW).state_dict())
    module = Seq2SeqModule(model, decoder_tokenizer, optimizer=torch.optim.AdamW, compile=True)
    assert compiled == [{"dynamic": False, "backend": "inductor"}]  # static widths: one graph per bucket
    assert list(module.state_dict()) == names  # checkpoints of compiled runs load anywhere


@pytest.mark.slow
def test_compiled_forward_matches_eager():
    eager_loss, eager_grads, _ = loss_and_grads(*build())
    compiled_loss, compiled_grads, module = loss_and_grads(*build(), compile=True)
    assert module._compiled_forward is not None
    assert compiled_loss == pytest.approx(eager_loss, rel=1e-4)
    assert all(torch.allclose(compiled_grads[n], eager_grads[n], atol=1e-4) for n in eager_grads)


def sdpa_backends_seen(function, *args, **kwargs) -> dict[str, bool]:
    """Which SDPA backends were enabled while `function` ran."""
    seen = {}

    def probe(*_a, **_k):
        seen.update(
            cudnn=torch.backends.cuda.cudnn_sdp_enabled(),
            flash=torch.backends.cuda.flash_sdp_enabled(),
            efficient=torch.backends.cuda.mem_efficient_sdp_enabled(),
            math=torch.backends.cuda.math_sdp_enabled(),
        )

    function(probe, *args, **kwargs)
    return seen


@pytest.mark.parametrize("cudnn", [False, True])
def test_cudnn_attention_is_left_out_of_training_and_generation_unless_asked(cudnn, monkeypatch):
    from encdec.inference import generate_texts

    model, encoder_tokenizer, decoder_tokenizer = build()
    original_forward = model.forward

    def in_training_forward(probe):
        def forward(*args, **kwargs):
            probe()
            return original_forward(*args, **kwargs)

        monkeypatch.setattr(model, "forward", forward)
        module = Seq2SeqModule(model, decoder_tokenizer, optimizer=torch.optim.AdamW, cudnn_attention=cudnn)
        module.loss(
            {
                "input_ids": torch.tensor([[5, 6, 7]]),
                "attention_mask": torch.ones(1, 3, dtype=torch.long),
                "decoder_input_ids": torch.tensor([[1, 8]]),
                "decoder_attention_mask": torch.ones(1, 2, dtype=torch.long),
                "labels": torch.tensor([[8, 2]]),
            }
        )

    def in_generation(probe):
        original = model.generate

        def generate(*args, **kwargs):
            probe()
            return original(*args, **kwargs)

        monkeypatch.setattr(model, "generate", generate)
        source = encoder_tokenizer(["a paper about graphs"], return_tensors="pt")
        texts = generate_texts(
            model.eval(),
            decoder_tokenizer,
            source["input_ids"],
            source["attention_mask"],
            cudnn_attention=cudnn,
            max_new_tokens=3,
        )
        assert len(texts) == 1

    default = torch.backends.cuda.cudnn_sdp_enabled()
    for seen in (sdpa_backends_seen(in_training_forward), sdpa_backends_seen(in_generation)):
        assert seen == {"cudnn": default if cudnn else False, "flash": True, "efficient": True, "math": True}
    assert torch.backends.cuda.cudnn_sdp_enabled() == default  # restored afterwards
