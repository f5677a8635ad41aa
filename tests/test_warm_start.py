"""Warm-start levers: cross-attention started from self-attention, gates, new parameters and their learning rate,
the lead baselines, and lead copies of the training documents."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertModel, EncoderDecoderModel, GPT2Config, GPT2LMHeadModel

from conftest import compose_config
from encdec.cross_attention import add_cross_attention
from encdec.errors import EncdecError
from encdec.lit.module import Seq2SeqModule
from encdec.metrics import lead, lead_baselines, rouge
from encdec.models import build_model
from encdec.tiny_configs import tiny_causal_lm_config
from encdec.warm_start import cross_attention_from_self_attention, new_parameter_names, open_gates


def test_bert_cross_attention_starts_as_its_layers_self_attention():
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        is_decoder=True,
        add_cross_attention=True,
    )
    from transformers import BertLMHeadModel

    decoder = BertLMHeadModel(config)
    layer = decoder.bert.encoder.layer[1]
    assert not torch.equal(layer.crossattention.self.key.weight, layer.attention.self.key.weight)
    copied = cross_attention_from_self_attention(decoder, encoder_hidden_size=32)
    assert copied == 2 * 10  # query, key, value, output dense (weights and biases) and LayerNorm, per layer
    for self_part, cross_part in (
        (layer.attention.self.query, layer.crossattention.self.query),
        (layer.attention.self.value, layer.crossattention.self.value),
        (layer.attention.output.dense, layer.crossattention.output.dense),
    ):
        assert torch.equal(self_part.weight, cross_part.weight) and torch.equal(self_part.bias, cross_part.bias)


def test_gpt2_fused_projection_is_split_into_query_and_key_value():
    torch.manual_seed(0)
    decoder = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=4, add_cross_attention=True))
    block = decoder.transformer.h[0]
    cross_attention_from_self_attention(decoder, encoder_hidden_size=32)
    assert torch.equal(block.crossattention.q_attn.weight, block.attn.c_attn.weight[:, :32])
    assert torch.equal(block.crossattention.c_attn.weight, block.attn.c_attn.weight[:, 32:])
    assert torch.equal(block.crossattention.c_proj.weight, block.attn.c_proj.weight)
    assert torch.equal(block.ln_cross_attn.weight, block.ln_1.weight)


@pytest.mark.parametrize("encoder_width,keys_copied", [(32, True), (24, False)])
def test_added_blocks_take_queries_always_and_grouped_keys_when_the_widths_match(encoder_width, keys_copied):
    torch.manual_seed(0)
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_config(tiny_causal_lm_config("llama"))  # 4 query heads over 2 key/value heads
    decoder = add_cross_attention(lm, encoder_hidden_size=encoder_width)
    cross_attention_from_self_attention(decoder, encoder_hidden_size=encoder_width)
    attention, block = lm.model.layers[1].self_attn, decoder.cross_attention_blocks["1"]
    assert torch.equal(block.q_proj.weight, attention.q_proj.weight)
    assert torch.equal(block.o_proj.weight, attention.o_proj.weight)
    if keys_copied:
        # Query heads 0,1 share key/value head 0 and heads 2,3 share head 1 (head_dim 8): rows repeat in that order.
        expected = attention.k_proj.weight.view(2, 8, 32).repeat_interleave(2, dim=0).reshape(32, 32)
        assert torch.equal(block.k_proj.weight, expected)
        assert torch.equal(block.v_proj.weight[8:16], attention.v_proj.weight[:8])
    else:
        assert block.k_proj.weight.shape == (32, 24)  # reads the encoder's width: nothing to copy from
    # Gates stay closed: at step 0 the logits are the pretrained LM's, whatever the blocks start as.
    assert block.attn_gate.item() == 0.0
    open_gates(decoder, 0.5)
    assert block.attn_gate.item() == 0.5


def test_new_parameters_are_what_no_checkpoint_provided(caplog):
    import logging

    # An in-process command run earlier in this worker may have configured logging with existing loggers disabled.
    logging.getLogger("encdec.models").disabled = False
    with caplog.at_level("WARNING", logger="encdec.models"):
        model, _, _ = build_model(
            compose_config("encoder=minilm", "decoder=minilm", "decoder.cross_attention.init=random")
        )
    # Said at start: the packaged MiniLM is a sentence-embedding checkpoint, its decoder begins as no language model.
    assert (
        "has no LM head in its checkpoint (cls.predictions" in caplog.text
        and "starts as no language model" in caplog.text
    )
    new = {name for name, parameter in model.named_parameters() if parameter.encdec_new}
    # MiniLM has no LM head and no cross-attention: both are new, every encoder and self-attention weight is not.
    assert any("crossattention" in n for n in new) and any("cls.predictions.transform" in n for n in new)
    assert not any(n.startswith("encoder.") for n in new)
    assert not any(".attention.self." in n for n in new)
    assert len(new) == 6 * 10 + 5  # 10 cross-attention tensors in each of 6 layers, the head's transform and bias


def test_new_parameter_names_of_added_blocks_need_no_loading_report():
    torch.manual_seed(0)
    from transformers import AutoModelForCausalLM

    encoder = BertModel(
        BertConfig(vocab_size=128, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64),
        add_pooling_layer=False,
    )
    decoder = add_cross_attention(
        AutoModelForCausalLM.from_config(tiny_causal_lm_config("llama")), encoder_hidden_size=32
    )
    model = EncoderDecoderModel(encoder=encoder, decoder=decoder)
    new = new_parameter_names(model, {})
    assert new and all("cross_attention_blocks." in name for name in new)


def _module(model, new_params_lr):
    module = Seq2SeqModule(
        model,
        decoder_tokenizer=None,
        optimizer=lambda params: torch.optim.AdamW(params, lr=1e-4),
        new_params_lr=new_params_lr,
    )
    return module


def test_new_parameters_get_their_own_learning_rate():
    model, _, _ = build_model(compose_config("encoder=tiny", "decoder=tiny"))
    # A random decoder is built, not loaded: mark its cross-attention new, as a pretrained load would.
    for name, parameter in model.named_parameters():
        parameter.encdec_new = "crossattention" in name
    optimizer = _module(model, 1e-3).configure_optimizers()
    groups = {group["name"]: group for group in optimizer.param_groups}
    assert groups["pretrained"]["lr"] == 1e-4 and groups["new"]["lr"] == 1e-3
    new = {id(p) for p in groups["new"]["params"]}
    assert new == {id(p) for n, p in model.named_parameters() if "crossattention" in n}
    assert len(groups["new"]["params"]) + len(groups["pretrained"]["params"]) == len(list(model.parameters()))
    single = _module(model, None).configure_optimizers()
    assert len(single.param_groups) == 1 and single.param_groups[0]["lr"] == 1e-4


def test_bad_warm_start_settings_are_one_line_each():
    from encdec.checks import check_run_settings

    with pytest.raises(EncdecError, match=r"decoder.cross_attention.init=copy: use random or self_attention"):
        check_run_settings(compose_config("encoder=tiny", "decoder=tiny", "decoder.cross_attention.init=copy"))

    with pytest.raises(EncdecError, match=r"optimizer.new_params_lr=-1.0 must be positive"):
        check_run_settings(compose_config("optimizer.new_params_lr=-1.0"))
    with pytest.raises(EncdecError, match=r"data.lead_copy_sentences=-2 must be an integer >= 0"):
        check_run_settings(compose_config("data.lead_copy_sentences=-2"))


def test_lead_is_the_first_sentences_and_baselines_score_them_as_predictions():
    document = "First one here. Second one? Third one! Fourth."
    assert lead(document, 1) == "First one here."
    assert lead(document, 3) == "First one here. Second one? Third one!"
    references = ["First one here and more.", "Nothing alike at all."]
    documents = [document, "Nothing alike. At all here."]
    scores = lead_baselines(documents, references)
    assert scores["baseline/lead1/rouge2"] == rouge([lead(d, 1) for d in documents], references)["rouge2"]
    assert scores["baseline/lead3/rougeL"] == rouge([lead(d, 3) for d in documents], references)["rougeL"]
    assert set(scores) == {f"baseline/lead{k}/{n}" for k in (1, 3) for n in ("rouge1", "rouge2", "rougeL", "rougeLsum")}


def test_lead_copies_add_one_row_per_training_document_and_leave_evaluation_alone():
    from encdec.data.loading import load_splits

    plain = load_splits(compose_config("data.max_train_samples=5", "data.lead_copy_sentences=0").data)
    copied = load_splits(compose_config("data.max_train_samples=5", "data.lead_copy_sentences=2").data)
    assert len(copied["train"]) == 10 and copied["train"]["summary"][:5] == plain["train"]["summary"]
    assert copied["train"]["summary"][5:] == [lead(d, 2) for d in plain["train"]["document"]]
    assert copied["train"]["document"][5:] == plain["train"]["document"]
    assert copied["validation"]["summary"] == plain["validation"]["summary"]
    assert copied["test"]["summary"] == plain["test"]["summary"]


def test_warm_start_preset_keeps_its_levers_with_any_data():
    files = ("data=files", "data.train_file=t.jsonl", "data.validation_file=v.jsonl")
    cfg = compose_config("experiment=warm_start", *files)
    assert cfg.data.source == "files" and cfg.data.lead_copy_sentences == 0
    assert cfg.encoder.name == cfg.decoder.name == "smollm2" and cfg.decoder.cross_attention.kind == "prefix"
    assert cfg.model.freeze_encoder is True
    assert cfg.generation.no_repeat_ngram_size == 3
    gated = compose_config("experiment=warm_start_gated", *files)
    assert gated.data.source == "files" and gated.data.lead_copy_sentences == 3 and gated.data.max_target_length == 96
    assert gated.encoder.name == "minilm" and gated.decoder.name == "smollm2"
    assert gated.decoder.cross_attention.kind == "gated" and gated.decoder.cross_attention.init == "self_attention"
    assert gated.decoder.cross_attention.gate_init == 0.5 and gated.optimizer.new_params_lr == 1e-3
