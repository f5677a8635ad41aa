"""One run of bench/train_throughput.py, in its own subprocess (--worker SPEC): its rows, then one epoch of encdec's
Lightning path or of transformers' Seq2SeqTrainer, timed by throughput_steps.Steps."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from encdec.data.tokenize import IGNORE_INDEX  # noqa: E402
from throughput_steps import Steps, count_step_flops, mfu_fields, representative_batch, warm_up  # noqa: E402


def load_rows(spec: dict, cfg, model, encoder_tokenizer, decoder_tokenizer) -> list[dict]:
    if spec["data"] == "synthetic":
        return truncate(common.synthetic_rows(spec["rows"], seed=0), spec["max_source"], spec["max_target"])
    if spec["data"] == "aclsum-sections":
        return aclsum_section_rows(spec, encoder_tokenizer, decoder_tokenizer)
    from encdec.lit.datamodule import SummarizationDataModule

    datamodule = SummarizationDataModule(
        cfg.data, encoder_tokenizer, decoder_tokenizer, model.config.decoder_start_token_id
    )
    datamodule.prepare()
    train = datamodule.tokenized["train"]
    return [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in train.select(range(spec["rows"]))]


def aclsum_section_rows(spec: dict, encoder_tokenizer, decoder_tokenizer) -> list[dict]:
    """Real rows of spread lengths: each ACLSum paper's abstract, introduction and conclusion as a document, with its
    challenge, approach and outcome summary in turn (all 247 papers, shuffled with seed 0, the first `rows`), tokenized
    as encdec's data module does. At 256/32 MiniLM tokens: sources 39..256 (median 231), targets 14..32."""
    import random

    import datasets

    from encdec import sources
    from encdec.data.formats import ACLSUM_ASPECTS, ACLSUM_SECTIONS
    from encdec.data.tokenize import tokenize_split

    rows = []
    for name in ("train.jsonl", "val.jsonl", "test.jsonl"):
        for line in (sources.package_dir("aclsum") / "dataset" / name).read_text().splitlines():
            paper = json.loads(line)
            for section, aspect in zip(ACLSUM_SECTIONS, ACLSUM_ASPECTS):
                document, summary = " ".join(paper["sentences"][section]), paper["summary"][aspect]
                if document.strip() and summary.strip():
                    rows.append({"document": document, "summary": summary})
    random.Random(0).shuffle(rows)
    dataset = datasets.Dataset.from_list(rows[: spec["rows"]])
    tokenized = tokenize_split(
        dataset, "train", encoder_tokenizer, decoder_tokenizer, spec["max_source"], spec["max_target"]
    )
    return [{"input_ids": row["input_ids"], "labels": row["labels"]} for row in tokenized]


def truncate(rows: list[dict], max_source: int, max_target: int) -> list[dict]:
    """Cut synthetic rows to max_source/max_target keeping [CLS] ... [SEP] and the final [SEP] (a no-op at 512/128)."""
    out = []
    for row in rows:
        source, labels = row["input_ids"], row["labels"]
        if len(source) > max_source:
            source = source[: max_source - 1] + source[-1:]
        if len(labels) > max_target:
            labels = labels[: max_target - 1] + labels[-1:]
        out.append({"input_ids": source, "labels": labels})
    return out


def data_overrides(spec: dict) -> list[str]:
    return [
        f"data.max_source_length={spec['max_source']}",
        f"data.max_target_length={spec['max_target']}",
        f"data.batch_size={spec['batch_size']}",
        "data.max_eval_samples=2",
        "data.max_test_samples=2",
    ]


def calibrate_budget(lengths: list[tuple[int, int]], batch_size: int) -> int:
    """The smallest max_tokens whose batches hold batch_size rows on average (as many batches as fixed batching)."""
    from encdec.data.sampling import ResumableBatchSampler, TokenBudget

    target = math.ceil(len(lengths) / batch_size)
    low, high = 1, max(s + t for s, t in lengths) * len(lengths)
    while low < high:
        middle = (low + high) // 2
        if len(ResumableBatchSampler(TokenBudget(lengths, middle), shuffle=False)) <= target:
            high = middle
        else:
            low = middle + 1
    return low


