"""Training throughput: encdec's Lightning path vs transformers' Seq2SeqTrainer on the same model, data and batch size.

    python bench/train_throughput.py --scenario minilm-aclsum        # MiniLM->MiniLM, aclsum 512/128, batch 8
    python bench/train_throughput.py --scenario minilm-synthetic     # MiniLM->MiniLM, lognormal lengths 50..512
    python bench/train_throughput.py --scenario bert2gpt2-synthetic  # BERT->GPT-2 4x256, lognormal lengths
    python bench/train_throughput.py --scenario levers-data          # 4x256: batching levers one by one
    python bench/train_throughput.py --scenario levers-step          # 4x256: optimizer/mask/checkpointing levers
    python bench/train_throughput.py --padding                       # padding per batching scheme, no training
    python bench/train_throughput.py --precision-check               # fp32 vs bf16 autocast on this CPU
    python bench/train_throughput.py --list

Each run trains exactly one epoch over the same rows (so every run does the same real work and tokens/s ratios are
time ratios), float32, AdamW (lr 1e-4, weight decay 0.01, clip 1.0), after one untimed warm-up forward/backward.
Each run is its own subprocess (peak RSS per run); runs are alternated, and ratios are taken against the
Seq2SeqTrainer anchor of the same invocation. Results are merged into bench/results/train_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

BEST = "encdec+budget+fused+nodecmask"  # every lever that looked like it paid in levers-step, together
RECOMMENDED = "encdec+budget+fused"  # what survived isolated re-measurement (nodecmask did not: see README)

SCENARIOS = {
    # Headline: encdec default and encdec with the levers that paid vs Seq2SeqTrainer (torch AdamW = encdec's
    # optimizer; adamw_torch_fused = Seq2SeqTrainer's own default in transformers 5).
    "minilm-aclsum": {
        "model": "minilm", "data": "aclsum", "rows": 24, "batch_size": 8, "max_source": 512, "max_target": 128,
        "runs": ["hf", "hf-fused", "encdec", BEST],
    },
    "minilm-synthetic": {
        "model": "minilm", "data": "synthetic", "rows": 48, "batch_size": 8, "max_source": 512, "max_target": 128,
        "runs": ["hf", "hf-fused", "encdec", BEST],
    },
    "bert2gpt2-synthetic": {
        "model": "bert2gpt2-4x256", "data": "synthetic", "rows": 96, "batch_size": 8, "max_source": 512,
        "max_target": 128, "runs": ["hf", "hf-fused", "encdec", BEST],
    },
    # A larger epoch, where Seq2SeqTrainer's length grouping works (megabatches of 12 batches instead of 1-4).
    "bert2gpt2-synthetic-400": {
        "model": "bert2gpt2-4x256", "data": "synthetic", "rows": 400, "batch_size": 8, "max_source": 512,
        "max_target": 128, "runs": ["hf", BEST],
    },
    "recommended-400": {
        "model": "bert2gpt2-4x256", "data": "synthetic", "rows": 400, "batch_size": 8, "max_source": 512,
        "max_target": 128, "runs": ["hf", RECOMMENDED],
    },
    # Levers, one at a time, on the smaller model.
    "levers-data": {
        "model": "bert2gpt2-4x256", "data": "synthetic", "rows": 96, "batch_size": 8, "max_source": 512,
        "max_target": 128, "runs": ["hf", "hf-random", "encdec", "encdec+budget", "encdec+budget-memory"],
    },
    "levers-step": {
        "model": "bert2gpt2-4x256", "data": "synthetic", "rows": 64, "batch_size": 8, "max_source": 512,
        "max_target": 128,
        "runs": ["hf", "encdec+budget", "encdec+budget+foreach", "encdec+budget+fused", "encdec+budget+nodecmask",
                 "encdec+budget+ckpt"],
    },
}

METHOD = (
    "One epoch over the same rows per run (same real tokens, so tokens/s ratios are time ratios); fp32; AdamW lr 1e-4, "
    "wd 0.01, clip 1.0; one untimed warm-up fwd/bwd; same saved weights (fingerprint checked); each run in its own "
    "subprocess (peak RSS = ru_maxrss and a 20 ms psutil sampler); runs alternated; timed from the first step's "
    "start to the last step's end; tokens = non-pad source + non-pad target of the batches the model received."
)

# What each run name means. hf: Seq2SeqTrainer, group_by_length, DataCollatorForSeq2Seq, torch AdamW (for-loop).
RUNS = {
    "hf": {"framework": "hf", "group_by_length": True, "optim": "adamw_torch"},
    "hf-random": {"framework": "hf", "group_by_length": False, "optim": "adamw_torch"},
    "hf-fused": {"framework": "hf", "group_by_length": True, "optim": "adamw_torch_fused"},
    "encdec": {"framework": "encdec"},
}


def run_spec(name: str) -> dict:
    """'encdec+budget+fused' -> {"framework": "encdec", "budget": "items", "optimizer": "fused"}."""
    if name in RUNS:
        return dict(RUNS[name])
    base, *levers = name.split("+")
    spec = dict(RUNS[base])
    for lever in levers:
        if lever == "budget":
            spec["budget"] = "items"  # max_tokens calibrated so batches hold batch_size rows on average
        elif lever == "budget-memory":
            spec["budget"] = "memory"  # max_tokens = batch_size * (max_source + max_target): same worst-case memory
        elif lever in ("foreach", "fused", "for-loop"):
            spec["optimizer"] = lever
        elif lever == "nodecmask":
            spec["decoder_mask"] = False
        elif lever == "ckpt":
            spec["checkpointing"] = True
        elif lever == "compile":
            spec["compile"] = True
        else:
            raise SystemExit(f"unknown lever {lever}")
    return spec


# -- worker side -----------------------------------------------------------------------------------------------------


def load_rows(spec: dict, cfg, model, encoder_tokenizer, decoder_tokenizer) -> list[dict]:
    if spec["data"] == "synthetic":
        return common.synthetic_rows(spec["rows"], seed=0)
    from encdec.lit.datamodule import SummarizationDataModule

    datamodule = SummarizationDataModule(cfg.data, encoder_tokenizer, decoder_tokenizer, model.config.decoder_start_token_id)
    datamodule.prepare()
    train = datamodule.tokenized["train"]
    return [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in train.select(range(spec["rows"]))]


def data_overrides(spec: dict) -> list[str]:
    return [f"data.max_source_length={spec['max_source']}", f"data.max_target_length={spec['max_target']}",
            f"data.batch_size={spec['batch_size']}", "data.max_eval_samples=2", "data.max_test_samples=2"]


def calibrate_budget(lengths: list[tuple[int, int]], batch_size: int) -> int:
    """The smallest max_tokens whose batches hold batch_size rows on average (as many batches as fixed batching)."""
    from encdec.lit.batching import TokenBudgetBatchSampler

    target = math.ceil(len(lengths) / batch_size)
    low, high = 1, max(s + t for s, t in lengths) * len(lengths)
    while low < high:
        middle = (low + high) // 2
        if len(TokenBudgetBatchSampler(lengths, middle, shuffle=False)) <= target:
            high = middle
        else:
            low = middle + 1
    return low


class Steps:
    """Per-step token counts and end times; tokens are counted from the batches the model actually got."""

    def __init__(self):
        self.batches: list[dict] = []
        self.starts: list[float] = []
        self.ends: list[float] = []

    def count(self, batch) -> None:
        mask, labels = batch["attention_mask"], batch["labels"]
        self.batches.append({
            "rows": int(labels.shape[0]),
            "source": int(mask.sum()), "target": int((labels != -100).sum()),
            "padded": int(mask.numel() + labels.numel()),
        })

    def summary(self) -> dict:
        steps = len(self.ends)
        batches = self.batches[:steps]
        seconds = self.ends[-1] - self.starts[0]
        source = sum(b["source"] for b in batches)
        target = sum(b["target"] for b in batches)
        padded = sum(b["padded"] for b in batches)
        return {
            "steps": steps, "seconds": round(seconds, 2), "s_per_step": round(seconds / steps, 3),
            "rows_per_step": round(sum(b["rows"] for b in batches) / steps, 2),
            "real_tokens": source + target, "target_tokens": target, "padded_tokens": padded,
            "padding_fraction": round(1 - (source + target) / padded, 4),
            "tokens_per_s": round((source + target) / seconds, 1),
            "target_tokens_per_s": round(target / seconds, 1),
        }


def warm_up(model) -> None:
    """One untimed forward/backward so that first-call costs (allocator, kernels) hit no timed step."""
    import torch

    ids = torch.full((2, 64), 1000)
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), decoder_input_ids=ids[:, :16], use_cache=False)
    out.logits.float().mean().backward()
    model.zero_grad(set_to_none=True)


def worker_encdec(spec: dict, rows: list[dict], model, encoder_tokenizer, decoder_tokenizer, cfg, steps: Steps) -> dict:
    import datasets
    import lightning as L
    import torch
    from torch.utils.data import DataLoader

    from encdec.lit.batching import TokenBudgetBatchSampler
    from encdec.lit.datamodule import SummarizationDataModule
    from encdec.lit.module import Seq2SeqModule
    from encdec.train import _optimizer, _scheduler

    extra: dict = {}
    dataset = datasets.Dataset.from_list(rows)

    class DataModule(SummarizationDataModule):
        def prepare(self):
            self.tokenized = {"train": dataset, "validation": dataset.select(range(2)), "test": dataset.select(range(2))}

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
            sampler = TokenBudgetBatchSampler(lengths, max_tokens=max_tokens, shuffle=True, seed=0)
            data = split.select_columns(["input_ids", "labels"]).add_column("index", list(range(len(split))))
            return DataLoader(data, batch_sampler=sampler, collate_fn=self.collate, num_workers=0)

    datamodule = DataModule(cfg.data, encoder_tokenizer, decoder_tokenizer, model.config.decoder_start_token_id)
    datamodule.prepare()

    class Module(Seq2SeqModule):
        def loss(self, batch):
            if spec.get("decoder_mask", True):
                return super().loss(batch)
            # Right-padded targets: the causal mask already hides the padding from every real position.
            return super().loss({**batch, "decoder_attention_mask": None})

    if spec.get("checkpointing"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    module = Module(model, decoder_tokenizer, optimizer=_optimizer(cfg), scheduler=_scheduler(cfg),
                    generate_in_validation=False)
    if spec.get("compile"):
        module.model = torch.compile(model, dynamic=True)

    class Timer(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            steps.count(batch)
            steps.starts.append(time.perf_counter())

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            steps.ends.append(time.perf_counter())

    trainer = L.Trainer(
        accelerator="cpu", devices=1, precision="32-true", max_epochs=1, max_steps=-1, gradient_clip_val=1.0,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0, callbacks=[Timer()],
    )
    trainer.fit(module, datamodule=datamodule)
    return extra


def worker_hf(spec: dict, rows: list[dict], model, encoder_tokenizer, steps: Steps) -> dict:
    import datasets
    from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer, Seq2SeqTrainingArguments, TrainerCallback

    dataset = datasets.Dataset.from_list(rows)
    collator = DataCollatorForSeq2Seq(encoder_tokenizer, model=model, label_pad_token_id=-100)

    def counting_collator(features):
        batch = collator(features)
        steps.count(batch)
        return batch

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            steps.starts.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            steps.ends.append(time.perf_counter())

    args = Seq2SeqTrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="encdec-bench-hf-"),
        per_device_train_batch_size=spec["batch_size"], num_train_epochs=1, max_steps=-1,
        learning_rate=1e-4, weight_decay=0.01, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, max_grad_norm=1.0,
        lr_scheduler_type="linear", warmup_steps=0, optim=spec["optim"],
        train_sampling_strategy="group_by_length" if spec["group_by_length"] else "random",
        eval_strategy="no", save_strategy="no", logging_strategy="no", report_to=[], disable_tqdm=True,
        use_cpu=True, dataloader_num_workers=0, dataloader_pin_memory=False, seed=0,
    )
    trainer = Seq2SeqTrainer(model=model, args=args, train_dataset=dataset, data_collator=counting_collator,
                             processing_class=encoder_tokenizer, callbacks=[Timer()])
    trainer.train()
    return {}


def worker(spec: dict) -> None:
    common.quiet()
    import torch

    torch.set_num_threads(spec["threads"])

    with common.PeakRSS() as memory:
        # encdec's default (optimizer.fused=null) resolves to fused in fp32; name the for-loop explicitly to measure it.
        optimizer = {"foreach": ["optimizer.fused=false", "+optimizer.foreach=true"], "fused": ["optimizer.fused=true"],
                     "for-loop": ["optimizer.fused=false"]}.get(spec.get("optimizer"), [])
        cfg, model, encoder_tokenizer, decoder_tokenizer = common.build(
            spec["model"], *data_overrides(spec), *optimizer, weights=spec["weights"]
        )
        fingerprint = common.weights_fingerprint(model)
        rows = load_rows(spec, cfg, model, encoder_tokenizer, decoder_tokenizer)
        torch.manual_seed(0)
        warm_up(model)
        steps = Steps()
        if spec["framework"] == "hf":
            extra = worker_hf(spec, rows, model, encoder_tokenizer, steps)
        else:
            extra = worker_encdec(spec, rows, model, encoder_tokenizer, decoder_tokenizer, cfg, steps)
    common.emit({**steps.summary(), **memory.result(), **extra, "weights_fingerprint": fingerprint})


# -- offline analyses ------------------------------------------------------------------------------------------------


def padding_analysis(save: bool = True) -> None:
    """Padded tokens of a whole epoch per batching scheme, from lengths alone (no model): exact and noise-free.

    HF's LengthGroupedSampler sorts inside megabatches of min(N // (4 * batch), 50) batches, so on small data sets it
    degenerates to random batches; the big-N rows show it at full strength.
    """
    import numpy as np
    import torch
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from encdec.lit.batching import TokenBudgetBatchSampler, padding_stats

    batch = 8
    cfg, model, encoder_tokenizer, decoder_tokenizer = common.build("minilm", *data_overrides(
        {"max_source": 512, "max_target": 128, "batch_size": batch}))
    sets = {f"synthetic-{n}": common.synthetic_rows(n, seed=0) for n in (48, 96, 400, 1600)}
    sets["aclsum-train-100"] = load_rows({"data": "aclsum", "rows": 100}, cfg, model, encoder_tokenizer,
                                         decoder_tokenizer)
    out = []
    for name, rows in sets.items():
        sources = np.array([len(r["input_ids"]) for r in rows])
        targets = np.array([len(r["labels"]) for r in rows])
        lengths = list(zip(sources.tolist(), targets.tolist()))
        n = len(rows)
        schemes = {}
        order = np.random.default_rng(0).permutation(n)
        schemes["random (encdec default, hf-random)"] = [order[i : i + batch] for i in range(0, n, batch)]
        indices = list(LengthGroupedSampler(batch, lengths=sources.tolist(), generator=torch.Generator().manual_seed(0)))
        schemes["hf group_by_length"] = [indices[i : i + batch] for i in range(0, n, batch)]
        items = calibrate_budget(lengths, batch)
        schemes[f"budget items ({items} tokens)"] = TokenBudgetBatchSampler(lengths, items, seed=0).batches()
        memory = batch * (512 + 128)
        schemes[f"budget memory ({memory} tokens)"] = TokenBudgetBatchSampler(lengths, memory, seed=0).batches()
        for scheme, batches in schemes.items():
            stats = padding_stats(batches, sources, targets)
            out.append({"data": name, "scheme": scheme, "batches": len(batches),
                        "rows_per_batch": round(n / len(batches), 2),
                        "max_padded_tokens": max(int((sources[b].max() + targets[b].max()) * len(b)) for b in batches),
                        "padding_fraction": round(stats["padding_fraction"], 4), "padded_tokens": stats["padded"]})
    print(common.table(out, ["data", "scheme", "batches", "rows_per_batch", "max_padded_tokens", "padding_fraction",
                             "padded_tokens"]))
    if save:
        print("wrote", common.write_results("train_cpu.json", {"padding_analysis": out}))


def precision_check(threads: int, save: bool = True) -> None:
    """float32 vs bfloat16 on this CPU: a 1024^3 matmul and one forward/backward of the 4x256 model under autocast."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    info = common.machine()
    _, model, _, _ = common.build("bert2gpt2-4x256")
    ids = torch.randint(1000, 20000, (4, 256))
    targets = torch.randint(1000, 20000, (4, 64))

    def step(autocast: bool) -> float:
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), decoder_input_ids=targets,
                           use_cache=False).logits
        F.cross_entropy(logits.float().flatten(0, 1), targets.flatten()).backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - started

    step(False)
    step(True)
    rows = []
    for _ in range(2):  # alternate
        rows.append({"what": "matmul 1024^3 GFLOP/s", "float32": common.matmul_gflops("float32"),
                     "bfloat16": common.matmul_gflops("bfloat16")})
        rows.append({"what": "4x256 model fwd+bwd s (4x256 src, 64 tgt)", "float32": step(False), "bfloat16": step(True)})
    for row in rows:
        row["bf16_speedup"] = (row["bfloat16"] / row["float32"]) if "GFLOP" in row["what"] else row["float32"] / row["bfloat16"]
    print(f"{info['cpu']}: capability {info['cpu_capability']}, avx512_bf16={info['avx512_bf16']}, "
          f"amx_bf16={info['amx_bf16']}, {threads} thread(s)")
    print(common.table(rows, ["what", "float32", "bfloat16", "bf16_speedup"]))
    if save:
        print("wrote", common.write_results("train_cpu.json", {"precision_check": {"threads": threads, "rows": rows,
                                                                                    "machine": info}}))


