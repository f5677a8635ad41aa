"""data.streaming=true: training batches read from the source while training (encdec.data.streaming), grouped by
length within a shuffle buffer, resumed exactly from datasets' stream state, and refused in one line with what a
stream cannot serve."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose_config, error_lines, run_script, write_jsonl
from encdec.checks import validate
from encdec.data.sampling import training_order
from encdec.data.streaming import StreamedBatches
from encdec.errors import EncdecError

WORDS = "one two three four five six seven eight nine ten eleven twelve".split()


def rows(count: int, start: int = 0) -> list[dict[str, str]]:
    # Documents of 2..20 words, so lengths spread and grouping has something to group.
    return [
        {"document": f"row{i} " + " ".join(WORDS[(i + j) % 12] for j in range(1 + (i * 5) % 19)), "summary": f"s{i}"}
        for i in range(start, start + count)
    ]


def data_config(train_file, **settings):
    data = {
        "name": "files",
        "source": "files",
        "train_file": str(train_file),
        "text_column": "document",
        "summary_column": "summary",
        "batch_size": 2,
        "max_tokens_per_batch": None,
        "group_by_length": True,
        "length_jitter": 0.1,
        "lead_copy_sentences": 0,
        "max_train_samples": None,
        "streaming": True,
        "stream_buffer_rows": 8,
    }
    return OmegaConf.create({**data, **settings})


def tokenize(batch):
    # Row number as the first token, so a batch names its rows; one token per word.
    return {
        "input_ids": [[int(doc.split()[0][3:]), *range(len(doc.split()) - 1)] for doc in batch["document"]],
        "labels": [[1] for _ in batch["summary"]],
    }


def collate(batch_rows):
    return [row["input_ids"][0] for row in batch_rows]  # the batch's row numbers


def stream_for(data, **kwargs) -> StreamedBatches:
    def order_for(lengths, announce):
        return training_order(
            lengths,
            data.batch_size,
            data.max_tokens_per_batch,
            data.group_by_length,
            data.length_jitter,
            announce=announce,
        )

    return StreamedBatches(data, tokenize, collate, order_for, seed=3, **kwargs)


@pytest.fixture
def train_file(tmp_path):
    return write_jsonl(tmp_path / "train.jsonl", rows(30))


def test_an_epoch_streams_every_row_once_grouped_within_buffers(train_file):
    stream = stream_for(data_config(train_file))
    batches = list(stream)
    assert sorted(row for batch in batches for row in batch) == list(range(30))
    assert all(len(batch) == 2 for batch in batches)
    # Buffers of 8 rows: a batch never mixes rows of two buffers, and within one the rows are grouped by length.
    assert all(len({row // 8 for row in batch}) == 1 for batch in batches)
    second = list(stream)  # the next epoch: other batches, other buffer boundaries
    assert sorted(row for batch in second for row in batch) == list(range(30))
    assert second != batches
    assert any(len({row // 8 for row in batch}) > 1 for batch in second)


def test_token_budget_and_row_cap_and_lead_copies_are_served(train_file):
    budget = list(stream_for(data_config(train_file, max_tokens_per_batch=40)))
    assert sorted(row for batch in budget for row in batch) == list(range(30))
    assert len({len(batch) for batch in budget}) > 1  # short rows share bigger batches
    capped = list(stream_for(data_config(train_file, max_train_samples=11)))
    assert sorted(row for batch in capped for row in batch) == list(range(11))
    copied = list(stream_for(data_config(train_file, lead_copy_sentences=1, max_train_samples=4)))
    assert sorted(row for batch in copied for row in batch) == sorted([0, 1, 2, 3] * 2)


@pytest.mark.parametrize("epoch", [0, 1])
def test_a_resumed_stream_yields_exactly_the_batches_left(train_file, epoch):
    data = data_config(train_file)
    reference = stream_for(data)
    for _ in range(epoch):
        list(reference)
    whole = list(reference)
    for done in range(1, len(whole)):
        running = stream_for(data)
        running.resume_at(epoch, 0)
        iterator = iter(running)
        for _ in range(done + 1):  # Lightning fetches one batch ahead of the one it trains
            next(iterator)
        saved = running.state_dict(epoch, done)
        assert saved["position"] is not None
        if done >= 4:  # past the first buffer: the stream's own position (datasets' state_dict), not its start
            assert saved["position"]["state"] is not None
        saved = json.loads(json.dumps(saved))  # what a checkpoint holds is plain data
        resumed = stream_for(data)
        resumed.resume_at(epoch, done, saved)
        assert list(resumed) == whole[done:], done
        # Without the saved position (an older checkpoint): read from the start and skip, the same batches.
        skipped = stream_for(data)
        skipped.resume_at(epoch, done)
        assert list(skipped) == whole[done:]


def test_the_stream_is_opened_and_its_columns_checked_before_training(train_file, tmp_path):
    from encdec.data.streaming import head

    first = head(data_config(train_file), 5)
    assert first["document"][0].startswith("row0 ") and len(first) == 5
    with pytest.raises(EncdecError, match="data.text_column=article is not a column of the streamed train split"):
        head(data_config(train_file, text_column="article"), 5)
    numbers = write_jsonl(tmp_path / "numbers.jsonl", [{"document": 3, "summary": "s"}])
    with pytest.raises(EncdecError, match="holds int values in the streamed train split, not text"):
        head(data_config(numbers), 5)


def test_ranks_take_disjoint_batches_of_each_buffer(train_file):
    data = data_config(train_file)
    ranks = [list(stream_for(data, num_replicas=2, rank=rank)) for rank in (0, 1)]
    assert len(ranks[0]) == len(ranks[1])
    rows_seen = sorted(row for batches in ranks for batch in batches for row in batch)
    # every row, and at most a batch per buffer repeated to even the ranks out
    assert set(rows_seen) == set(range(30)) and len(rows_seen) - 30 <= 2 * 4


def test_streamed_datamodule_trains_on_tokenized_batches(train_file, tmp_path):
    from transformers import AutoTokenizer

    from encdec.lit.datamodule import SummarizationDataModule
    from encdec.sources import resolve

    validation = write_jsonl(tmp_path / "val.jsonl", rows(3, 30))
    cfg = compose_config(
        "encoder=tiny",
        "decoder=tiny",
        "data=files",
        f"data.train_file={train_file}",
        f"data.validation_file={validation}",
        "data.streaming=true",
        "data.batch_size=4",
    )
    tokenizer = AutoTokenizer.from_pretrained(resolve(cfg.encoder.pretrained, "encoder.pretrained"))
    datamodule = SummarizationDataModule(cfg.data, tokenizer, tokenizer, decoder_start_token_id=0)
    datamodule.prepare()
    assert "train" not in datamodule.tokenized and len(datamodule.raw["train"]) == 30  # its head, for a pairing
    batches = list(datamodule.train_dataloader())
    assert sum(len(batch["input_ids"]) for batch in batches) == 30
    assert batches[0]["labels"].dtype == torch.long and (batches[0]["attention_mask"].sum(1) > 0).all()


def test_what_a_stream_cannot_serve_is_refused_in_one_line():
    cfg = compose_config(
        "data.streaming=true", "data.num_workers=2", "data.empty_rows=error", "trainer.val_check_interval=0.5"
    )
    with pytest.raises(EncdecError) as refused:
        validate(cfg, "train")
    message = str(refused.value)
    assert "\n" not in message
    for named in ("data.num_workers=2", "data.empty_rows=error", "trainer.max_steps=-1", "val_check_interval=0.5"):
        assert named in message
    assert "set data.num_workers=0, data.empty_rows=skip, trainer.max_steps=N" in message
    assert "trainer.limit_train_batches" in message  # what it cannot serve, listed whole
    validate(compose_config("data.streaming=true", "trainer.max_steps=30"), "train")


def test_train_py_refuses_streaming_without_max_steps_and_writes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    result = run_script("train.py", "encoder=tiny", "decoder=tiny", "data.streaming=true", f"hydra.run.dir={run_dir}")
    assert result.returncode == 2
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and "data.streaming=true cannot serve trainer.max_steps=-1" in lines[0], result.stderr
    assert not run_dir.exists()


# 30 rows in buffers of 8, batches of 2: 15 batches an epoch; 24 steps end in the second epoch. A checkpoint every 4
# steps, validation every 5: the kill after step 20 lands mid-buffer in the second epoch, whose buffers are shifted.
STREAMED = (
    "encoder=tiny",
    "decoder=tiny",
    "data=files",
    "logger=csv",
    "callbacks=none",
    "data.batch_size=2",
    "data.max_source_length=24",
    "data.max_target_length=8",
    "data.streaming=true",
    "+data.stream_buffer_rows=8",
    "trainer.max_epochs=3",
    "trainer.max_steps=24",
    "trainer.val_check_interval=5",
    "checkpoint.every_n_steps=4",
    "generation.max_new_tokens=6",
)


@pytest.mark.slow
def test_killed_streamed_run_resumes_bitwise(tmp_path):
    from test_resume import assert_same_run, kill_after

    all_rows = rows(37)
    data = [
        f"data.{key}={write_jsonl(tmp_path / f'{key}.jsonl', part)}"
        for key, part in (
            ("train_file", all_rows[:30]),
            ("validation_file", all_rows[30:34]),
            ("test_file", all_rows[34:]),
        )
    ]
    settings = [*STREAMED, *data]
    reference = tmp_path / "reference"
    result = run_script("train.py", *settings, f"hydra.run.dir={reference}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "streamed train" in result.stdout
    run_dir = tmp_path / "run"
    kill_after(run_dir, settings, "step20.ckpt")
    saved = torch.load(run_dir / "checkpoints" / "step20.ckpt", weights_only=True)["encdec"]["stream"]
    assert saved["epoch"] == 1 and saved["position"]["state"] is not None  # datasets' position, past the start
    result = run_script("train.py", f"resume={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_run(reference, run_dir)
