"""Freezing and LoRA: which parameters train, and that a merged LoRA export computes the same function."""

from __future__ import annotations

import torch
from omegaconf import OmegaConf
from transformers import BertConfig, BertModel, EncoderDecoderModel, LlamaForCausalLM

from conftest import compose_config
from encdec import finetune
from encdec.cross_attention import add_cross_attention
from encdec.models import build_model
from encdec.tiny_configs import tiny_causal_lm_config


def tiny_llama_pair() -> EncoderDecoderModel:
    torch.manual_seed(0)
    encoder = BertModel(
        BertConfig(vocab_size=128, hidden_size=48, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64),
        add_pooling_layer=False,
    )
    decoder = add_cross_attention(LlamaForCausalLM(tiny_causal_lm_config("llama")), encoder_hidden_size=48)
    return EncoderDecoderModel(encoder=encoder, decoder=decoder)


def model_cfg(**values):
    base = OmegaConf.to_container(compose_config().model)
    base.update(values)
    return OmegaConf.create(base)


def trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_freeze_decoder_keeps_native_cross_attention_trainable():
    model, _, _ = build_model(
        compose_config("encoder=tiny", "decoder=tiny", "model.freeze_decoder=true", "model.freeze_encoder=true")
    )
    names = trainable(model)
    assert names and all("crossattention" in n for n in names)
    assert len(names) == 2 * 10  # q, k, v, output dense and layer norm (weight + bias each), 2 layers


def test_freeze_decoder_on_added_cross_attention():
    model = tiny_llama_pair()
    finetune.apply(model, model_cfg(freeze_decoder=True))
    names = trainable(model)
    assert any(n.startswith("encoder.") for n in names)
    decoder_names = {n for n in names if n.startswith("decoder.")}
    assert decoder_names and all("cross_attention_blocks" in n for n in decoder_names)
    total, train = finetune.count_parameters(model)
    assert 0 < train < total


def test_lora_trains_adapters_and_merges_to_the_same_function():
    model = tiny_llama_pair()
    finetune.apply(
        model,
        model_cfg(
            lora={
                "r": 4,
                "lora_alpha": 8,
                "lora_dropout": 0.0,
                "target_modules": ["q_proj", "v_proj"],
                "side": "decoder",
            }
        ),
    )
    names = trainable(model)
    assert any("lora_A" in n for n in names) and any("lora_B" in n for n in names)
    assert not any("q_proj.base_layer" in n and "cross_attention_blocks" not in n for n in names)
    # The added cross-attention is new: all of it trains, its zero-initialised gates included.
    cross = {n for n, _ in model.named_parameters() if "cross_attention_blocks" in n}
    assert any(n.endswith("gate") for n in cross) and cross <= names
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)  # lora_B starts at zero; make the adapter matter
    model.eval()
    inputs = {"input_ids": torch.randint(3, 128, (2, 7)), "decoder_input_ids": torch.randint(3, 128, (2, 5))}
    with torch.no_grad():
        expected = model(**inputs).logits
        merged = finetune.merged_copy(model)
        got = merged(**inputs).logits
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert torch.allclose(expected, got, atol=1e-5), (expected - got).abs().max()
    assert any("lora" in n for n, _ in model.named_parameters())  # the training model keeps its adapters


def test_lora_checkpoint_loads_merged_with_the_same_function(tmp_path):
    """eval.py/predict.py on a LoRA run's .ckpt: the adapters are merged into plain weights, the function unchanged."""
    from encdec.inference import load_trained

    cfg = compose_config(
        "encoder=tiny",
        "decoder=tiny",
        "model.lora.r=4",
        "model.lora.lora_dropout=0.0",
        "model.lora.target_modules=[query,value]",
    )
    torch.manual_seed(0)
    model, _, _ = build_model(cfg)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)  # lora_B starts at zero; make the adapter matter
    model.eval()
    checkpoint = {
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        "encdec": {
            # the parts of the run config that loading reads (the rest holds Hydra-only interpolations)
            "config": {
                k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("encoder", "decoder", "model", "generation")
            },
            "model_config": model.config.to_dict(),
        },
    }
    torch.save(checkpoint, tmp_path / "lora.ckpt")
    loaded, _, _ = load_trained(tmp_path / "lora.ckpt")
    assert not any("lora" in n for n, _ in loaded.named_parameters())
    inputs = {"input_ids": torch.randint(3, 100, (2, 7)), "decoder_input_ids": torch.randint(3, 100, (2, 5))}
    with torch.no_grad():
        expected, got = model(**inputs).logits, loaded(**inputs).logits
    assert torch.allclose(expected, got, atol=1e-5), (expected - got).abs().max()


