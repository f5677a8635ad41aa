"""Tokenize once (cached by datasets), then batch with dynamic padding.

Sources go through the ENCODER tokenizer, summaries through the DECODER tokenizer (DESIGN decision 3): labels are the
summary tokens followed by eos, padded with -100; decoder inputs are the labels shifted right behind the start token.
"""

from __future__ import annotations

import hashlib
from typing import Any, Sequence

import datasets
import lightning as L
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from encdec.boundary import user_settings
from encdec.data import check_data_settings, load_splits
from encdec.lit.batching import EvalBatchSampler, TokenBudgetBatchSampler, dataset_lengths
from encdec.errors import EncdecError

IGNORE_INDEX = -100


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    vocab = tokenizer.get_vocab()
    digest = hashlib.sha256(repr(sorted(vocab.items())).encode()).hexdigest()[:16]
    return f"{type(tokenizer).__name__}-{len(vocab)}-{digest}"


class ResumableBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Fixed-size batches in an order fixed by (seed, epoch), so a resumed run can skip exactly what was trained.

    Under DDP each rank takes every `num_replicas`-th batch of the same order (equal counts: the order is padded by
    repeating its start). `resume_at(epoch, batches_done)` makes the next iteration of that epoch skip those batches.

    With `lengths` (data.group_by_length) each batch holds rows of similar length, as in transformers'
    group_by_length: the shuffled rows are sorted by length inside groups of GROUPED_BATCHES batches, then the batches
    are shuffled, the one with the longest row first (an out-of-memory shows at step 1, not hours in). A data set of
    fewer than GROUPED_BATCHES batches is one group: its batches hold the same rows every epoch (ties aside), in a
    new order, as with the token budget's whole-set sort.
    """

    GROUPED_BATCHES = 50

    def __init__(self, size: int, batch_size: int, seed: int, shuffle: bool = True, num_replicas: int = 1, rank: int = 0,
                 lengths: Sequence[tuple[int, int]] | None = None):
        self.size, self.batch_size, self.seed, self.shuffle = size, batch_size, seed, shuffle
        self.num_replicas, self.rank = num_replicas, rank
        self.lengths = lengths  # (source, target) tokens per row
        self.epoch = 0
        self._skip: tuple[int, int] | None = None
        # Lightning calls set_epoch on `loader.batch_sampler.sampler`, not on the batch sampler itself.
        self.sampler = self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_at(self, epoch: int, batches_done: int) -> None:
        # The epoch too: on resume Lightning creates the loader's iterator before it calls set_epoch.
        self.epoch = epoch
        self._skip = (epoch, batches_done)

    def _batches(self) -> list[list[int]]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.size, generator=generator).tolist()
        else:
            order = list(range(self.size))
        if self.lengths is not None and self.shuffle:
            batches = self._grouped_by_length(order, generator)
        else:
            batches = [order[i : i + self.batch_size] for i in range(0, self.size, self.batch_size)]
        per_rank = -(-len(batches) // self.num_replicas)
        batches += batches[: per_rank * self.num_replicas - len(batches)]
        return batches[self.rank :: self.num_replicas]

    def _grouped_by_length(self, order: list[int], generator: torch.Generator) -> list[list[int]]:
        # A whole number of runs per group (below), so no run mixes the shortest of one group with the next's longest.
        group = self.batch_size * -(-self.GROUPED_BATCHES // self.num_replicas) * self.num_replicas
        order = [row for start in range(0, len(order), group)
                 for row in sorted(order[start : start + group], key=lambda row: self.lengths[row], reverse=True)]
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        # Shuffled in runs of num_replicas neighbours: under DDP the ranks' batches of one step have similar lengths,
        # so no rank waits long for another. A short last run stays last, so every other step's stay neighbours.
        whole = len(batches) - len(batches) % self.num_replicas
        runs = [batches[i : i + self.num_replicas] for i in range(0, whole, self.num_replicas)]
        runs = [runs[i] for i in torch.randperm(len(runs), generator=generator).tolist()]
        if runs:
            longest = max(range(len(runs)), key=lambda i: max(sum(self.lengths[row]) for batch in runs[i] for row in batch))
            runs = [runs[longest], *runs[:longest], *runs[longest + 1 :]]
        return [batch for run in runs for batch in run] + batches[whole:]

    def __iter__(self):
        batches = self._batches()
        if self._skip is not None and self._skip[0] == self.epoch:
            batches = batches[self._skip[1] :]
        self._skip = None
        return iter(batches)

    def __len__(self) -> int:
        return -(-(-(-self.size // self.batch_size)) // self.num_replicas)


class SummarizationDataModule(L.LightningDataModule):
    def __init__(
        self,
        data: DictConfig,
        encoder_tokenizer: PreTrainedTokenizerBase,
        decoder_tokenizer: PreTrainedTokenizerBase,
        decoder_start_token_id: int,
        max_source_positions: int | None = None,
        max_target_positions: int | None = None,
        seed: int = 0,
    ):
        super().__init__()
        self.seed = seed
        # (epoch, batches already trained in it), set when a run resumes from a mid-epoch checkpoint
        self.resume_position: tuple[int, int] | None = None
        self.data = data
        self.encoder_tokenizer = encoder_tokenizer
        self.decoder_tokenizer = decoder_tokenizer
        self.decoder_start_token_id = decoder_start_token_id
        self._check_lengths(max_source_positions, max_target_positions)
        self.raw: dict[str, datasets.Dataset] = {}
        self.tokenized: dict[str, datasets.Dataset] = {}

    def _check_lengths(self, max_source_positions, max_target_positions) -> None:
        check_data_settings(self.data)
        multiple = self.data.get("pad_to_multiple_of")
        if multiple is not None and (isinstance(multiple, bool) or not isinstance(multiple, int) or multiple <= 0):
            raise EncdecError(f"data.pad_to_multiple_of={multiple} must be a positive integer, or null for no rounding")
        for key, limit in (("max_source_length", max_source_positions), ("max_target_length", max_target_positions)):
            value = self.data[key]
            if limit is not None and value > limit:
                raise EncdecError(f"data.{key}={value} exceeds the model's {limit} positions: set data.{key}<={limit}")

    @user_settings("data")
    def prepare(self, raw_splits: dict[str, datasets.Dataset] | None = None) -> None:
        """Load (unless given `raw_splits`, what load_splits returned) and tokenize every split now, so bad data fails
        before any training starts."""
        if self.tokenized:
            return
        self.raw = raw_splits if raw_splits is not None else load_splits(self.data)
        for split, dataset in self.raw.items():
            self.tokenized[split] = self._tokenize(dataset, split)

    def setup(self, stage: str | None = None) -> None:
        self.prepare()

    def _tokenize(self, dataset: datasets.Dataset, split: str) -> datasets.Dataset:
        max_source, max_target = self.data.max_source_length, self.data.max_target_length
        encoder_tokenizer, decoder_tokenizer = self.encoder_tokenizer, self.decoder_tokenizer
        eos = decoder_tokenizer.eos_token_id if decoder_tokenizer.eos_token_id is not None else decoder_tokenizer.sep_token_id

        def tokenize(batch):
            sources = encoder_tokenizer(batch["document"], max_length=max_source, truncation=True)
            targets = decoder_tokenizer(
                batch["summary"], max_length=max_target - 1, truncation=True, add_special_tokens=False
            )
            return {
                "input_ids": sources["input_ids"],
                "labels": [ids + [eos] for ids in targets["input_ids"]],
            }

        fingerprint = hashlib.sha256(
            "|".join(
                [
                    dataset._fingerprint,
                    tokenizer_fingerprint(encoder_tokenizer),
                    tokenizer_fingerprint(decoder_tokenizer),
                    str(max_source),
                    str(max_target),
                    str(eos),
                    "v1",
                ]
            ).encode()
        ).hexdigest()[:32]
        return dataset.map(
            tokenize,
            batched=True,
            remove_columns=[],
            new_fingerprint=fingerprint,
            desc=f"tokenizing {split}",
        )

    def collate(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        source_pad = self.encoder_tokenizer.pad_token_id
        target_pad = self.decoder_tokenizer.pad_token_id
        source_width = self._padded_width(max(len(r["input_ids"]) for r in rows), self.data.max_source_length)
        target_width = self._padded_width(max(len(r["labels"]) for r in rows), self.data.max_target_length)
        batch = len(rows)
        input_ids = torch.full((batch, source_width), source_pad, dtype=torch.long)
        attention_mask = torch.zeros((batch, source_width), dtype=torch.long)
        labels = torch.full((batch, target_width), IGNORE_INDEX, dtype=torch.long)
        decoder_input_ids = torch.full((batch, target_width), target_pad, dtype=torch.long)
        decoder_attention_mask = torch.zeros((batch, target_width), dtype=torch.long)
        for i, row in enumerate(rows):
            source, target = row["input_ids"], row["labels"]
            input_ids[i, : len(source)] = torch.tensor(source)
            attention_mask[i, : len(source)] = 1
            labels[i, : len(target)] = torch.tensor(target)
            shifted = [self.decoder_start_token_id] + target[:-1]
            decoder_input_ids[i, : len(shifted)] = torch.tensor(shifted)
            # An explicit mask: with GPT-2 the start token equals pad, and a mask built from pad would hide it.
            decoder_attention_mask[i, : len(shifted)] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "decoder_input_ids": decoder_input_ids,
            "decoder_attention_mask": decoder_attention_mask,
            "labels": labels,
            "index": torch.tensor([r["index"] for r in rows], dtype=torch.long),
        }

    def _padded_width(self, longest: int, limit: int) -> int:
        """`longest` rounded up to data.pad_to_multiple_of (never past the length limit): XLA compiles one graph per
        shape, so trainer=tpu pads to a handful of widths instead of one per batch. The extra columns are masked."""
        multiple = self.data.get("pad_to_multiple_of")
        if not multiple:
            return longest
        return max(longest, min(-(-longest // multiple) * multiple, limit))

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        dataset = self.tokenized[split].select_columns(["input_ids", "labels"])
        dataset = dataset.add_column("index", list(range(len(dataset))))
        workers = int(self.data.get("num_workers", 0))
        common = dict(
            collate_fn=self.collate,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=bool(self.data.get("pin_memory", False)),
            # Its own generator: making an iterator must not draw from the global RNG (exact resume needs that stream).
            generator=torch.Generator().manual_seed(self.seed),
        )
        trainer = self.trainer
        replicas, rank = (trainer.world_size, trainer.global_rank) if trainer else (1, 0)
        if split != "train":
            source_lengths = [lengths[0] for lengths in dataset_lengths(dataset, ("input_ids",))]
            sampler = EvalBatchSampler(
                source_lengths, self.data.eval_batch_size, num_replicas=replicas, rank=rank,
                max_tokens=self.data.get("eval_max_tokens_per_batch"), target_tokens=self.data.max_target_length,
            )
            return DataLoader(dataset, batch_sampler=sampler, **common)
        if self.data.get("max_tokens_per_batch"):
            # Length-bucketed batches under a padded-token budget: little padding when lengths spread.
            self.train_sampler = TokenBudgetBatchSampler(
                dataset_lengths(dataset), self.data.max_tokens_per_batch, shuffle=shuffle, seed=self.seed,
                num_replicas=replicas, rank=rank,
            )
        else:
            self.train_sampler = ResumableBatchSampler(
                len(dataset), self.data.batch_size, seed=self.seed, shuffle=shuffle, num_replicas=replicas, rank=rank,
                lengths=dataset_lengths(dataset) if self.data.get("group_by_length") else None,
            )
        if self.resume_position is not None:
            self.train_sampler.resume_at(*self.resume_position)
        return DataLoader(dataset, batch_sampler=self.train_sampler, **common)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
