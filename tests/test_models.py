"""The composed EncoderDecoderModel: cross-attention, weight sharing, overrides, ids, and save/load."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from transformers import BertConfig, EncoderDecoderModel

from conftest import ROOT, compose_config
from encdec.errors import EncdecError
from encdec.models import build_model, generation_ids


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model(compose_config("encoder=tiny", "decoder=tiny"))


def batch(encoder_tokenizer, decoder_tokenizer, model, documents, summaries):
    source = encoder_tokenizer(documents, return_tensors="pt", padding=True)
    target = decoder_tokenizer(summaries, return_tensors="pt", padding=True, add_special_tokens=False)
    start = torch.full((len(summaries), 1), model.config.decoder_start_token_id)
    return {
        "input_ids": source["input_ids"],
        "attention_mask": source["attention_mask"],
        "decoder_input_ids": torch.cat([start, target["input_ids"]], dim=1),
    }


def test_cross_attention_exists_and_gets_gradients(tiny):
    model, encoder_tokenizer, decoder_tokenizer = tiny
    cross = {n: p for n, p in model.named_parameters() if "crossattention" in n}
    assert len(cross) >= 2 * 8  # q, k, v, output dense and norm per layer, 2 layers
    assert all(p.requires_grad for p in cross.values())
    model.zero_grad()
    inputs = batch(encoder_tokenizer, decoder_tokenizer, model, ["the cat sat on the mat"], ["a cat"])
    model(**inputs).logits.logsumexp(-1).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in cross.values())
    assert model.encoder.embeddings.word_embeddings.weight.grad.abs().sum() > 0


def test_logits_depend_on_encoder_input(tiny):
    model, encoder_tokenizer, decoder_tokenizer = tiny
    model.eval()
    a = batch(encoder_tokenizer, decoder_tokenizer, model, ["the cat sat on the mat"], ["a summary"])
    b = batch(encoder_tokenizer, decoder_tokenizer, model, ["stock markets fell sharply"], ["a summary"])
    b["decoder_input_ids"] = a["decoder_input_ids"]
    with torch.no_grad():
        diff = (model(**a).logits - model(**b).logits).abs().max().item()
    assert diff > 1e-3


def test_encoder_has_no_pooler(tiny):
    model, _, _ = tiny
    assert getattr(model.encoder, "pooler", None) is None


def test_generation_ids_on_config_and_generation_config(tiny):
    model, _, decoder_tokenizer = tiny
    assert model.config.decoder_start_token_id == decoder_tokenizer.cls_token_id
    assert model.generation_config.decoder_start_token_id == decoder_tokenizer.cls_token_id
    assert model.generation_config.eos_token_id == decoder_tokenizer.sep_token_id
    assert model.generation_config.pad_token_id == decoder_tokenizer.pad_token_id == 0


def test_overrides_reach_each_side():
    cfg = compose_config(
        "encoder=tiny",
        "decoder=tiny",
        "+encoder.overrides.hidden_dropout_prob=0.25",
        "decoder.overrides.num_hidden_layers=3",
    )
    model, _, _ = build_model(cfg)
    assert model.encoder.config.hidden_dropout_prob == 0.25
    assert len(model.decoder.bert.encoder.layer) == 3 and len(model.encoder.encoder.layer) == 2


def test_unknown_override_names_the_key():
    with pytest.raises(EncdecError, match=r"encoder.overrides.hiden_size is not a field of BertConfig"):
        build_model(compose_config("encoder=tiny", "decoder=tiny", "+encoder.overrides.hiden_size=8"))


def test_share_weights_ties_encoder_and_decoder():
    model, _, _ = build_model(compose_config("encoder=tiny", "decoder=tiny", "model.share_weights=true"))
    encoder_embedding = model.encoder.embeddings.word_embeddings.weight
    assert model.decoder.bert.embeddings.word_embeddings.weight is encoder_embedding
    assert model.decoder.cls.predictions.decoder.weight is encoder_embedding
    assert (
        model.decoder.bert.encoder.layer[1].attention.self.query.weight
        is model.encoder.encoder.layer[1].attention.self.query.weight
    )
    unshared = build_model(compose_config("encoder=tiny", "decoder=tiny"))[0]
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in unshared.parameters())


def test_share_weights_refuses_different_sizes():
    with pytest.raises(EncdecError, match="share_weights"):
        build_model(
            compose_config(
                "encoder=tiny",
                "decoder=tiny",
                "model.share_weights=true",
                "decoder.overrides.hidden_size=32",
                "decoder.overrides.num_attention_heads=2",
            )
        )


def test_pretrained_sides_are_built_in_train_mode():
    model, _, _ = build_model(compose_config("encoder=minilm", "decoder=minilm"))
    assert all(module.training for module in model.modules())


def test_random_init_differs_from_pretrained():
    pretrained, _, _ = build_model(compose_config("encoder=minilm", "decoder=tiny"))
    random, _, _ = build_model(compose_config("encoder=minilm", "encoder.init=random", "decoder=tiny"))
    a = pretrained.encoder.embeddings.word_embeddings.weight
    b = random.encoder.embeddings.word_embeddings.weight
    assert a.shape == b.shape and not torch.allclose(a, b)


class FakeTokenizer:
    def __init__(self, **ids):
        self.__dict__.update(
            {
                "bos_token_id": None,
                "eos_token_id": None,
                "sep_token_id": None,
                "cls_token_id": None,
                "pad_token_id": None,
            }
        )
        self.__dict__.update(ids)
        self.name_or_path = "fake"
        self.eos_token = "<eos>"

    @property
    def pad_token(self):
        return None

    @pad_token.setter
    def pad_token(self, token):
        self.pad_token_id = self.eos_token_id


def test_gpt2_style_ids_use_eos_for_pad():
    ids = generation_ids(BertConfig(), FakeTokenizer(bos_token_id=50256, eos_token_id=50256))
    assert ids == {"decoder_start_token_id": 50256, "bos_token_id": 50256, "eos_token_id": 50256, "pad_token_id": 50256}


def test_roberta_start_token_differs_from_pad():
    from transformers import RobertaConfig

    ids = generation_ids(RobertaConfig(), FakeTokenizer(bos_token_id=0, eos_token_id=2, pad_token_id=1))
    assert ids["decoder_start_token_id"] == 0 != ids["pad_token_id"]
    with pytest.raises(EncdecError, match="equals the pad token"):
        generation_ids(RobertaConfig(), FakeTokenizer(eos_token_id=2, pad_token_id=1, cls_token_id=1))


def greedy_by_hand(model, input_ids, attention_mask, max_new_tokens):
    with torch.no_grad():
        encoder_outputs = model.encoder(input_ids=input_ids, attention_mask=attention_mask)
        tokens = torch.tensor([[model.config.decoder_start_token_id]])
        for _ in range(max_new_tokens):
            logits = model(
                encoder_outputs=encoder_outputs,
                attention_mask=attention_mask,
                decoder_input_ids=tokens,
                use_cache=False,
            ).logits
            next_token = logits[:, -1].argmax(-1, keepdim=True)
            tokens = torch.cat([tokens, next_token], dim=1)
            if next_token.item() == model.config.eos_token_id:
                break
    return tokens


def test_save_load_fresh_process_identical_logits_and_greedy_equals_argmax_loop(tiny, tmp_path):
    model, encoder_tokenizer, decoder_tokenizer = tiny
    model.eval()
    inputs = batch(encoder_tokenizer, decoder_tokenizer, model, ["the cat sat on the mat"], ["a cat sat"])
    with torch.no_grad():
        logits = model(**inputs).logits
    generated = model.generate(
        input_ids=inputs["input_ids"],
        attention_mask=inputs["attention_mask"],
        max_new_tokens=12,
        num_beams=1,
        do_sample=False,
    )
    by_hand = greedy_by_hand(model, inputs["input_ids"], inputs["attention_mask"], 12)
    assert torch.equal(generated, by_hand)

    model.save_pretrained(tmp_path / "model")
    torch.save({"inputs": inputs, "logits": logits, "generated": generated}, tmp_path / "expected.pt")
    script = f"""