def test_lora_keeps_native_cross_attention_trainable():
    model, _, _ = build_model(
        compose_config("encoder=tiny", "decoder=tiny", "model.lora.r=4", "model.lora.target_modules=[query,value]")
    )
    names = trainable(model)
    decoder = {n for n in names if n.startswith("decoder.")}
    cross = {n for n, _ in model.decoder.named_parameters() if "crossattention" in n and "lora_" not in n}
    assert {f"decoder.{n}" for n in cross} <= decoder and len(cross) >= 2 * 10
    assert decoder - {f"decoder.{n}" for n in cross} == {n for n in decoder if "lora_" in n}
    assert any("crossattention" not in n and "base_layer" in n for n, _ in model.decoder.named_parameters())


def test_lora_run_moves_the_gates(tmp_path):
    """One optimizer step of a LoRA model: the gates (zero at the start) move, so the decoder starts to read the source."""
    model = tiny_llama_pair()
    finetune.apply(
        model,
        model_cfg(
            lora={
                "r": 4,
                "lora_alpha": 8,
                "lora_dropout": 0.0,
                "target_modules": ["q_proj", "v_proj"],
                "side": "decoder",
            }
        ),
    )
    gates = {
        n: p.detach().clone()
        for n, p in model.named_parameters()
        if "cross_attention_blocks" in n and n.endswith("gate")
    }
    assert gates and all((g == 0).all() for g in gates.values())
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    inputs = {
        "input_ids": torch.randint(3, 128, (2, 7)),
        "decoder_input_ids": torch.randint(3, 128, (2, 5)),
        "labels": torch.randint(3, 128, (2, 5)),
    }
    model(**inputs).loss.backward()
    optimizer.step()
    moved = dict(model.named_parameters())
    assert all((moved[n] != 0).any() for n in gates), "a gate stayed at zero"


def test_lora_targets_not_in_the_decoder_name_its_layers():
    import pytest

    from encdec.errors import EncdecError

    with pytest.raises(EncdecError) as caught:
        build_model(compose_config("encoder=tiny", "decoder=tiny", "model.lora.r=4"))  # Llama names on a BERT decoder
    message = str(caught.value)
    assert message.startswith("model.lora.target_modules=['q_proj', 'v_proj']: ")
    assert message.endswith("e.g. model.lora.target_modules=[query,value]")
    assert "The decoder's linear layers are named decoder, dense, key, query, value:" in message


def test_freeze_decoder_layers_stops_backward_above_them_and_keeps_cross_attention_learning():
    """The tiny pair's decoder has 2 layers: with 1 frozen, its embeddings (and the tied head) and layer 0 get no
    gradient, layer 1 and every cross-attention block do, and the loss still falls."""
    model = tiny_llama_pair()
    finetune.apply(model, model_cfg(freeze_decoder_layers=1))
    layers = model.decoder.lm.model.layers
    assert finetune.decoder_layers(model.decoder) is layers and len(layers) == 2
    input_ids = torch.randint(3, 128, (2, 6))
    labels = torch.randint(3, 128, (2, 5))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(6):
        loss = model(input_ids=input_ids, decoder_input_ids=labels, labels=labels).loss
        loss.backward()
        losses.append(loss.item())
        if len(losses) == 1:
            with_grad = {n for n, p in model.decoder.named_parameters() if p.grad is not None}
        optimizer.step()
        optimizer.zero_grad()
    assert model.decoder.get_input_embeddings().weight.grad is None
    assert not any(n.startswith("lm.model.layers.0.") and "cross_attention" not in n for n in with_grad)
    assert any(n.startswith("lm.model.layers.1.") for n in with_grad)
    blocks = {n for n in with_grad if "cross_attention_blocks" in n}
    assert blocks == {n for n, _ in model.decoder.named_parameters() if "cross_attention_blocks" in n}
    assert losses[-1] < 0.8 * losses[0], losses


def test_freeze_decoder_layers_beyond_the_stack_names_its_size():
    import pytest

    from encdec.errors import EncdecError

    with pytest.raises(EncdecError, match=r"^model.freeze_decoder_layers=3: the decoder has 2 layers; use 0 to 2$"):
        finetune.apply(tiny_llama_pair(), model_cfg(freeze_decoder_layers=3))
