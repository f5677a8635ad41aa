"""Rows to tokens (cached by datasets) and tokens to padded batches: the one home of how labels are masked.

Sources go through the ENCODER tokenizer, summaries through the DECODER tokenizer (two vocabularies: each side keeps
the one it was pretrained on): labels are the summary tokens followed by eos, padded with IGNORE_INDEX, which the
loss skips; decoder inputs are the labels shifted right behind the decoder's start token.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

import datasets
import torch
from transformers import PreTrainedTokenizerBase

# Label positions the loss skips (padding): torch's cross_entropy default, and what transformers' collators write.
IGNORE_INDEX = -100
# Rows per tokenizing process, at least: below 2 x this a split is tokenized in this process (a pool of processes
# costs a second or two to start and to hand the tokenizers over; 10,000 aclsum-sized rows tokenize in about 3 s).
ROWS_PER_PROCESS = 10_000
IDS_ONLY = {"return_attention_mask": False, "return_token_type_ids": False}
TOKEN_FEATURES = datasets.Features(
    {"input_ids": datasets.Sequence(datasets.Value("int32")), "labels": datasets.Sequence(datasets.Value("int32"))}
)


def tokenizing_processes(rows: int) -> int | None:
    """Processes for `datasets.map(num_proc=...)`: one per core this process may run on, when each gets at least
    ROWS_PER_PROCESS rows; None (this process alone) otherwise."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    processes = min(cores, rows // ROWS_PER_PROCESS)
    return processes if processes > 1 else None


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    vocab = tokenizer.get_vocab()
    digest = hashlib.sha256(repr(sorted(vocab.items())).encode()).hexdigest()[:16]
    return f"{type(tokenizer).__name__}-{len(vocab)}-{digest}"


def end_of_summary_id(decoder_tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The token every label sequence ends with: eos, or [SEP] for BERT-style decoders that have none."""
    eos = decoder_tokenizer.eos_token_id
    return eos if eos is not None else decoder_tokenizer.sep_token_id


def batch_tokenizer(
    encoder_tokenizer: PreTrainedTokenizerBase,
    decoder_tokenizer: PreTrainedTokenizerBase,
    max_source: int,
    max_target: int,
):
    """A function from a batch of rows (`document` and `summary` lists) to their `input_ids` and `labels`: what
    `tokenize_split` maps over a split, and what a streamed split (`encdec.data.streaming`) calls per buffer."""
    eos = end_of_summary_id(decoder_tokenizer)

    def tokenize(batch):
        # Only the ids are kept: no attention masks or token type ids built as Python lists only to be dropped.
        sources = encoder_tokenizer(batch["document"], max_length=max_source, truncation=True, **IDS_ONLY)
        targets = decoder_tokenizer(
            batch["summary"], max_length=max_target - 1, truncation=True, add_special_tokens=False, **IDS_ONLY
        )
        return {"input_ids": sources["input_ids"], "labels": [ids + [eos] for ids in targets["input_ids"]]}

    return tokenize


def tokenize_split(
    dataset: datasets.Dataset,
    split: str,
    encoder_tokenizer: PreTrainedTokenizerBase,
    decoder_tokenizer: PreTrainedTokenizerBase,
    max_source: int,
    max_target: int,
    num_proc: int | None | str = "auto",
) -> datasets.Dataset:
    """`input_ids` (the document, truncated to max_source) and `labels` (the summary + eos, at most max_target).

    Large splits are tokenized by one process per core (`num_proc="auto"`: `tokenizing_processes`). The cache is
    named by what determines the tokens alone, so a run on another number of cores, or in one process, reads the
    same cache (datasets finds the shards whatever number of processes wrote them)."""
    eos = end_of_summary_id(decoder_tokenizer)
    tokenize = batch_tokenizer(encoder_tokenizer, decoder_tokenizer, max_source, max_target)

    # Named by what determines the tokens, so datasets' cache serves a second run with the same tokenizers at once.
    fingerprint = hashlib.sha256(
        "|".join(
            [
                dataset._fingerprint,
                tokenizer_fingerprint(encoder_tokenizer),
                tokenizer_fingerprint(decoder_tokenizer),
                str(max_source),
                str(max_target),
                str(eos),
                "v2",  # v2: token columns alone, int32
            ]
        ).encode()
    ).hexdigest()[:32]
    if num_proc == "auto":
        num_proc = tokenizing_processes(len(dataset))
    return dataset.map(
        tokenize,
        batched=True,
        # The texts stay in the raw split (ROUGE's references, lead baselines); writing them again into the token
        # cache doubled what tokenizing wrote to disk. Token ids fit int32: half the bytes of datasets' int64.
        remove_columns=dataset.column_names,
        features=TOKEN_FEATURES,
        new_fingerprint=fingerprint,
        num_proc=num_proc,
        desc=f"tokenizing {split}",
    )


@dataclass
class Seq2SeqCollator:
    """Pads rows of `input_ids`/`labels` (and their `index` in the split) into a batch of tensors.

    A plain picklable object (not a method of the data module), so DataLoader workers and the benchmarks use it as is.
    """

    source_pad_id: int
    target_pad_id: int
    decoder_start_token_id: int
    max_source_length: int
    max_target_length: int
    pad_to_multiple_of: int | None = None

    @classmethod
    def for_tokenizers(
        cls,
        encoder_tokenizer: PreTrainedTokenizerBase,
        decoder_tokenizer: PreTrainedTokenizerBase,
        decoder_start_token_id: int,
        max_source_length: int,
        max_target_length: int,
        pad_to_multiple_of: int | None = None,
    ) -> Seq2SeqCollator:
        return cls(
            encoder_tokenizer.pad_token_id,
            decoder_tokenizer.pad_token_id,
            decoder_start_token_id,
            max_source_length,
            max_target_length,
            pad_to_multiple_of,
        )

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        source_width = self.padded_width(max(len(r["input_ids"]) for r in rows), self.max_source_length)
        target_width = self.padded_width(max(len(r["labels"]) for r in rows), self.max_target_length)
        batch = len(rows)
        input_ids = torch.full((batch, source_width), self.source_pad_id, dtype=torch.long)
        attention_mask = torch.zeros((batch, source_width), dtype=torch.long)
        labels = torch.full((batch, target_width), IGNORE_INDEX, dtype=torch.long)
        decoder_input_ids = torch.full((batch, target_width), self.target_pad_id, dtype=torch.long)
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
        collated = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "decoder_input_ids": decoder_input_ids,
            "decoder_attention_mask": decoder_attention_mask,
            "labels": labels,
        }
        if "index" in rows[0]:
            collated["index"] = torch.tensor([r["index"] for r in rows], dtype=torch.long)
        return collated

    def padded_width(self, longest: int, limit: int) -> int:
        """`longest` rounded up to pad_to_multiple_of (never past the length limit): XLA compiles one graph per
        shape, so trainer=tpu pads to a handful of widths instead of one per batch. The extra columns are masked."""
        if not self.pad_to_multiple_of:
            return longest
        return max(longest, min(-(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of, limit))


def real_tokens(batch: dict[str, torch.Tensor]) -> dict[str, int]:
    """Source and target tokens of a collated batch that are not padding."""
    return {"source": int(batch["attention_mask"].sum()), "target": int((batch["labels"] != IGNORE_INDEX).sum())}
