"""The LightningDataModule: prepares the splits once and hands Lightning the loaders built from `encdec.data`."""

from __future__ import annotations

import datasets
import lightning as L
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from encdec.boundary import user_settings
from encdec.data.loading import load_splits
from encdec.data.sampling import EvalBatchSampler, ResumableBatchSampler, dataset_lengths, training_order
from encdec.data.streaming import StreamedBatches
from encdec.data.tokenize import Seq2SeqCollator, batch_tokenizer, tokenize_split
from encdec.errors import EncdecError


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
        pad_to_multiple_of: int | None = None,
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
        self.collate = Seq2SeqCollator.for_tokenizers(
            encoder_tokenizer,
            decoder_tokenizer,
            decoder_start_token_id,
            data.max_source_length,
            data.max_target_length,
            # data.pad_to_multiple_of, else the caller's (train.py: width buckets under model.compile)
            data.get("pad_to_multiple_of") or pad_to_multiple_of,
        )
        self.raw: dict[str, datasets.Dataset] = {}
        self.tokenized: dict[str, datasets.Dataset] = {}
        # data.streaming=true: training batches read from the source while training (encdec.data.streaming); raw
        # ["train"] then holds only the stream's first rows, and the stream's saved position for a resumed run
        self.streaming = bool(data.get("streaming"))
        self.train_stream: StreamedBatches | None = None
        self.stream_resume: dict | None = None

    @classmethod
    def for_model(
        cls, data: DictConfig, model, encoder_tokenizer, decoder_tokenizer, seed: int, **options
    ) -> SummarizationDataModule:
        """The data module for `model`: its decoder's start token, and lengths checked against both sides' positions."""
        return cls(
            data,
            encoder_tokenizer,
            decoder_tokenizer,
            decoder_start_token_id=model.config.decoder_start_token_id,
            max_source_positions=getattr(model.encoder.config, "max_position_embeddings", None),
            max_target_positions=getattr(model.decoder.config, "max_position_embeddings", None),
            seed=seed,
            **options,
        )

    def _check_lengths(self, max_source_positions, max_target_positions) -> None:
        # Only the limits of the model built: the settings themselves were checked before anything loaded.
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
            if split == "train" and self.streaming:
                continue  # tokenized buffer by buffer while training
            self.tokenized[split] = tokenize_split(
                dataset,
                split,
                self.encoder_tokenizer,
                self.decoder_tokenizer,
                self.data.max_source_length,
                self.data.max_target_length,
            )

    def setup(self, stage: str | None = None) -> None:
        self.prepare()

    def _stream_loader(self) -> DataLoader:
        trainer = self.trainer
        replicas, rank = (trainer.world_size, trainer.global_rank) if trainer else (1, 0)
        data = self.data

        def order_for(lengths, announce):
            return training_order(
                lengths,
                data.batch_size,
                data.get("max_tokens_per_batch"),
                data.get("group_by_length") or False,
                float(data.get("length_jitter", 0.0)),
                announce=announce,
            )

        self.train_stream = StreamedBatches(
            data,
            batch_tokenizer(
                self.encoder_tokenizer, self.decoder_tokenizer, data.max_source_length, data.max_target_length
            ),
            self.collate,
            order_for,
            seed=self.seed,
            num_replicas=replicas,
            rank=rank,
            epoch_of=(lambda: trainer.current_epoch) if trainer else None,
        )
        if self.resume_position is not None:
            self.train_stream.resume_at(*self.resume_position, self.stream_resume)
        # Batches come collated from the stream, read in this process (its position is what a checkpoint keeps).
        return DataLoader(self.train_stream, batch_size=None, pin_memory=bool(data.get("pin_memory", False)))

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split == "train" and self.streaming:
            return self._stream_loader()
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
                source_lengths,
                self.data.eval_batch_size,
                num_replicas=replicas,
                rank=rank,
                max_tokens=self.data.get("eval_max_tokens_per_batch"),
                target_tokens=self.data.max_target_length,
            )
            return DataLoader(dataset, batch_sampler=sampler, **common)
        order = training_order(
            dataset_lengths(dataset),
            self.data.batch_size,
            self.data.get("max_tokens_per_batch"),
            self.data.get("group_by_length") or False,
            # Absent from configs saved before it existed: their strict order, so they resume bit for bit.
            float(self.data.get("length_jitter", 0.0)),
            announce=rank == 0,
        )
        self.train_sampler = ResumableBatchSampler(
            order, seed=self.seed, shuffle=shuffle, num_replicas=replicas, rank=rank
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