def worker_encdec(spec: dict, rows: list[dict], model, encoder_tokenizer, decoder_tokenizer, cfg, steps: Steps) -> dict:
    import datasets
    import lightning as L
    from torch.utils.data import DataLoader

    from encdec.data.sampling import ResumableBatchSampler, TokenBudget
    from encdec.lit.compiled import bucket_multiple
    from encdec.lit.datamodule import SummarizationDataModule
    from encdec.lit.module import Seq2SeqModule
    from encdec.train import _optimizer, _scheduler

    extra: dict = {}
    dataset = datasets.Dataset.from_list(rows)
    from omegaconf import OmegaConf

    for key in ("group_by_length", "length_jitter"):  # levers; without them the data preset's defaults
        if key in spec:
            OmegaConf.update(cfg, f"data.{key}", spec[key])

    class DataModule(SummarizationDataModule):
        def prepare(self):
            self.tokenized = {
                "train": dataset,
                "validation": dataset.select(range(2)),
                "test": dataset.select(range(2)),
            }

        def train_dataloader(self):
            if not spec.get("budget"):
                return super().train_dataloader()
            # What the wired datamodule does when data.max_tokens_per_batch is set (see bench/README.md).
            split = self.tokenized["train"]
            lengths = list(zip(map(len, split["input_ids"]), map(len, split["labels"])))
            if spec["budget"] == "items":
                max_tokens = calibrate_budget(lengths, self.data.batch_size)
            else:
                max_tokens = self.data.batch_size * (self.data.max_source_length + self.data.max_target_length)
            extra["max_tokens"] = max_tokens
            sampler = ResumableBatchSampler(TokenBudget(lengths, max_tokens), shuffle=True, seed=0)
            data = split.select_columns(["input_ids", "labels"]).add_column("index", list(range(len(split))))
            return DataLoader(data, batch_sampler=sampler, collate_fn=self.collate, num_workers=0)

    # As train.py does: under model.compile the collator pads widths to buckets (multiples of 64), in the default
    # batching and in the budget lever's own DataLoader alike (both collate with self.collate).
    datamodule = DataModule(
        cfg.data,
        encoder_tokenizer,
        decoder_tokenizer,
        model.config.decoder_start_token_id,
        pad_to_multiple_of=bucket_multiple(cfg.data, bool(spec.get("compile"))),
    )
    datamodule.prepare()
    extra["pad_to_multiple_of"] = datamodule.collate.pad_to_multiple_of

    device = spec.get("device", "cpu")

    class Module(Seq2SeqModule):
        def on_before_batch_transfer(self, batch, dataloader_idx):
            if device != "cpu":
                steps.count(batch)  # still on the host: counting a CUDA batch would sync every step
            return super().on_before_batch_transfer(batch, dataloader_idx)

        def training_step(self, batch, batch_idx):
            if spec.get("finite_check", True):
                return super().training_step(batch, batch_idx)
            loss = self.loss(batch)
            self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
            return loss

        def loss(self, batch):
            if spec.get("decoder_mask", True):
                return super().loss(batch)
            # Right-padded targets: the causal mask already hides the padding from every real position.
            return super().loss({**batch, "decoder_attention_mask": None})

    if spec.get("checkpointing"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    # +compile is the product's switch (model.compile: the training forward compiled, one graph per width bucket);
    # its runs skip --compile-skip-steps untimed steps. +fusedloss is model.fused_loss (loss_chunk_tokens 4096).
    module = Module(
        model,
        decoder_tokenizer,
        optimizer=_optimizer(cfg),
        scheduler=_scheduler(cfg),
        generate_in_validation=False,
        cudnn_attention=spec.get("cudnn_attention", False),
        compile=bool(spec.get("compile")),
        fused_loss=bool(spec.get("fused_loss")),
        compile_backend=spec.get("compile_backend", "inductor"),
    )

    class Timer(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if device == "cpu":
                steps.count(batch)
            steps.start()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if steps.end(last=batch_idx == trainer.num_training_batches - 1):
                trainer.should_stop = True

    trainer = L.Trainer(
        accelerator=device,
        devices=1,
        precision=spec.get("precision", "32-true"),
        max_epochs=1,
        max_steps=-1,
        gradient_clip_val=1.0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[Timer()],
    )
    trainer.fit(module, datamodule=datamodule)
    return extra


def worker_hf(spec: dict, rows: list[dict], model, encoder_tokenizer, steps: Steps) -> dict:
    import datasets
    from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer, Seq2SeqTrainingArguments, TrainerCallback

    dataset = datasets.Dataset.from_list(rows)
    collator = DataCollatorForSeq2Seq(encoder_tokenizer, model=model, label_pad_token_id=IGNORE_INDEX)

    def counting_collator(features):
        batch = collator(features)
        steps.count(batch)
        return batch

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            steps.start()

        def on_step_end(self, args, state, control, **kwargs):
            if steps.end(last=state.global_step >= state.max_steps):
                control.should_training_stop = True
            return control

    device, precision = spec.get("device", "cpu"), spec.get("precision", "32-true")
    if spec.get("cudnn_attention") is False:
        import torch

        torch.backends.cuda.enable_cudnn_sdp(False)
    fields = {f.name for f in dataclasses.fields(Seq2SeqTrainingArguments)}
    if "train_sampling_strategy" in fields:  # transformers >= 5.2x
        sampling = {"train_sampling_strategy": "group_by_length" if spec["group_by_length"] else "random"}
    else:  # older transformers (the GPU image's 5.17, 4.x)
        sampling = {"group_by_length": spec["group_by_length"]}
    args = Seq2SeqTrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="encdec-bench-hf-"),
        per_device_train_batch_size=spec["batch_size"],
        num_train_epochs=1,
        max_steps=-1,
        learning_rate=1e-4,
        weight_decay=0.01,
        adam_beta1=0.9,
        adam_beta2=0.999,
        adam_epsilon=1e-8,
        max_grad_norm=1.0,
        lr_scheduler_type="linear",
        warmup_steps=0,
        optim=spec["optim"],
        **sampling,
        eval_strategy="no",
        save_strategy="no",
        logging_strategy="no",
        report_to=[],
        disable_tqdm=True,
        use_cpu=device == "cpu",
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        seed=0,
        bf16=precision == "bf16-mixed",
        fp16=precision == "16-mixed",
    )
    trainer = Seq2SeqTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=counting_collator,
        processing_class=encoder_tokenizer,
        callbacks=[Timer()],
    )
    trainer.train()
    return {}


