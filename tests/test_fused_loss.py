"""model.fused_loss: the loss from chunks of logits equals the plain loss, gradients included, and never holds the
whole batch's logits; model.compile: one graph per width bucket, with the eager losses."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from transformers import AutoModel, AutoModelForCausalLM, BertConfig, BertModel, EncoderDecoderModel

from conftest import compose_config
from encdec.checks import validate
from encdec.cross_attention import add_cross_attention
from encdec.data.tokenize import IGNORE_INDEX, Seq2SeqCollator
from encdec.errors import EncdecError
from encdec.lit.module import Seq2SeqModule
from encdec.models import build_model
from encdec.prefix_attention import pair
from encdec.tiny_configs import tiny_causal_lm_config

pytestmark = pytest.mark.usefixtures("single_thread")
START, PAD, EOS = 1, 0, 2
ENCODER_WIDTH = 24
PAIRS = ["bert-bert", "bert-gpt2", "bert-llama-gated", "llama-llama-prefix", "bert-bart", "bert-qwen2-gated"]
PAIRS += ["bert-gemma-gated", "bert-opt-gated", "bert-gpt_neox-gated"]  # a scaled embedding, a projection, no ties


def tiny_encoder() -> BertModel:
    torch.manual_seed(1)
    config = BertConfig(
        vocab_size=128, hidden_size=ENCODER_WIDTH, num_hidden_layers=1, num_attention_heads=2, intermediate_size=48
    )
    return BertModel(config, add_pooling_layer=False)


def lm(family: str, cross_attention: bool = False):
    torch.manual_seed(0)
    config = tiny_causal_lm_config(family)
    config.is_decoder = config.add_cross_attention = cross_attention
    return AutoModelForCausalLM.from_config(config)


def tiny_pair(name: str) -> EncoderDecoderModel:
    """Each way encdec reaches an LM head: BERT's (transform, then a linear with a bias, from encdec's builder),
    GPT-2's and BART's own, an LM inside encdec's gated cross-attention wrapper and a Llama inside a prefix pair."""
    if name == "bert-bert":
        torch.manual_seed(0)
        return build_model(compose_config("encoder=tiny", "decoder=tiny"))[0].eval()
    family = name.split("-")[1]
    if name in ("bert-gpt2", "bert-bart"):  # their own cross-attention
        model = EncoderDecoderModel(encoder=tiny_encoder(), decoder=lm(family, cross_attention=True))
    elif name.endswith("-gated"):
        decoder = add_cross_attention(lm(family), encoder_hidden_size=ENCODER_WIDTH)
        for block in decoder.cross_attention_blocks.values():
            torch.nn.init.constant_(block.attn_gate, 0.5)  # open, so the cross-attention has gradients to compare
        model = EncoderDecoderModel(encoder=tiny_encoder(), decoder=decoder)
    else:
        decoder = lm("llama")
        base = AutoModel.from_config(decoder.config)
        base.load_state_dict(decoder.base_model.state_dict())
        encoder, decoder = pair(base, copy.deepcopy(decoder))
        model = EncoderDecoderModel(encoder=encoder, decoder=decoder)
    for config in (model.config, model.generation_config):
        config.decoder_start_token_id, config.pad_token_id, config.eos_token_id = START, PAD, EOS
    return model.eval()  # no dropout: both losses see the same network


def padded_batch(vocab: int, rows: int = 3, source: int = 7, target: int = 6) -> dict[str, torch.Tensor]:
    """Right-padded sources and targets, the padding's labels ignored (as the collator makes them)."""
    generator = torch.Generator().manual_seed(3)
    input_ids = torch.randint(3, 128, (rows, source), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 4:] = 0
    labels = torch.randint(3, vocab, (rows, target), generator=generator)
    decoder_attention_mask = torch.ones_like(labels)
    decoder_attention_mask[0, 3:] = 0
    decoder_attention_mask[2, 5:] = 0
    decoder_input_ids = torch.cat([torch.full((rows, 1), START), labels[:, :-1]], 1)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "decoder_input_ids": decoder_input_ids,
        "decoder_attention_mask": decoder_attention_mask,
        "labels": labels.masked_fill(decoder_attention_mask == 0, IGNORE_INDEX),
    }