import torch
from transformers import EncoderDecoderModel
model = EncoderDecoderModel.from_pretrained({str(tmp_path / "model")!r}).eval()
expected = torch.load({str(tmp_path / "expected.pt")!r})
with torch.no_grad():
    logits = model(**expected["inputs"]).logits
inputs = expected["inputs"]
generated = model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], max_new_tokens=12)
assert torch.equal(logits, expected["logits"]), (logits - expected["logits"]).abs().max()
assert torch.equal(generated, expected["generated"])
print("identical")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "identical" in result.stdout


def test_share_weights_refuses_different_architectures():
    from transformers import GPT2Config, GPT2LMHeadModel

    encoder = build_model(compose_config("encoder=tiny", "decoder=tiny"))[0].encoder
    decoder = GPT2LMHeadModel(GPT2Config(n_embd=64, n_layer=2, n_head=2, vocab_size=100, add_cross_attention=True))
    model = EncoderDecoderModel(encoder=encoder, decoder=decoder)
    from encdec.models import share_encoder_decoder_weights

    with pytest.raises(EncdecError, match="encoder 'bert' and decoder 'gpt2'"):
        share_encoder_decoder_weights(model)


def test_decoder_start_token_prefers_the_decoder_config_then_bos_then_cls_then_eos():
    assert (
        generation_ids(
            BertConfig(decoder_start_token_id=7),
            FakeTokenizer(bos_token_id=1, cls_token_id=3, eos_token_id=2, pad_token_id=0),
        )["decoder_start_token_id"]
        == 7
    )
    assert (
        generation_ids(BertConfig(), FakeTokenizer(bos_token_id=1, cls_token_id=3, eos_token_id=2, pad_token_id=0))[
            "decoder_start_token_id"
        ]
        == 1
    )
    assert (
        generation_ids(BertConfig(), FakeTokenizer(cls_token_id=3, eos_token_id=2, pad_token_id=0))[
            "decoder_start_token_id"
        ]
        == 3
    )
    ids = generation_ids(BertConfig(), FakeTokenizer(eos_token_id=2, pad_token_id=0))
    assert ids == {"decoder_start_token_id": 2, "bos_token_id": 2, "eos_token_id": 2, "pad_token_id": 0}


