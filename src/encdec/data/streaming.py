"""Training rows streamed from their source while training (`data.streaming=true`): a corpus larger than memory or
disk trains without being converted, tokenized and cached first.

The training split is read as a `datasets` streaming `IterableDataset`, in the source's own order, one *buffer* at a
time (`data.stream_buffer_rows` rows, 10,000 by default). Each buffer's rows are tokenized, cut into batches by the
same strategies as a map-style split (`encdec.data.sampling`: fixed-size, grouped by length, token budget), so length
grouping works within the buffer, and its batches are shuffled from ``(seed, epoch, buffer)``. The first buffer of
each epoch after the first is shorter by a random number of rows (at most half a buffer), so buffers hold other rows
together every epoch. Validation and test sets are loaded as usual (they are read whole for every evaluation).

Exact resume, with a small state: before a buffer's first row is read, the stream's position is taken with datasets'
`IterableDataset.state_dict()`. A checkpoint records, for the batch the fit loop has trained up to, the position of
the buffer that batch came from (`StreamedBatches.state_dict`); a resumed run restores it with `load_state_dict()`,
reads that one buffer again, cuts the same batches from it and skips those already trained. datasets' own buffered
shuffle is not used: its state does not hold the buffer's content, so a resumed run would see other rows ("the
shuffle buffer will be refilled"), and neither is a loader-side state (torchdata's StatefulDataLoader), which counts
the batches Lightning has *fetched*, one ahead of those trained. The fit loop's count is the one that is exact, as
for map-style splits (`encdec.lit.resume`).

What a stream cannot serve is refused before anything loads, in one line (`encdec.checks.check_streaming`).
"""

from __future__ import annotations

import copy
import logging
import random
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import datasets
import torch
from omegaconf import DictConfig

from encdec import sources
from encdec.errors import EncdecError
from encdec.metrics import lead

log = logging.getLogger(__name__)

# Rows per buffer unless data.stream_buffer_rows says otherwise: ~3 s of tokenizing on one core for aclsum-sized rows,
# tens of MB of text and tokens, 1,250 batches of 8 to group and shuffle.
BUFFER_ROWS = 10_000
# Buffer positions kept for a checkpoint: Lightning fetches a batch ahead of the one it trains, possibly from the
# next buffer, so the trained batch's buffer may be one or two back.
KEPT_POSITIONS = 4


def buffer_rows(data: DictConfig) -> int:
    return int(data.get("stream_buffer_rows") or BUFFER_ROWS)


def open_train_stream(data: DictConfig) -> datasets.IterableDataset:
    """The training split as a streaming `IterableDataset` of the source's own rows, in the source's order."""
    from encdec.data.formats import FILE_BUILDERS, aclsum_folder

    if data.source == "aclsum":
        return datasets.load_dataset(
            "json", data_files=str(aclsum_folder() / "train.jsonl"), split="train", streaming=True
        )
    if data.source == "files":
        path = Path(str(data.train_file)).expanduser()
        builder = FILE_BUILDERS[path.suffix.lower()]
        return datasets.load_dataset(builder, data_files=str(path), split="train", streaming=True)
    require_hub(data)
    try:
        return datasets.load_dataset(data.path, data.get("config_name"), split="train", streaming=True)
    except Exception as error:
        raise EncdecError(
            f"data={data.name}: could not stream '{data.path}' from the Hub: {str(error)[:200]}"
        ) from error


def require_hub(data: DictConfig) -> None:
    if not sources.hub_reachable():
        raise EncdecError(
            f"data={data.name} with data.streaming=true reads '{data.path}' from the Hugging Face Hub while "
            "training, and the Hub cannot be reached (offline): connect, or set data.streaming=false to use a cached copy"
        )


def row_reader(data: DictConfig) -> Callable[[dict[str, Any]], tuple[Any, Any]]:
    """A source row -> its (document, summary), as the map-style loader names them."""
    from encdec.data.formats import aclsum_row

    if data.source == "aclsum":

        def read(row):
            flat = aclsum_row(row)
            return flat["document"], flat["summary"]

        return read
    text_column, summary_column = data.text_column, data.summary_column

    def read(row):
        for role, column in (("text_column", text_column), ("summary_column", summary_column)):
            if column not in row:
                raise EncdecError(
                    f"data.{role}={column} is not a column of the streamed train split; its columns are "
                    f"{', '.join(row)}"
                )
        return row[text_column], row[summary_column]

    return read


def usable(document, summary) -> bool:
    return all(isinstance(text, str) and text.strip() for text in (document, summary))


def head(data: DictConfig, rows: int) -> datasets.Dataset:
    """The stream's first `rows` usable rows as a small `Dataset` with `document` and `summary` columns: what a
    pairing kind prepares on (`encdec.pairings.prepare`) and the proof, before any model loads, that the source opens
    and its columns hold text."""
    read = row_reader(data)
    kept: list[dict[str, str]] = []
    for row in open_train_stream(data):
        document, summary = read(row)
        for role, value in (("text_column", document), ("summary_column", summary)):
            if value is not None and not isinstance(value, str):
                column = data.get(role)
                raise EncdecError(
                    f"data.{role}={column} holds {type(value).__name__} values in the streamed train split, not "
                    f"text: name the column holding the {'document' if role == 'text_column' else 'summary'}"
                )
        if usable(document, summary):
            kept.append({"document": document, "summary": summary})
            if len(kept) >= rows:
                break
    if not kept:
        raise EncdecError("the streamed train split has no rows with both a text and a summary: check the column names")
    return datasets.Dataset.from_list(kept)