def compile_check(threads: int, save: bool = True) -> None:
    """torch.compile (inductor) vs eager for the 4x256 model's forward/backward: compile time and step time.

    Batches change shape every step (dynamic padding), so a compiled model either recompiles per shape or runs
    with dynamic shapes; both are timed: a fixed shape (best case) and a second, new shape.
    """
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    _, model, _, _ = common.build("bert2gpt2-4x256")

    def batch(source: int, target: int):
        ids = torch.randint(1000, 20000, (8, source))
        return ids, torch.randint(1000, 20000, (8, target))

    def step(forward, ids, targets) -> float:
        started = time.perf_counter()
        logits = forward(input_ids=ids, attention_mask=torch.ones_like(ids), decoder_input_ids=targets,
                         use_cache=False).logits
        F.cross_entropy(logits.float().flatten(0, 1), targets.flatten()).backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - started

    first, second = batch(256, 64), batch(200, 48)
    compiled = torch.compile(model, dynamic=None)
    rows = [{"what": "first call (compile), shape 8x256/64", "compiled": step(compiled, *first),
             "eager": step(model, *first)}]
    rows.append({"what": "first call of a new shape 8x200/48", "compiled": step(compiled, *second),
                 "eager": step(model, *second)})
    for _ in range(3):  # alternate
        rows.append({"what": "steady step, shape 8x256/64", "compiled": step(compiled, *first),
                     "eager": step(model, *first)})
    for row in rows:
        row["compiled_speedup"] = row["eager"] / row["compiled"]
    print(common.table(rows, ["what", "eager", "compiled", "compiled_speedup"]))
    if save:
        print("wrote", common.write_results("train_cpu.json", {"compile_check": {"threads": threads, "rows": rows}}))


