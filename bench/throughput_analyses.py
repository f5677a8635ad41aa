"""The analyses of bench/train_throughput.py that train no full run: padding per batching scheme (--padding),
fp32 vs bf16 autocast (--precision-check), eager vs compiled (--compile-check), in-process timings (--isolated)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from encdec.data.tokenize import IGNORE_INDEX  # noqa: E402
from throughput_worker import aclsum_section_rows, calibrate_budget, data_overrides, load_rows  # noqa: E402


def padding_analysis(save: bool = True) -> None:
    """Padded tokens of a whole epoch per batching scheme, from lengths alone (no model): exact and noise-free.

    HF's LengthGroupedSampler sorts inside megabatches of min(N // (4 * batch), 50) batches, so on small data sets it
    degenerates to random batches; the big-N rows show it at full strength.
    """
    import numpy as np
    import torch
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from encdec.data.sampling import GroupedByLength, ResumableBatchSampler, TokenBudget, padding_stats

    batch = 8
    cfg, model, encoder_tokenizer, decoder_tokenizer = common.build(
        "minilm", *data_overrides({"max_source": 512, "max_target": 128, "batch_size": batch})
    )
    sets = {f"synthetic-{n}": common.synthetic_rows(n, seed=0) for n in (48, 96, 400, 1600)}
    sets["aclsum-train-100"] = load_rows(
        {"data": "aclsum", "rows": 100}, cfg, model, encoder_tokenizer, decoder_tokenizer
    )
    sets["aclsum-sections-400 (256/32)"] = aclsum_section_rows(
        {"rows": 400, "max_source": 256, "max_target": 32}, encoder_tokenizer, decoder_tokenizer
    )
    out = []
    for name, rows in sets.items():
        sources = np.array([len(r["input_ids"]) for r in rows])
        targets = np.array([len(r["labels"]) for r in rows])
        lengths = list(zip(sources.tolist(), targets.tolist()))
        n = len(rows)
        schemes = {}
        order = np.random.default_rng(0).permutation(n)
        schemes["random (hf-random; encdec group_by_length=false)"] = [order[i : i + batch] for i in range(0, n, batch)]
        indices = list(
            LengthGroupedSampler(batch, lengths=sources.tolist(), generator=torch.Generator().manual_seed(0))
        )
        schemes["hf group_by_length"] = [indices[i : i + batch] for i in range(0, n, batch)]
        schemes["encdec group_by_length, strict"] = ResumableBatchSampler(
            GroupedByLength(lengths, batch), seed=0
        ).batches()
        schemes["encdec default (grouped, jitter 0.1)"] = ResumableBatchSampler(
            GroupedByLength(lengths, batch, 0.1), seed=0
        ).batches()
        items = calibrate_budget(lengths, batch)
        schemes[f"budget items ({items} tokens)"] = ResumableBatchSampler(TokenBudget(lengths, items), seed=0).batches()
        memory = batch * (512 + 128)
        schemes[f"budget memory ({memory} tokens)"] = ResumableBatchSampler(
            TokenBudget(lengths, memory), seed=0
        ).batches()
        for scheme, batches in schemes.items():
            stats = padding_stats(batches, sources, targets)
            out.append(
                {
                    "data": name,
                    "scheme": scheme,
                    "batches": len(batches),
                    "rows_per_batch": round(n / len(batches), 2),
                    "max_padded_tokens": max(int((sources[b].max() + targets[b].max()) * len(b)) for b in batches),
                    "padding_fraction": round(stats["padding_fraction"], 4),
                    "padded_tokens": stats["padded"],
                }
            )
    print(
        common.table(
            out,
            ["data", "scheme", "batches", "rows_per_batch", "max_padded_tokens", "padding_fraction", "padded_tokens"],
        )
    )
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
            logits = model(
                input_ids=ids, attention_mask=torch.ones_like(ids), decoder_input_ids=targets, use_cache=False
            ).logits
        F.cross_entropy(logits.float().flatten(0, 1), targets.flatten()).backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - started

    step(False)
    step(True)
    rows = []
    for _ in range(2):  # alternate
        rows.append(
            {
                "what": "matmul 1024^3 GFLOP/s",
                "float32": common.matmul_gflops("float32"),
                "bfloat16": common.matmul_gflops("bfloat16"),
            }
        )
        rows.append(
            {"what": "4x256 model fwd+bwd s (4x256 src, 64 tgt)", "float32": step(False), "bfloat16": step(True)}
        )
    for row in rows:
        row["bf16_speedup"] = (
            (row["bfloat16"] / row["float32"]) if "GFLOP" in row["what"] else row["float32"] / row["bfloat16"]
        )
    print(
        f"{info['cpu']}: capability {info['cpu_capability']}, avx512_bf16={info['avx512_bf16']}, "
        f"amx_bf16={info['amx_bf16']}, {threads} thread(s)"
    )
    print(common.table(rows, ["what", "float32", "bfloat16", "bf16_speedup"]))
    if save:
        print(
            "wrote",
            common.write_results(
                "train_cpu.json", {"precision_check": {"threads": threads, "rows": rows, "machine": info}}
            ),
        )


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
        logits = forward(
            input_ids=ids, attention_mask=torch.ones_like(ids), decoder_input_ids=targets, use_cache=False
        ).logits
        F.cross_entropy(logits.float().flatten(0, 1), targets.flatten()).backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - started

    first, second = batch(256, 64), batch(200, 48)
    compiled = torch.compile(model, dynamic=None)
    rows = [
        {
            "what": "first call (compile), shape 8x256/64",
            "compiled": step(compiled, *first),
            "eager": step(model, *first),
        }
    ]
    rows.append(
        {
            "what": "first call of a new shape 8x200/48",
            "compiled": step(compiled, *second),
            "eager": step(model, *second),
        }
    )
    for _ in range(3):  # alternate
        rows.append(
            {"what": "steady step, shape 8x256/64", "compiled": step(compiled, *first), "eager": step(model, *first)}
        )
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
        row = {
            "model": name,
            "parameters_m": round(sum(p.numel() for p in params) / 1e6, 1),
            **{f"{k}_s": sorted(v)[1] for k, v in times.items()},
        }
        print(f"AdamW clip+step, {name}: " + ", ".join(f"{k} {row[f'{k}_s']:.3f} s" for k in times))
        out["optimizer"].append(row)

        model.zero_grad(set_to_none=True)
        rows, reps = common.synthetic_rows(8 if name != "minilm" else 4, seed=7), 6 if name != "minilm" else 4
        datamodule = SummarizationDataModule(
            cfg.data, encoder_tokenizer, decoder_tokenizer, model.config.decoder_start_token_id
        )
        batch = datamodule.collate([{**r, "index": i} for i, r in enumerate(rows)])

        def step(mask: bool) -> float:
            started = time.perf_counter()
            logits = model(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                decoder_input_ids=batch["decoder_input_ids"],
                decoder_attention_mask=batch["decoder_attention_mask"] if mask else None,
                use_cache=False,
            ).logits
            F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE_INDEX).backward()
            model.zero_grad(set_to_none=True)
            return time.perf_counter() - started

        step(True)
        step(False)
        masked, unmasked = [], []
        for r in range(reps):
            for mask in (True, False) if r % 2 == 0 else (False, True):
                (masked if mask else unmasked).append(step(mask))
        median = lambda v: sorted(v)[len(v) // 2]  # noqa: E731
        row = {
            "model": name,
            "source_shape": list(batch["input_ids"].shape),
            "target_shape": list(batch["labels"].shape),
            "with_mask_s": masked,
            "without_mask_s": unmasked,
            "median_speedup_without_mask": median(masked) / median(unmasked),
        }
        print(
            f"fwd+bwd {name} {tuple(batch['input_ids'].shape)}/{tuple(batch['labels'].shape)}: "
            f"without the decoder mask {row['median_speedup_without_mask']:.3f}x"
        )
        out["decoder_mask"].append(row)
    if save:
        print("wrote", common.write_results("train_cpu.json", {"isolated": out}))


# -- parent side -----------------------------------------------------------------------------------------------------