def loss_and_grads(model, batch, **settings) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad()
    loss = Seq2SeqModule(model, None, **settings).loss(batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def vocab_of(model) -> int:
    return model.decoder.get_output_embeddings().weight.shape[0]


@pytest.mark.parametrize("name", PAIRS)
def test_fused_loss_equals_the_plain_loss_and_its_gradients(name):
    model = tiny_pair(name)
    batch = padded_batch(vocab_of(model))
    labelled = int((batch["labels"] != IGNORE_INDEX).sum())  # 3 + 6 + 5 of 18
    plain_loss, plain_grads = loss_and_grads(model, batch)
    for chunk in (1, 5, labelled, labelled + 7):  # smaller than, equal to and larger than the labelled tokens
        fused_loss, fused_grads = loss_and_grads(model, batch, fused_loss=True, loss_chunk_tokens=chunk)
        torch.testing.assert_close(fused_loss, plain_loss, rtol=1e-6, atol=1e-6)
        assert fused_grads.keys() == plain_grads.keys()
        for parameter, gradient in plain_grads.items():
            torch.testing.assert_close(fused_grads[parameter], gradient, rtol=1e-5, atol=1e-6, msg=parameter)
    generated = model.generate(batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=2)
    assert generated.shape[1] > 1  # the LM head is whole again after the fused forwards


class LogitRows(TorchDispatchMode):
    """The most rows any tensor whose last dimension is the vocabulary had, forward and backward (not counting the
    LM head's weight transposed, hidden x vocab)."""

    def __init__(self, head_weight: torch.Tensor):
        super().__init__()
        self.vocab, self.transposed, self.rows = head_weight.shape[0], head_weight.t().shape, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if not isinstance(tensor, torch.Tensor) or tensor.dim() < 2 or tensor.shape == self.transposed:
                continue
            if tensor.shape[-1] == self.vocab:
                self.rows = max(self.rows, tensor.numel() // self.vocab)
        return out


@pytest.mark.parametrize("name", ["bert-bert", "bert-llama-gated"])
def test_fused_loss_never_holds_more_than_a_chunk_of_logits(name):
    model = tiny_pair(name)
    batch = padded_batch(vocab_of(model), rows=4, target=9)
    for settings, most in (({}, 4 * 9), ({"fused_loss": True, "loss_chunk_tokens": 4}, 4)):
        watch = LogitRows(model.decoder.get_output_embeddings().weight)
        with watch:
            Seq2SeqModule(model, None, **settings).loss(batch).backward()
        assert watch.rows == most  # the plain loss: every position's logits at once (the watch sees them)


def test_a_head_that_changes_its_logits_is_refused():
    model = EncoderDecoderModel(
        encoder=tiny_encoder(), decoder=add_cross_attention(lm("llama"), encoder_hidden_size=24)
    )
    model.decoder.config.base_config.final_logit_softcapping = 30.0
    with pytest.raises(EncdecError, match=r"^model.fused_loss=true: .*final_logit_softcapping\); set it false$"):
        Seq2SeqModule(model, None, fused_loss=True)


def test_the_new_keys_are_declared_with_help_lines_and_checked():
    cfg = compose_config()
    assert cfg.model.fused_loss is False and cfg.model.loss_chunk_tokens == 4096
    from encdec.schema import Model

    assert all(Model.__dataclass_fields__[key].metadata["help"] for key in ("fused_loss", "loss_chunk_tokens"))
    validate(compose_config("model.fused_loss=true", "model.loss_chunk_tokens=1"), "train")
    for bad, message in (
        ("model.loss_chunk_tokens=0", "model.loss_chunk_tokens=0 must be a positive integer"),
        ("model.loss_chunk_tokens=-4", "model.loss_chunk_tokens=-4 must be a positive integer"),
        ("model.fused_loss=yes", "model.fused_loss=yes: use true or false"),
    ):
        with pytest.raises(EncdecError) as caught:
            validate(compose_config(bad), "train")
        assert str(caught.value) == message


def test_compiled_losses_equal_eager_with_one_graph_per_width_bucket():
    """Batches of many lengths, padded by the collator to multiples of 16 (capped by the length limits: sources
    16 or 24 wide, targets 16 or 20), meet one graph per width pair however many rows and lengths they have."""
    model = tiny_pair("bert-gpt2")
    graphs = []

    def recording_backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    torch._dynamo.reset()
    collate = Seq2SeqCollator(PAD, PAD, START, max_source_length=24, max_target_length=20, pad_to_multiple_of=16)
    compiled = Seq2SeqModule(model, None, compile=True, compile_backend=recording_backend)
    fused = Seq2SeqModule(model, None, compile=True, compile_backend=recording_backend, fused_loss=True)
    eager = Seq2SeqModule(model, None)
    generator = torch.Generator().manual_seed(5)
    widths = set()
    for step in range(10):
        rows = [
            {
                "input_ids": torch.randint(3, 128, (int(torch.randint(2, 25, (1,), generator=generator)),)).tolist(),
                "labels": torch.randint(3, 128, (int(torch.randint(2, 21, (1,), generator=generator)),)).tolist(),
            }
            for _ in range(2 + step % 3)
        ]
        batch = collate(rows)
        widths.add((batch["input_ids"].shape[1], batch["labels"].shape[1]))
        expected = eager.loss(batch)
        torch.testing.assert_close(compiled.loss(batch), expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(fused.loss(batch), expected, rtol=1e-5, atol=1e-6)
    assert widths <= {(16, 16), (16, 20), (24, 16), (24, 20)} and len(widths) >= 3
    # One graph per width pair for each forward (the plain one, and the fused one whose LM head is the identity).
    assert len(graphs) == 2 * len(widths)
    torch._dynamo.reset()


@pytest.mark.parametrize(
    "overrides, multiple",
    [((), None), (("model.compile=true",), 64), (("model.compile=true", "+data.pad_to_multiple_of=8"), 8)],
)
def test_compile_pads_training_batches_to_width_buckets(overrides, multiple, monkeypatch):
    """train.py's data module rounds widths up to 64 under model.compile, to data.pad_to_multiple_of when set."""
    from encdec import train
    from encdec.lit.datamodule import SummarizationDataModule

    def prepare(self, raw_splits=None):
        self.tokenized = {"train": [], "validation": [], "test": []}

    monkeypatch.setattr(SummarizationDataModule, "prepare", prepare)
    cfg = compose_config("encoder=tiny", "decoder=tiny", *overrides)
    model, encoder_tokenizer, decoder_tokenizer = build_model(cfg)
    datamodule = train.build_datamodule(cfg, model, encoder_tokenizer, decoder_tokenizer, None)
    assert datamodule.collate.pad_to_multiple_of == multiple


def test_compiled_fused_loss_has_the_plain_loss_and_gradients():
    """Through AOT autograd (forward and backward graphs, as inductor gets them), with the LM head as the identity."""
    model = tiny_pair("bert-gpt2")
    batch = padded_batch(vocab_of(model))
    plain_loss, plain_grads = loss_and_grads(model, batch)
    torch._dynamo.reset()
    settings = {"compile": True, "compile_backend": "aot_eager", "fused_loss": True, "loss_chunk_tokens": 5}
    fused_loss, fused_grads = loss_and_grads(model, batch, **settings)
    torch._dynamo.reset()
    torch.testing.assert_close(fused_loss, plain_loss, rtol=1e-6, atol=1e-6)
    assert fused_grads.keys() == plain_grads.keys()
    for parameter, gradient in plain_grads.items():
        torch.testing.assert_close(fused_grads[parameter], gradient, rtol=1e-5, atol=1e-6, msg=parameter)