class StreamedBatches(torch.utils.data.IterableDataset):
    """This rank's collated training batches of one epoch of the stream, from the start or from a resume point.

    tokenize: a batch tokenizer (`encdec.data.tokenize.batch_tokenizer`); collate: rows -> a padded batch;
    order_for: (lengths, announce) -> a `BatchOrder` (the map-style strategies, `encdec.data.sampling
    .training_order`); epoch_of: the epoch the trainer is in (Lightning tells a sampler, never an iterable dataset)."""

    def __init__(
        self,
        data: DictConfig,
        tokenize: Callable,
        collate: Callable,
        order_for: Callable,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        epoch_of: Callable[[], int] | None = None,
        open_stream: Callable[[], datasets.IterableDataset] | None = None,
    ):
        super().__init__()
        self.data = data
        self.tokenize, self.collate, self.order_for = tokenize, collate, order_for
        self.seed, self.num_replicas, self.rank = int(seed), int(num_replicas), int(rank)
        self.epoch_of = epoch_of
        self.open_stream = open_stream or (lambda: open_train_stream(data))
        self.read = row_reader(data)
        self.buffer = buffer_rows(data)
        self.limit = data.get("max_train_samples")
        self.lead_sentences = int(data.get("lead_copy_sentences") or 0)
        self.epoch = 0
        self._pending: tuple[int, int, dict | None] | None = None
        self._positions: deque[dict] = deque(maxlen=KEPT_POSITIONS)
        self._announced = False
        self._warned_skipped = False

    # -- resume ------------------------------------------------------------------------------------------------------

    def resume_at(self, epoch: int, batches_done: int, saved: dict | None = None) -> None:
        """The next iteration is `epoch`, from its batch `batches_done` on; `saved` is what `state_dict` returned for
        that batch (without it, the epoch is read from its start and the trained batches skipped: exact, slower)."""
        position = saved.get("position") if saved and int(saved.get("epoch", -1)) == int(epoch) else None
        self._pending = (int(epoch), max(int(batches_done), 0), position)

    def state_dict(self, epoch: int, batches_done: int) -> dict:
        """Where batch `batches_done` of `epoch` comes from: the stream's position before its buffer's first row
        (datasets' state_dict), the buffer's number and its first batch's number."""
        candidates = [p for p in self._positions if p["epoch"] == epoch and p["first_batch"] <= batches_done]
        position = max(candidates, key=lambda p: p["first_batch"]) if candidates else None
        return {"epoch": int(epoch), "position": copy.deepcopy(position)}

    # -- one epoch ---------------------------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if self._pending is not None:
            epoch, done, position = self._pending
            self._pending = None
        else:
            epoch, done, position = (self.epoch_of() if self.epoch_of else self.epoch), 0, None
        self.epoch = epoch
        self._positions.clear()
        stream = self.open_stream()
        window, used, batch_number = 0, 0, 0
        if position is not None:
            if position["state"] is not None:
                stream.load_state_dict(copy.deepcopy(position["state"]))
            window, used, batch_number = position["window"], position["used"], position["first_batch"]
        rows_iter = iter(stream)
        skipped = 0
        while True:
            # Where this buffer starts; None: the stream's very start (a fresh stream has no state yet).
            state = position["state"] if position is not None and window == position["window"] else None
            if state is None and (window, used) != (0, 0):
                state = stream.state_dict()
            state = copy.deepcopy(state)
            start = {"epoch": epoch, "window": window, "first_batch": batch_number, "used": used, "state": state}
            rows, used, exhausted, bad = self._read(rows_iter, self._window_size(epoch, window), used)
            skipped += bad
            if not rows:
                break
            self._positions.append(start)
            for batch in self._batches(rows, epoch, window):
                if batch_number >= done:
                    yield self.collate([rows[i] for i in batch])
                batch_number += 1
            window += 1
            if exhausted:
                break
        if skipped and not self._warned_skipped:
            self._warned_skipped = True
            log.warning("data: skipped %d streamed train rows with an empty or missing text or summary", skipped)
        self.epoch = epoch + 1

    def _window_size(self, epoch: int, window: int) -> int:
        if window or not epoch:
            return self.buffer
        return self.buffer - random.Random(f"{self.seed}/{epoch}").randrange(self.buffer // 2 + 1)

    def _read(self, rows_iter, size: int, used: int) -> tuple[list[dict], int, bool, int]:
        """Up to `size` usable rows, tokenized (and each followed by its lead copy with data.lead_copy_sentences)."""
        documents: list[str] = []
        summaries: list[str] = []
        bad = 0
        exhausted = False
        taken = 0
        while taken < size:
            if self.limit is not None and used >= int(self.limit):
                exhausted = True
                break
            try:
                row = next(rows_iter)
            except StopIteration:
                exhausted = True
                break
            document, summary = self.read(row)
            if not usable(document, summary):
                bad += 1
                continue
            used += 1
            taken += 1
            documents.append(document)
            summaries.append(summary)
            if self.lead_sentences:
                copied = lead(document, self.lead_sentences)
                if copied.strip():
                    documents.append(document)
                    summaries.append(copied)
        if not documents:
            return [], used, exhausted, bad
        tokens = self.tokenize({"document": documents, "summary": summaries})
        rows = [{"input_ids": s, "labels": t} for s, t in zip(tokens["input_ids"], tokens["labels"])]
        return rows, used, exhausted, bad

    def _batches(self, rows: list[dict], epoch: int, window: int) -> list[list[int]]:
        lengths = [(len(row["input_ids"]), len(row["labels"])) for row in rows]
        order = self.order_for(lengths, announce=self.rank == 0 and not self._announced)
        self._announced = True
        # One seed per (epoch, buffer): FixedSize seeds torch with seed + epoch, TokenBudget numpy with [seed, epoch].
        key = epoch * 1_000_003 + window
        batches = order.global_batches(key, self.seed, True, self.num_replicas)
        return batches[self.rank :: self.num_replicas]