def worker(spec: dict) -> None:
    common.quiet()
    if spec.get("cudnn_avoid_recompile"):
        import os

        os.environ["TORCH_CUDNN_SDPA_AVOID_RECOMPILE"] = "1"  # read by torch's cuDNN attention, so set before it runs
    import torch

    torch.set_num_threads(spec["threads"])

    with common.PeakRSS() as memory:
        # encdec's default (optimizer.fused=null) resolves to fused in fp32; name the for-loop explicitly to measure it.
        optimizer = {
            "foreach": ["optimizer.fused=false", "+optimizer.foreach=true"],
            "fused": ["optimizer.fused=true"],
            "for-loop": ["optimizer.fused=false"],
        }.get(spec.get("optimizer"), [])
        if spec.get("precision", "32-true") != "32-true":
            # encdec resolves optimizer.fused=null from trainer.precision: fused except under 16-mixed with clipping
            # (the loss scaler), so under bf16-mixed encdec runs fused AdamW, like hf-fused (adamw_torch_fused).
            optimizer.append(f"trainer.precision={spec['precision']}")
        cfg, model, encoder_tokenizer, decoder_tokenizer = common.build(
            spec["model"], *data_overrides(spec), *optimizer, weights=spec["weights"]
        )
        fingerprint = common.weights_fingerprint(model)
        rows = load_rows(spec, cfg, model, encoder_tokenizer, decoder_tokenizer)
        device, precision = spec.get("device", "cpu"), spec.get("precision", "32-true")
        if device != "cpu":
            model.to(device)
        torch.manual_seed(0)
        warm_up(model, device, precision)
        flops = {}
        if spec.get("count_flops"):
            batch = representative_batch(
                rows, spec["batch_size"], encoder_tokenizer.pad_token_id, model.config.decoder_start_token_id, device
            )
            flops = count_step_flops(model, batch, device, precision)
            del batch
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()  # the peak of the training run: weights, grads, AdamW state, activations
        steps = Steps(
            device,
            spec.get("max_seconds"),
            spec.get("skip_steps", 0),
            exclude_new_widths=bool(spec.get("compile")),
            max_wall_seconds=spec.get("compile_max_seconds") if spec.get("compile") else None,
        )
        if spec["framework"] == "hf":
            extra = worker_hf(spec, rows, model, encoder_tokenizer, steps)
        else:
            extra = worker_encdec(spec, rows, model, encoder_tokenizer, decoder_tokenizer, cfg, steps)
        if device == "cuda":
            extra["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
            extra["peak_cuda_reserved_mib"] = round(torch.cuda.max_memory_reserved() / 2**20, 1)
    summary = steps.summary()
    if flops:
        extra.update(flops)
        if spec.get("peak_tflops"):
            extra.update(mfu_fields(summary, flops, spec["peak_tflops"]))
    common.emit({**summary, **memory.result(), **extra, "weights_fingerprint": fingerprint})
