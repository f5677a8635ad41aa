"""The "decoder alone" anchor of bench/quality.py (issue 26): what a user gets by fine-tuning the decoder LM by itself
with plain transformers instead of pairing it with an encoder.

The decoder (SmolLM2-135M-Instruct in the quickstart), built as encdec builds it (`encdec.models.build_decoder`: the
same source, config overrides and weights, here left a plain causal LM), trains with HF `Trainer` on
`[document; bos; summary; eos]` with the loss on the summary tokens (and eos) only:

* the same tokens as encdec's rows: the document through the tokenizer as encdec's encoder side tokenizes it
  (truncated to `data.max_source_length`), the summary as encdec's labels (`data.max_target_length - 1` tokens + eos),
  bos = encdec's decoder start token (`encdec.models.generation_ids`);
* the same data (`encdec.data.loading.load_splits`, with the `data.max_*_samples` caps), batch (`data.batch_size`),
  steps, AdamW settings (`optimizer.*`; `optim="adamw_torch_fused"`, Trainer's default and the kernel encdec picks),
  schedule (`scheduler`: warm-up then linear decay), gradient clipping (`trainer.gradient_clip_val`) and seed. One
  difference is Trainer's own: it leaves norm weights out of weight decay, encdec decays every parameter;
* evaluation by greedy generation of `generation.max_new_tokens` new tokens after `[document; bos]`, with no n-gram of
  `generation.no_repeat_ngram_size` repeated within the summary (`NoRepeatNGramAfter`: transformers'
  `no_repeat_ngram_size` would also ban every trigram of the document), in length-sorted batches under
  `data.eval_max_tokens_per_batch` as encdec batches its evaluation, scored with `encdec.metrics.rouge`: validation
  ROUGE-2 and loss before training and every `eval_every` steps (the curve), test ROUGE once at the end.

Precision: fp32, HF Trainer's default, unless `trainer.precision=bf16-mixed` is named (the anchor
`decoder-alone-lr1e-4-bf16`): then Trainer's `bf16=True`, and evaluation under the same bf16 autocast.

Training seconds count the optimizer steps only (`on_step_begin` to `on_step_end`, evaluation excluded), as
bench/quality_clock.py counts encdec's. Run through bench/quality.py (`--levers default,decoder-alone`).
"""

from __future__ import annotations

import math
import resource
import tempfile
import time

import common

# transformers' name for each of encdec's schedules (conf/scheduler): warm-up steps come from the same config.
SCHEDULES = {
    "transformers.get_linear_schedule_with_warmup": "linear",
    "transformers.get_cosine_schedule_with_warmup": "cosine",
    "transformers.get_constant_schedule_with_warmup": "constant_with_warmup",
    "transformers.get_inverse_sqrt_schedule": "inverse_sqrt",
}


def no_repeat_ngram_after(start: int, size: int):
    """A LogitsProcessor banning any token that would repeat an n-gram of `size` within input_ids[:, start:] (the
    summary being generated, from its start token on), whatever the prompt before it holds."""
    from transformers import LogitsProcessor

    class NoRepeatNGramAfter(LogitsProcessor):
        def __call__(self, input_ids, scores):
            generated = input_ids[:, start:].tolist()
            for row, tokens in enumerate(generated):
                if len(tokens) < size:
                    continue
                prefix = tokens[len(tokens) - (size - 1) :]
                banned = {
                    tokens[i + size - 1] for i in range(len(tokens) - size + 1) if tokens[i : i + size - 1] == prefix
                }
                if banned:
                    scores[row, sorted(banned)] = -math.inf
            return scores

    return NoRepeatNGramAfter()


