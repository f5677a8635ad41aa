"""The anchor curve of bench/quality.py: HF `Seq2SeqTrainer` trains the same model (built by encdec from the same
config) on the same tokenized aclsum rows, with the same batch size, optimizer, schedule, clipping and steps, and
scores validation ROUGE with the same generation settings and the same ROUGE function every `eval_every` steps."""

from __future__ import annotations

import dataclasses
import tempfile
import time

import common


def worker(spec: dict) -> None:
    common.quiet()
    import numpy
    import torch
    from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer, Seq2SeqTrainingArguments, TrainerCallback

    from encdec.data.tokenize import IGNORE_INDEX
    from encdec.lit.datamodule import SummarizationDataModule
    from encdec.metrics import rouge
    from encdec.models import build_model

    cfg = common.compose(*spec["overrides"])
    torch.manual_seed(cfg.seed)
    model, encoder_tokenizer, decoder_tokenizer = build_model(cfg)
    datamodule = SummarizationDataModule(
        cfg.data, encoder_tokenizer, decoder_tokenizer, model.config.decoder_start_token_id
    )
    datamodule.prepare()
    columns = ["input_ids", "labels"]
    train = datamodule.tokenized["train"].select_columns(columns)
    validation = datamodule.tokenized["validation"].select_columns(columns)
    references = list(datamodule.raw["validation"]["summary"])
    collator = DataCollatorForSeq2Seq(encoder_tokenizer, model=model, label_pad_token_id=IGNORE_INDEX)

    def compute_metrics(prediction):
        ids = numpy.where(prediction.predictions >= 0, prediction.predictions, decoder_tokenizer.pad_token_id)
        texts = decoder_tokenizer.batch_decode(ids, skip_special_tokens=True)
        return {"rouge2": rouge(texts, references)["rouge2"]}

    class Clock(TrainerCallback):
        def __init__(self):
            self.seconds, self.started = 0.0, None

        def on_step_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds += time.perf_counter() - self.started

    clock = Clock()
    fields = {f.name for f in dataclasses.fields(Seq2SeqTrainingArguments)}
    device = spec["device"]
    args = Seq2SeqTrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="encdec-quality-hf-"),
        per_device_train_batch_size=cfg.data.batch_size,
        per_device_eval_batch_size=cfg.data.eval_batch_size,
        max_steps=spec["steps"],
        learning_rate=cfg.optimizer.lr,
        weight_decay=cfg.optimizer.weight_decay,
        max_grad_norm=cfg.trainer.gradient_clip_val,
        lr_scheduler_type="linear",
        warmup_steps=cfg.scheduler.num_warmup_steps,
        optim="adamw_torch",
        eval_strategy="no",
        save_strategy="no",
        logging_strategy="no",
        report_to=[],
        disable_tqdm=True,
        predict_with_generate=True,
        generation_max_length=None,
        use_cpu=device == "cpu",
        seed=cfg.seed,
        dataloader_num_workers=0,
        **({"generation_num_beams": 1} if "generation_num_beams" in fields else {}),
    )
    trainer = Seq2SeqTrainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=validation,
        data_collator=collator,
        processing_class=encoder_tokenizer,
        compute_metrics=compute_metrics,
        callbacks=[clock],
    )
    curve = []

    def evaluate(step: int) -> None:
        metrics = trainer.evaluate(max_new_tokens=cfg.data.max_target_length)
        curve.append(
            {
                "step": step,
                "seconds": round(clock.seconds, 2),
                "rouge2": metrics["eval_rouge2"],
                "loss": metrics["eval_loss"],
            }
        )

    class EvaluateInCurve(TrainerCallback):
        # Evaluated here rather than by eval_strategy, so each point carries the step and training seconds it follows.
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step % spec["eval_every"] == 0 or state.global_step == state.max_steps:
                evaluate(state.global_step)

    trainer.add_callback(EvaluateInCurve())
    evaluate(0)
    trainer.train()
    common.emit({"curve": curve})