def isolated(threads: int, save: bool = True) -> None:
    """In-process, alternated: AdamW clip+step (for-loop / foreach / fused) and fwd+bwd with/without decoder mask.

    Load from other work moves whole runs by +-15%; alternating single operations inside one process is the finer
    instrument for levers worth a few percent.
    """
    import torch
    import torch.nn.functional as F

    from encdec.lit.datamodule import SummarizationDataModule

    torch.set_num_threads(threads)
    out: dict = {"threads": threads, "optimizer": [], "decoder_mask": []}
    for name in ("minilm", "bert2gpt2-4x256"):
        cfg, model, encoder_tokenizer, decoder_tokenizer = common.build(name)
        params = [p for p in model.parameters() if p.requires_grad]
        for p in params:
            p.grad = torch.randn_like(p) * 1e-3
        variants = {"for-loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
        optimizers = {k: torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01, **kw) for k, kw in variants.items()}
        for optimizer in optimizers.values():
            optimizer.step()
        times: dict[str, list[float]] = {k: [] for k in optimizers}
        for _ in range(3):
            for key, optimizer in optimizers.items():
                started = time.perf_counter()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                times[key].append(time.perf_counter() - started)
        row = {"model": name, "parameters_m": round(sum(p.numel() for p in params) / 1e6, 1),
               **{f"{k}_s": sorted(v)[1] for k, v in times.items()}}
        print(f"AdamW clip+step, {name}: " + ", ".join(f"{k} {row[f'{k}_s']:.3f} s" for k in times))
        out["optimizer"].append(row)

        model.zero_grad(set_to_none=True)
        rows, reps = common.synthetic_rows(8 if name != "minilm" else 4, seed=7), 6 if name != "minilm" else 4
        datamodule = SummarizationDataModule(cfg.data, encoder_tokenizer, decoder_tokenizer,
                                             model.config.decoder_start_token_id)
        batch = datamodule.collate([{**r, "index": i} for i, r in enumerate(rows)])

        def step(mask: bool) -> float:
            started = time.perf_counter()
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           decoder_input_ids=batch["decoder_input_ids"],
                           decoder_attention_mask=batch["decoder_attention_mask"] if mask else None,
                           use_cache=False).logits
            F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100).backward()
            model.zero_grad(set_to_none=True)
            return time.perf_counter() - started

        step(True)
        step(False)
        masked, unmasked = [], []
        for r in range(reps):
            for mask in ((True, False) if r % 2 == 0 else (False, True)):
                (masked if mask else unmasked).append(step(mask))
        median = lambda v: sorted(v)[len(v) // 2]  # noqa: E731
        row = {"model": name, "source_shape": list(batch["input_ids"].shape),
               "target_shape": list(batch["labels"].shape), "with_mask_s": masked, "without_mask_s": unmasked,
               "median_speedup_without_mask": median(masked) / median(unmasked)}
        print(f"fwd+bwd {name} {tuple(batch['input_ids'].shape)}/{tuple(batch['labels'].shape)}: "
              f"without the decoder mask {row['median_speedup_without_mask']:.3f}x")
        out["decoder_mask"].append(row)
    if save:
        print("wrote", common.write_results("train_cpu.json", {"isolated": out}))


# -- parent side -----------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="minilm-aclsum")
    parser.add_argument("--runs", help="comma-separated run names (default: the scenario's), e.g. hf,encdec+budget")
    parser.add_argument("--rows", type=int, help="rows in the epoch (default: the scenario's)")
    parser.add_argument("--repeats", type=int, default=1, help="alternating rounds (the order flips every round)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per run (default 1: on a shared, oversubscribed 2-core machine 2 threads "
                             "spin against other work and run ~2x slower)")
    parser.add_argument("--padding", action="store_true", help="only the offline padding analysis (no training)")
    parser.add_argument("--precision-check", action="store_true", help="only fp32 vs bf16 autocast speed on this CPU")
    parser.add_argument("--isolated", action="store_true", help="only in-process optimizer and decoder-mask timings")
    parser.add_argument("--compile-check", action="store_true", help="only eager vs torch.compile fwd+bwd, 4x256")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    if args.worker:
        return worker(json.loads(args.worker))
    if args.list:
        for name, scenario in SCENARIOS.items():
            print(f"{name}: {scenario}")
        return

    common.quiet()
    if args.padding:
        return padding_analysis(save=not args.no_save)
    if args.precision_check:
        return precision_check(args.threads, save=not args.no_save)
    if args.isolated:
        return isolated(args.threads, save=not args.no_save)
    if args.compile_check:
        return compile_check(args.threads, save=not args.no_save)
    scenario = dict(SCENARIOS[args.scenario], threads=args.threads)
    if args.rows:
        scenario["rows"] = args.rows
    names = args.runs.split(",") if args.runs else scenario["runs"]
    info = common.machine()
    print(f"{args.scenario}: {scenario['model']} on {scenario['data']} ({scenario['rows']} rows, one epoch), "
          f"batch {scenario['batch_size']}, {scenario['max_source']}/{scenario['max_target']}, float32, "
          f"{args.threads} torch thread(s)")
    print(f"machine: {info['cpu']}, {info['logical_cpus']} cpus, load {info['load_average_at_start']}")
    folder = Path(tempfile.mkdtemp(prefix="encdec-bench-"))
    weights = common.save_weights(scenario["model"], folder)
    results: dict[str, list[dict]] = {name: [] for name in names}
    started = time.time()
    for round_ in range(args.repeats):
        for name in (names if round_ % 2 == 0 else names[::-1]):
            spec = {**scenario, **run_spec(name), "weights": weights}
            spec.pop("runs", None)
            result = common.run_worker(Path(__file__), spec)
            results[name].append(result)
            print(f"  {name:28s} {result['tokens_per_s']:8.1f} tok/s  {result['s_per_step']:6.2f} s/step  "
                  f"rows/step {result['rows_per_step']:5.2f}  pad {result['padding_fraction']:.3f}  "
                  f"rss {result['peak_rss_mib']:.0f} MiB", flush=True)
    fingerprints = {r["weights_fingerprint"] for runs in results.values() for r in runs}
    assert len(fingerprints) == 1, f"runs started from different weights: {fingerprints}"

    rows = []
    anchor = names[0]
    for name in names:
        runs = results[name]
        mean = {k: sum(r[k] for r in runs) / len(runs) for k in
                ("tokens_per_s", "target_tokens_per_s", "s_per_step", "rows_per_step", "padding_fraction",
                 "peak_rss_mib", "seconds")}
        rows.append({"run": name, **mean, "repeats": len(runs)})
    base = {r["run"]: r for r in rows}
    references = [name for name in dict.fromkeys([anchor, "hf", "hf-fused", "encdec"]) if name in base]
    for row in rows:
        for reference in references:
            row["vs_" + reference] = row["tokens_per_s"] / base[reference]["tokens_per_s"]
    columns = ["run", "tokens_per_s", "target_tokens_per_s", "s_per_step", "rows_per_step", "padding_fraction",
               "peak_rss_mib", *("vs_" + r for r in references)]
    print()
    print(common.table(rows, columns))
    print(f"({time.time() - started:.0f} s)")
    if not args.no_save:
        path = common.write_results("train_cpu.json", {
            "machine": info,
            "method": METHOD,
            "scenarios": {args.scenario: {"date": info["date"], "load_average_at_start": info["load_average_at_start"],
                                          "setup": {k: v for k, v in scenario.items() if k != "runs"},
                                          "anchor": anchor, "summary": rows, "runs": results,
                                          "run_meaning": {n: run_spec(n) for n in names}}},
        }, merge_key="scenarios")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
