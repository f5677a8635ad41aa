"""Data loading and batching: two tokenizers, -100 label padding, shifted decoder inputs, datasets' cache."""

from __future__ import annotations

import json

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from conftest import compose_config
from encdec.data.tokenize import IGNORE_INDEX
from encdec.lit.datamodule import SummarizationDataModule
from encdec.sources import resolve


def word_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    vocab = {token: i for i, token in enumerate(["<pad>", "<s>", "</s>", "<unk>", *words])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def datamodule_for(tiny_files, decoder_tokenizer, **data_overrides):
    overrides = [f"data.{k}={v}" for k, v in data_overrides.items()]
    cfg = compose_config(
        "data=files",
        f"data.train_file={tiny_files['train']}",
        f"data.validation_file={tiny_files['validation']}",
        f"data.test_file={tiny_files['test']}",
        *overrides,
    )
    encoder_tokenizer = AutoTokenizer.from_pretrained(resolve(cfg.encoder.pretrained, "encoder.pretrained"))
    dm = SummarizationDataModule(
        cfg.data, encoder_tokenizer, decoder_tokenizer, decoder_start_token_id=decoder_tokenizer.bos_token_id
    )
    dm.prepare()
    return dm, encoder_tokenizer


def test_source_and_target_use_their_own_tokenizers(tiny_files):
    words = "alpha beta gamma delta epsilon zeta theta kappa lambda sigma omega".split()
    decoder_tokenizer = word_tokenizer(words)
    dm, encoder_tokenizer = datamodule_for(tiny_files, decoder_tokenizer)
    row = dm.tokenized["train"][0]
    document, summary = dm.raw["train"][0]["document"], dm.raw["train"][0]["summary"]
    assert row["input_ids"] == encoder_tokenizer(document, max_length=512, truncation=True)["input_ids"]
    assert row["labels"] == decoder_tokenizer(summary, add_special_tokens=False)["input_ids"] + [
        decoder_tokenizer.eos_token_id
    ]


def test_collate_pads_labels_with_ignore_index_and_shifts_decoder_inputs(tiny_files):
    decoder_tokenizer = word_tokenizer("alpha beta gamma delta epsilon zeta theta kappa lambda sigma omega".split())
    dm, encoder_tokenizer = datamodule_for(tiny_files, decoder_tokenizer)
    rows = [
        {"input_ids": [101, 7, 102], "labels": [5, 6, 2], "index": 0},
        {"input_ids": [101, 102], "labels": [9, 2], "index": 1},
    ]
    batch = dm.collate(rows)
    assert batch["labels"].tolist() == [[5, 6, 2], [9, 2, IGNORE_INDEX]]
    assert batch["decoder_input_ids"].tolist() == [[1, 5, 6], [1, 9, decoder_tokenizer.pad_token_id]]
    assert batch["decoder_attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["input_ids"].tolist() == [[101, 7, 102], [101, 102, encoder_tokenizer.pad_token_id]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]


def test_truncation_lengths_come_from_config(tiny_files):
    decoder_tokenizer = word_tokenizer("alpha beta gamma delta epsilon zeta theta kappa lambda sigma omega".split())
    dm, _ = datamodule_for(tiny_files, decoder_tokenizer, max_source_length=5, max_target_length=2)
    assert max(len(ids) for ids in dm.tokenized["train"]["input_ids"]) == 5
    assert all(
        len(labels) == 2 and labels[-1] == decoder_tokenizer.eos_token_id for labels in dm.tokenized["train"]["labels"]
    )


def test_tokenized_splits_are_cached_by_datasets(tiny_files):
    decoder_tokenizer = word_tokenizer("alpha beta gamma delta epsilon zeta theta kappa lambda sigma omega".split())
    first, _ = datamodule_for(tiny_files, decoder_tokenizer)
    second, _ = datamodule_for(tiny_files, decoder_tokenizer)
    files = [f["filename"] for f in first.tokenized["train"].cache_files]
    assert files and files == [f["filename"] for f in second.tokenized["train"].cache_files]
    assert first.tokenized["train"]._fingerprint == second.tokenized["train"]._fingerprint
    other, _ = datamodule_for(tiny_files, decoder_tokenizer, max_source_length=7)
    assert other.tokenized["train"]._fingerprint != first.tokenized["train"]._fingerprint


def test_the_token_cache_holds_int32_ids_and_no_texts(tiny_files):
    # The texts stay in the raw split for ROUGE; copying them into the cache doubled what tokenizing wrote.
    dm, _ = datamodule_for(tiny_files, word_tokenizer("alpha beta gamma delta epsilon".split()))
    tokenized = dm.tokenized["train"]
    assert tokenized.column_names == ["input_ids", "labels"]
    assert {name: feature.feature.dtype for name, feature in tokenized.features.items()} == {
        "input_ids": "int32",
        "labels": "int32",
    }
    assert dm.raw["train"]["document"][0] and len(tokenized) == len(dm.raw["train"])


def test_empty_rows_are_skipped_and_counted(tmp_path, tiny_files):
    from conftest import write_jsonl

    train = write_jsonl(
        tmp_path / "mixed.jsonl",
        [
            {"document": "alpha beta", "summary": "alpha"},
            {"document": " ", "summary": "beta"},
            {"document": "gamma", "summary": None},
            {"document": "delta zeta", "summary": "delta"},
        ],
    )
    files = {**tiny_files, "train": train}
    dm, _ = datamodule_for(files, word_tokenizer(["alpha", "beta", "gamma", "delta", "zeta"]))
    assert dm.raw["train"]["document"] == ["alpha beta", "delta zeta"]


def test_aclsum_is_flattened_into_document_and_summary():
    from encdec.data.loading import load_splits

    splits = load_splits(compose_config("data.lead_copy_sentences=0").data)
    assert {k: len(v) for k, v in splits.items()} == {"train": 100, "validation": 50, "test": 100}
    first = splits["train"][0]
    assert first["document"].startswith("In this paper , we explore correlation of dependency relation paths")
    assert first["summary"].startswith("A generally accessible NER system")
    assert torch.tensor(len(first["document"].split())).item() > 300


def test_collate_keeps_a_start_token_that_equals_pad_visible():
    """GPT-2 style: start = pad = eos. The decoder mask marks real positions, not `decoder_input_ids != pad`."""
    decoder_tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=word_tokenizer(["alpha"]).backend_tokenizer,
        pad_token="</s>",
        bos_token="</s>",
        eos_token="</s>",
        unk_token="<unk>",
    )
    pad = decoder_tokenizer.pad_token_id
    assert pad == decoder_tokenizer.eos_token_id == 2
    dm = SummarizationDataModule(
        compose_config().data, decoder_tokenizer, decoder_tokenizer, decoder_start_token_id=pad
    )
    rows = [
        {"input_ids": [1, 7, 2], "labels": [5, 6, 2], "index": 0},
        {"input_ids": [1, 2], "labels": [9, 2], "index": 1},
    ]
    batch = dm.collate(rows)
    assert batch["decoder_input_ids"].tolist() == [[2, 5, 6], [2, 9, 2]]
    assert batch["decoder_attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].tolist() == [[5, 6, 2], [9, 2, IGNORE_INDEX]]


def test_empty_rows_error_refuses_them_with_the_count(tmp_path, tiny_files):
    import pytest

    from conftest import write_jsonl
    from encdec.errors import EncdecError

    train = write_jsonl(
        tmp_path / "mixed.jsonl",
        [
            {"document": "alpha beta", "summary": "alpha"},
            {"document": " ", "summary": "beta"},
            {"document": "gamma", "summary": None},
            {"document": "delta zeta", "summary": "delta"},
        ],
    )
    with pytest.raises(EncdecError, match="the train split has 2 rows with an empty or missing text or summary"):
        datamodule_for({**tiny_files, "train": train}, word_tokenizer(["alpha", "beta"]), empty_rows="error")


def test_a_column_that_is_not_text_is_named_with_what_it_holds(tmp_path, tiny_files):
    import pytest

    from conftest import write_jsonl
    from encdec.errors import EncdecError

    train = write_jsonl(
        tmp_path / "typed.jsonl",
        [
            {"document": "alpha beta", "summary": "alpha", "id": 1, "tags": ["a", "b"]},
            {"document": "gamma", "summary": "beta", "id": 2, "tags": ["c"]},
        ],
    )
    files = {**tiny_files, "train": train}
    with pytest.raises(
        EncdecError,
        match=r"^data.text_column=id holds int64 values in the train split, not text: "
        r"name the column holding the document as a string$",
    ):
        datamodule_for(files, word_tokenizer(["alpha"]), text_column="id")
    with pytest.raises(EncdecError, match=r"^data.summary_column=tags holds lists in the train split, not text"):
        datamodule_for(files, word_tokenizer(["alpha"]), summary_column="tags")


def test_group_by_length_reaches_the_training_batches(tiny_files):
    decoder_tokenizer = word_tokenizer("alpha beta gamma delta epsilon zeta theta kappa lambda sigma omega".split())
    plain, _ = datamodule_for(tiny_files, decoder_tokenizer, batch_size=2, group_by_length=False)
    grouped, _ = datamodule_for(tiny_files, decoder_tokenizer, batch_size=2, group_by_length=True)
    plain.train_dataloader()
    loader = grouped.train_dataloader()
    assert type(plain.train_sampler.order).__name__ == "FixedSize"
    assert type(grouped.train_sampler.order).__name__ == "GroupedByLength" and grouped.train_sampler.order.jitter == 0.1
    lengths = grouped.train_sampler.order.lengths
    assert lengths == [(len(row["input_ids"]), len(row["labels"])) for row in grouped.tokenized["train"]]
    batches = [batch["index"].tolist() for batch in loader]
    assert batches == grouped.train_sampler.batches() and all(len(batch) == 2 for batch in batches[:-1])
    # A run folder saved before length_jitter existed has no such key: its resume keeps the strict order it trained on.
    from omegaconf import OmegaConf

    saved = OmegaConf.masked_copy(grouped.data, [key for key in grouped.data if key != "length_jitter"])
    grouped.data = saved
    grouped.train_dataloader()
    assert grouped.train_sampler.order.jitter == 0.0


def test_tokenizing_processes_one_per_core_for_large_splits(monkeypatch):
    from encdec.data import tokenize

    monkeypatch.setattr(tokenize.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    per = tokenize.ROWS_PER_PROCESS
    assert [tokenize.tokenizing_processes(rows) for rows in (0, per, 2 * per - 1, 2 * per, 3 * per, 40 * per)] == [
        None,
        None,
        None,
        2,
        3,
        4,
    ]


def test_tokenizing_in_processes_gives_the_same_tokens_and_cache_on_any_core_count(tmp_path, tiny_files):
    import datasets

    from encdec.data.tokenize import tokenize_split

    words = "alpha beta gamma delta epsilon zeta theta kappa lambda sigma omega".split()
    encoder_tokenizer = datamodule_for(tiny_files, word_tokenizer(words))[1]
    decoder_tokenizer = word_tokenizer(words)
    rows = [
        {"document": " ".join(words[(i + j) % 11] for j in range(3 + i % 9)), "summary": words[i % 11]}
        for i in range(40)
    ]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    cache = tmp_path / "cache"

    def tokenized(num_proc):
        dataset = datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(cache))
        return tokenize_split(dataset, "train", encoder_tokenizer, decoder_tokenizer, 8, 4, num_proc=num_proc)

    in_one = tokenized(None)  # written by this process: cache-<fingerprint>.arrow
    assert tokenized(2).cache_files == in_one.cache_files  # and read from there by two
    for processes in (2, 3):
        # A fresh cache for each count: this one is written by `processes` processes, then read by the others.
        for arrow in cache.rglob("cache-*.arrow"):
            arrow.unlink()
        written = tokenized(processes)
        shards = sorted(f["filename"] for f in written.cache_files)
        assert len(shards) == processes and all(f"_of_{processes:05d}.arrow" in name for name in shards)
        assert written._fingerprint == in_one._fingerprint
        assert written["input_ids"] == in_one["input_ids"] and written["labels"] == in_one["labels"]
        for other in (None, 2, 4):  # read from that cache whatever the count: nothing is tokenized again
            again = tokenized(other)
            assert sorted(f["filename"] for f in again.cache_files) == shards
            assert again._fingerprint == in_one._fingerprint and again["input_ids"] == in_one["input_ids"]