def test_gpt2_style_real_tokenizer_gets_eos_as_pad():
    """A real fast tokenizer with bos = eos and no pad (GPT-2's layout): pad becomes eos, not unk or anything else."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"<unk>": 0, "alpha": 1, "beta": 2, "<|endoftext|>": 3}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<unk>"
    )
    assert tokenizer.pad_token_id is None
    ids = generation_ids(GPT2Config(vocab_size=4, bos_token_id=3, eos_token_id=3), tokenizer)
    assert ids == {"decoder_start_token_id": 3, "bos_token_id": 3, "eos_token_id": 3, "pad_token_id": 3}
    assert tokenizer.pad_token == "<|endoftext|>"


def test_static_cache_setting_is_checked_by_decoder_family(tiny):
    from omegaconf import OmegaConf

    from encdec.models import configure_generation

    model, _, decoder_tokenizer = tiny
    configure_generation(model, decoder_tokenizer, OmegaConf.create({"cache_implementation": "static"}))
    assert model.generation_config.cache_implementation == "static"
    with pytest.raises(EncdecError, match="cache_implementation=paged: use dynamic"):
        configure_generation(model, decoder_tokenizer, OmegaConf.create({"cache_implementation": "paged"}))

    from transformers import BertConfig, BertModel, EncoderDecoderModel, OPTForCausalLM

    from encdec.cross_attention import add_cross_attention
    from encdec.tiny_configs import tiny_causal_lm_config

    encoder = BertModel(
        BertConfig(vocab_size=128, hidden_size=48, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64),
        add_pooling_layer=False,
    )
    opt = EncoderDecoderModel(
        encoder=encoder,
        decoder=add_cross_attention(OPTForCausalLM(tiny_causal_lm_config("opt")), encoder_hidden_size=48),
    )
    with pytest.raises(EncdecError, match="static does not work with the opt decoder"):
        configure_generation(opt, decoder_tokenizer, OmegaConf.create({"cache_implementation": "static"}))
