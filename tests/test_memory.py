"""Bounded memory: the validation/test loss in row slices and chunks of logits equals the plain loss and never holds
a whole evaluation batch's logits; the peak memory the run summary and metrics.json report (a run's
metrics.json and summary line: tests/test_resume.py, which runs train.py anyway)."""

from __future__ import annotations

import psutil
import pytest
import torch
import torch.nn.functional as F

from encdec.data.tokenize import IGNORE_INDEX
from encdec.lit import memory
from encdec.lit.module import Seq2SeqModule
from test_fused_loss import PAIRS, LogitRows, padded_batch, tiny_pair, vocab_of

pytestmark = pytest.mark.usefixtures("single_thread")


def plain_loss(model, batch) -> torch.Tensor:
    """The loss as it was computed before: every position's logits at once, mean over the labelled ones."""
    with torch.no_grad():
        logits = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            decoder_input_ids=batch["decoder_input_ids"],
            decoder_attention_mask=batch["decoder_attention_mask"],
            use_cache=False,
        ).logits
    return F.cross_entropy(logits.float().flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE_INDEX)


@pytest.mark.parametrize("name", PAIRS)
def test_evaluation_loss_equals_the_plain_loss(name):
    model = tiny_pair(name)
    batch = padded_batch(vocab_of(model), rows=5, target=7)
    expected = plain_loss(model, batch)
    labelled = int((batch["labels"] != IGNORE_INDEX).sum())
    for rows in (None, 1, 2, 5, 8):  # whole batch, single rows, uneven slices, exactly and more than the batch
        for chunk in (1, 3, labelled, 4096):
            module = Seq2SeqModule(model, None, eval_loss_rows=rows, loss_chunk_tokens=chunk)
            with torch.no_grad():
                loss = module.loss(batch)
            assert abs(loss.item() - expected.item()) <= 1e-5, (rows, chunk, loss.item(), expected.item())
    with torch.inference_mode():  # what Lightning's validate and test run under
        loss = Seq2SeqModule(model, None, eval_loss_rows=2, loss_chunk_tokens=3).loss(batch)
    assert abs(loss.item() - expected.item()) <= 1e-5


def test_evaluation_loss_of_a_head_that_cannot_be_chunked_is_sliced_by_rows():
    model = tiny_pair("bert-llama-gated")
    model.decoder.config.base_config.final_logit_softcapping = 30.0  # the head changes its logits: no chunks
    batch = padded_batch(vocab_of(model), rows=5, target=7)
    module = Seq2SeqModule(model, None, eval_loss_rows=2)
    assert module._chunkable_head() is None
    watch = LogitRows(model.decoder.get_output_embeddings().weight)
    with torch.no_grad(), watch:
        loss = module.loss(batch)
    assert watch.rows == 2 * 7  # one slice of rows at a time, every position of it
    torch.testing.assert_close(loss, plain_loss(model, batch), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["bert-bert", "llama-llama-prefix"])
def test_evaluation_loss_never_holds_more_than_a_chunk_of_logits(name):
    model = tiny_pair(name)
    batch = padded_batch(vocab_of(model), rows=6, target=9)
    for settings, most in (({"eval_loss_rows": None, "loss_chunk_tokens": 4096}, 6 * 9), ({"loss_chunk_tokens": 4}, 4)):
        watch = LogitRows(model.decoder.get_output_embeddings().weight)
        with torch.no_grad(), watch:
            Seq2SeqModule(model, None, **settings).loss(batch)
        # without gradients only labelled positions get logits: one chunk of them, or all when a chunk holds all
        labelled = int((batch["labels"] != IGNORE_INDEX).sum())
        assert watch.rows == min(most, labelled), settings


def test_training_loss_is_unchanged_by_the_evaluation_settings():
    model = tiny_pair("llama-llama-prefix")
    batch = padded_batch(vocab_of(model))
    losses = []
    for settings in ({}, {"eval_loss_rows": 1, "loss_chunk_tokens": 2}):
        model.zero_grad()
        loss = Seq2SeqModule(model, None, **settings).loss(batch)
        loss.backward()
        losses.append((loss.detach(), model.decoder.get_output_embeddings().weight.grad.clone()))
    assert torch.equal(losses[0][0], losses[1][0]) and torch.equal(losses[0][1], losses[1][1])
    with torch.no_grad():
        evaluated = Seq2SeqModule(model, None).loss(batch)
    assert abs(evaluated.item() - losses[0][0].item()) <= 1e-5


def test_peak_memory_metrics_name_this_process_peak():
    held = torch.ones(64 * 2**20, dtype=torch.uint8)  # 64 MiB, touched
    held += 1
    resident = psutil.Process().memory_info().rss
    assert memory.peak_rss_bytes() >= resident > 64 * 2**20  # the high-water mark is at least what is held now
    metrics = memory.peak_memory_metrics()
    assert metrics["memory/peak_rss_gb"] == round(memory.peak_rss_bytes() / 1e9, 3) > 0
    assert "memory/peak_cuda_gb" not in metrics or torch.cuda.is_available()
    assert memory.describe({"memory/peak_rss_gb": 3.214}) == "peak memory: 3.21 GB RSS"
    assert memory.describe({"memory/peak_rss_gb": 3.2, "memory/peak_cuda_gb": 11.0}) == (
        "peak memory: 3.20 GB RSS, 11.00 GB CUDA"
    )
    del held
    memory.release_freed_memory()  # never fails, with or without glibc