def eval_batches(lengths: list[int], new_tokens: int, budget: int | None, rows: int) -> list[list[int]]:
    """Row indices, longest first, in batches of at most `budget` tokens (rows x (longest prompt + new tokens)), as
    encdec batches its evaluation; without a budget, `rows` rows each."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches, current = [], []
    for i in order:
        longest = lengths[current[0]] if current else lengths[i]
        full = len(current) >= rows if budget is None else (len(current) + 1) * (longest + new_tokens) > budget
        if current and full:
            batches.append(current)
            current = []
        current.append(i)
    return batches + ([current] if current else [])


def worker(spec: dict) -> None:
    started = time.perf_counter()
    common.quiet()
    import datasets
    import torch
    from transformers import (
        DataCollatorForSeq2Seq,
        GenerationConfig,
        LogitsProcessorList,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from encdec.data.loading import load_splits
    from encdec.data.tokenize import IGNORE_INDEX, end_of_summary_id
    from encdec.metrics import lead_baselines, rouge
    from encdec.models import apply_speed_switches, build_decoder, generation_ids, load_tokenizer

    cfg = common.compose(*spec["overrides"])
    if cfg.optimizer._target_ != "torch.optim.AdamW":
        raise ValueError(f"the decoder-alone anchor trains with AdamW, not {cfg.optimizer._target_}")
    schedule = "constant" if not cfg.get("scheduler") else SCHEDULES.get(cfg.scheduler._target_)
    if schedule is None:
        raise ValueError(f"no transformers schedule matches scheduler {cfg.scheduler._target_}")
    torch.manual_seed(cfg.seed)
    tokenizer = load_tokenizer(cfg.decoder, "decoder")
    lm, missing = build_decoder(cfg.decoder, encoder_hidden_size=0, kind="prefix")  # not gated: the plain causal LM
    apply_speed_switches(lm, cfg.model)
    lm.train()
    ids = generation_ids(lm.config, tokenizer)  # also gives a tokenizer without one its pad token
    start, pad, eos = ids["decoder_start_token_id"], ids["pad_token_id"], end_of_summary_id(tokenizer)
    data = cfg.data
    splits = load_splits(data)

    def documents(split) -> list[list[int]]:
        # As encdec's encoder side tokenizes them (encdec.data.tokenize.tokenize_split).
        return tokenizer(list(split["document"]), max_length=data.max_source_length, truncation=True)["input_ids"]

    def summaries(split) -> list[list[int]]:
        # As encdec's labels: the summary cut to max_target_length - 1 tokens, then eos.
        cut = tokenizer(
            list(split["summary"]), max_length=data.max_target_length - 1, truncation=True, add_special_tokens=False
        )["input_ids"]
        return [tokens + [eos] for tokens in cut]

    def rows(split) -> datasets.Dataset:
        pairs = zip(documents(split), summaries(split))
        return datasets.Dataset.from_list(
            [
                {
                    "input_ids": [*d, start, *s],
                    "attention_mask": [1] * (len(d) + 1 + len(s)),
                    "labels": [IGNORE_INDEX] * (len(d) + 1) + s,
                }
                for d, s in pairs
            ]
        )

    train, validation = rows(splits["train"]), rows(splits["validation"])
    collator = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE_INDEX)
    new_tokens = cfg.generation.max_new_tokens or data.max_target_length
    ngram = int(cfg.generation.get("no_repeat_ngram_size") or 0)
    generation_config = GenerationConfig(
        max_new_tokens=new_tokens,
        min_new_tokens=cfg.generation.get("min_new_tokens") or 0,
        do_sample=False,
        num_beams=1,
        bos_token_id=ids["bos_token_id"],
        eos_token_id=eos,
        pad_token_id=pad,
    )
    device = torch.device("cuda" if spec["device"] == "cuda" else "cpu")
    # As HF Trainer: fp32 unless told otherwise (trainer.precision=auto, encdec's default, is not telling it).
    bf16 = str(cfg.trainer.precision) == "bf16-mixed"

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    @torch.no_grad()
    def summarize(split) -> list[str]:
        prompts = [[*d, start] for d in documents(split)]
        texts = [""] * len(prompts)
        batches = eval_batches(
            [len(p) for p in prompts], new_tokens, data.get("eval_max_tokens_per_batch"), data.eval_batch_size
        )
        for batch in batches:
            width = max(len(prompts[i]) for i in batch)
            input_ids = torch.tensor([[pad] * (width - len(prompts[i])) + prompts[i] for i in batch], device=device)
            mask = torch.tensor([[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in batch], device=device)
            processors = LogitsProcessorList([no_repeat_ngram_after(width - 1, ngram)] if ngram else [])
            with autocast():
                out = lm.generate(
                    input_ids=input_ids,
                    attention_mask=mask,
                    generation_config=generation_config,
                    logits_processor=processors,
                )
            for i, text in zip(batch, tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)):
                texts[i] = text.strip()
        return texts

    @torch.no_grad()
    def loss(dataset: datasets.Dataset) -> float:
        total, count = 0.0, 0
        for first in range(0, len(dataset), data.eval_batch_size):
            batch = collator([dataset[i] for i in range(first, min(first + data.eval_batch_size, len(dataset)))])
            batch = {k: v.to(device) for k, v in batch.items()}
            tokens = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
            with autocast():
                total += float(lm(**batch).loss) * tokens
            count += tokens
        return total / max(count, 1)

    class Clock(TrainerCallback):
        def __init__(self):
            self.seconds, self.started, self.losses = 0.0, None, []

        def on_step_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds += time.perf_counter() - self.started

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.losses.append(round(float(logs["loss"]), 4))

    clock = Clock()
    references = list(splits["validation"]["summary"])
    curve, evaluation_seconds = [], 0.0

    def evaluate(step: int) -> None:
        nonlocal evaluation_seconds
        begun = time.perf_counter()
        lm.eval()
        point = {
            "step": step,
            "seconds": round(clock.seconds, 2),
            "rouge2": rouge(summarize(splits["validation"]), references)["rouge2"],
            "loss": loss(validation),
        }
        lm.train()
        curve.append(point)
        evaluation_seconds += time.perf_counter() - begun
        print(f"[decoder-alone] {point}", flush=True)

    class EvaluateInCurve(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step % spec["eval_every"] == 0 or state.global_step == state.max_steps:
                evaluate(state.global_step)

    optimizer = cfg.optimizer
    with tempfile.TemporaryDirectory(prefix="encdec-quality-decoder-alone-") as output_dir:
        args = TrainingArguments(
            output_dir=output_dir,
            per_device_train_batch_size=data.batch_size,
            max_steps=spec["steps"],
            learning_rate=optimizer.lr,
            weight_decay=optimizer.weight_decay,
            adam_beta1=optimizer.betas[0],
            adam_beta2=optimizer.betas[1],
            adam_epsilon=optimizer.eps,
            optim="adamw_torch_fused",
            lr_scheduler_type=schedule,
            warmup_steps=cfg.scheduler.num_warmup_steps if cfg.get("scheduler") else 0,
            max_grad_norm=cfg.trainer.gradient_clip_val or 0.0,
            eval_strategy="no",
            save_strategy="no",
            logging_strategy="steps",
            logging_steps=1,
            report_to=[],
            disable_tqdm=True,
            use_cpu=spec["device"] == "cpu",
            seed=cfg.seed,
            dataloader_num_workers=0,
            bf16=bf16,
        )
        trainer = Trainer(
            model=lm, args=args, train_dataset=train, data_collator=collator, callbacks=[clock, EvaluateInCurve()]
        )
        lm.to(device)
        evaluate(0)
        trainer.train()
    begun = time.perf_counter()
    lm.eval()
    predictions = summarize(splits["test"])
    documents_test, references_test = list(splits["test"]["document"]), list(splits["test"]["summary"])
    test = {f"test/{k}": v for k, v in rouge(predictions, references_test).items()}
    test.update(lead_baselines(documents_test, references_test))
    evaluation_seconds += time.perf_counter() - begun
    common.emit(
        {
            "curve": curve,
            "test": {k: round(v, 2) for k, v in test.items()},
            "train_seconds": round(clock.seconds, 2),
            "evaluation_seconds": round(evaluation_seconds, 1),
            "worker_seconds": round(time.perf_counter() - started, 1),
            "train_losses": clock.losses,
            "example": predictions[0] if predictions else "",
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "settings": {
                "decoder": cfg.decoder.pretrained,
                "dtype": str(next(lm.parameters()).dtype),
                "missing_keys": len(missing),
                "rows": {"train": len(train), "validation": len(validation), "test": len(predictions)},
                "max_source_length": data.max_source_length,
                "max_target_length": data.max_target_length,
                "batch_size": data.batch_size,
                "steps": spec["steps"],
                "optim": args.optim if isinstance(args.optim, str) else args.optim.value,
                "lr": optimizer.lr,
                "weight_decay": optimizer.weight_decay,
                "schedule": schedule,
                "warmup_steps": args.warmup_steps,
                "max_grad_norm": args.max_grad_norm,
                "start_token": start,
                "eos_token": eos,
                "max_new_tokens": new_tokens,
                "no_repeat_ngram_size_in_summary": ngram,
            },
        }
    )
