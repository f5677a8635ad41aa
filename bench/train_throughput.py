"""Training throughput: encdec's Lightning path vs transformers' Seq2SeqTrainer on the same model, data and batch size.

    python bench/train_throughput.py --scenario minilm-aclsum        # MiniLM->MiniLM, aclsum 512/128, batch 8
    python bench/train_throughput.py --scenario minilm-synthetic     # MiniLM->MiniLM, lognormal lengths 50..512
    python bench/train_throughput.py --scenario bert2gpt2-synthetic  # BERT->GPT-2 4x256, lognormal lengths
    python bench/train_throughput.py --scenario levers-data          # 4x256: batching levers one by one
    python bench/train_throughput.py --scenario levers-step          # 4x256: optimizer/mask/checkpointing levers
    python bench/train_throughput.py --padding                       # padding per batching scheme, no training
    python bench/train_throughput.py --precision-check               # fp32 vs bf16 autocast on this CPU
    python bench/train_throughput.py --list
    python bench/train_throughput.py --device cuda --scenario bert2bert-base --max-seconds 75   # GPU: tok/s, MFU

Each run trains exactly one epoch over the same rows (so every run does the same real work and tokens/s ratios are
time ratios), float32, AdamW (lr 1e-4, weight decay 0.01, clip 1.0), after one untimed warm-up forward/backward.
Each run is its own subprocess (peak RSS per run); runs are alternated, and ratios are taken against the
Seq2SeqTrainer anchor of the same invocation. Results are merged into bench/results/train_cpu.json.

--device cuda (default precision bf16-mixed on both sides: Lightning precision="bf16-mixed", Seq2SeqTrainer bf16=True)
adds the peak of torch.cuda.max_memory_allocated per run and MFU: the FLOPs of one real forward+backward on a batch of
median-length rows are counted once per run with torch.utils.flop_counter.FlopCounterMode, divided by that batch's
padded tokens, and MFU = (FLOPs per padded token x padded tokens) / seconds / peak bf16 TFLOP/s of the GPU (a small
table, or --peak-tflops); "useful" MFU counts only non-pad tokens. Results go to bench/results/train_gpu.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from throughput_analyses import compile_check, isolated, padding_analysis, precision_check  # noqa: E402
from throughput_runs import METHOD, SCENARIOS, run_spec  # noqa: E402
from throughput_worker import worker  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="minilm-aclsum")
    parser.add_argument(
        "--runs",
        help="comma-separated run names (default: the scenario's), e.g. hf,encdec+budget; 'cuda': the scenario's CUDA "
        "list on any device",
    )
    parser.add_argument("--rows", type=int, help="rows in the epoch (default: the scenario's)")
    parser.add_argument("--repeats", type=int, default=1, help="alternating rounds (the order flips every round)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per run (default 1: on a shared, oversubscribed 2-core machine 2 threads "
        "spin against other work and run ~2x slower)",
    )
    parser.add_argument("--padding", action="store_true", help="only the offline padding analysis (no training)")
    parser.add_argument("--precision-check", action="store_true", help="only fp32 vs bf16 autocast speed on this CPU")
    parser.add_argument("--isolated", action="store_true", help="only in-process optimizer and decoder-mask timings")
    parser.add_argument("--compile-check", action="store_true", help="only eager vs torch.compile fwd+bwd, 4x256")
    parser.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default="cpu",
        help="where both sides train (default cpu); cuda adds peak GPU memory and MFU",
    )
    parser.add_argument(
        "--precision",
        choices=["32-true", "bf16-mixed", "16-mixed"],
        help="both sides' precision (default 32-true on cpu, bf16-mixed on cuda)",
    )
    parser.add_argument("--batch-size", type=int, help="rows per batch (default: the scenario's)")
    parser.add_argument("--max-source", type=int, help="source length cap (default: the scenario's)")
    parser.add_argument("--max-target", type=int, help="target length cap (default: the scenario's)")
    parser.add_argument(
        "--peak-tflops",
        type=float,
        help="peak bf16 dense TFLOP/s for MFU (default on cuda: from the GPU's name; required for an "
        "unknown GPU; on cpu MFU is computed only when this is given)",
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        help="stop a run's training after this many timed seconds (tokens/s stays exact; the run "
        "is marked capped_by_max_seconds and covers fewer rows than the others)",
    )
    parser.add_argument(
        "--skip-steps",
        type=int,
        default=0,
        help="untimed first steps per run (e.g. 20 with +compile, whose first steps compile)",
    )
    parser.add_argument(
        "--compile-skip-steps",
        type=int,
        default=30,
        help="untimed first steps of +compile runs (default 30; the larger of this and --skip-steps): the graphs of "
        "the width buckets met there compile outside the clock",
    )
    parser.add_argument(
        "--compile-max-seconds",
        type=float,
        default=120,
        help="a +compile run stops this many seconds after its first step, compilations included, with the steady "
        "steps it has (default 120; their tokens/s stays exact)",
    )
    parser.add_argument(
        "--compile-backend",
        default="inductor",
        help="torch.compile backend of +compile runs (default inductor, the product's; aot_eager for a quick CPU dry run)",
    )
    parser.add_argument(
        "--deadline",
        type=float,
        help="seconds from the start after which no further run starts (each run's process is also killed at it); "
        "the table and JSON keep the runs that finished: a bounded call loses the tail of the run list, not all of it",
    )
    parser.add_argument(
        "--results",
        help="results file name under bench/results/ or an absolute path (default train_cpu.json / train_gpu.json)",
    )
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    if args.worker:
        return worker(json.loads(args.worker))
    main_started = time.time()
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
    on_cuda = scenario.pop("cuda", {})
    if args.device == "cuda":
        scenario.update(on_cuda)
    for key in ("rows", "batch_size", "max_source", "max_target"):
        if getattr(args, key):
            scenario[key] = getattr(args, key)
    precision = args.precision or ("bf16-mixed" if args.device == "cuda" else "32-true")
    scenario.update(device=args.device, precision=precision)
    names = args.runs.split(",") if args.runs else scenario["runs"]
    if args.runs == "cuda":  # the scenario's CUDA run list on any device (gpu_check.sh's CPU dry run)
        names = on_cuda.get("runs", scenario["runs"])
    if precision == "16-mixed" and any(run_spec(n).get("optimizer") == "fused" for n in names):
        raise SystemExit(
            "16-mixed: a fused optimizer unscales gradients only inside step(), after clipping; drop "
            "the +fused lever (encdec then uses torch's foreach AdamW)"
        )
    info = common.machine()
    peak = args.peak_tflops
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit(
                "--device cuda: torch.cuda.is_available() is False (torch "
                f"{torch.__version__}, built for CUDA {torch.version.cuda})"
            )
        info.update(common.gpu_machine())
        info["note"] = "one GPU; runs alternated, each in its own process; compare ratios within this invocation"
        peak = peak or common.peak_bf16_tflops(info["gpu"])
        if peak is None:
            raise SystemExit(f"unknown GPU {info['gpu']!r}: pass --peak-tflops (its dense bf16 peak) for MFU")
    scenario.update(
        count_flops=peak is not None, peak_tflops=peak, max_seconds=args.max_seconds, skip_steps=args.skip_steps
    )
    print(
        f"{args.scenario}: {scenario['model']} on {scenario['data']} ({scenario['rows']} rows, one epoch), "
        f"batch {scenario['batch_size']}, {scenario['max_source']}/{scenario['max_target']}, "
        f"{'float32' if precision == '32-true' else precision}, {args.device}, {args.threads} torch thread(s)"
    )
    print(f"machine: {info['cpu']}, {info['logical_cpus']} cpus, load {info['load_average_at_start']}")
    if args.device == "cuda":
        print(
            f"gpu: {info['gpu']} ({info['gpu_memory_gib']} GiB, capability {info['gpu_capability']}), torch "
            f"{info['torch']}, CUDA {info['cuda']}, driver {info.get('gpu_driver')}, peak bf16 {peak} TFLOP/s"
        )
    folder = Path(tempfile.mkdtemp(prefix="encdec-bench-"))
    weights = common.save_weights(scenario["model"], folder)
    results: dict[str, list[dict]] = {name: [] for name in names}
    failed: dict[str, str] = {}
    started = time.time()
    for round_ in range(args.repeats):
        for name in names if round_ % 2 == 0 else names[::-1]:
            spec = {**scenario, **run_spec(name), "weights": weights}
            spec.pop("runs", None)
            if spec.get("compile"):
                spec["skip_steps"] = max(args.skip_steps, args.compile_skip_steps)
                spec["compile_backend"] = args.compile_backend
                spec["compile_max_seconds"] = args.compile_max_seconds
            timeout = 3600.0
            if args.deadline is not None:
                timeout = args.deadline - (time.time() - main_started)
                if timeout < (args.max_seconds or 0) + 25:  # a run needs ~25 s of start-up besides its timed seconds
                    print(f"  {name:32s} NOT RUN: --deadline {args.deadline:.0f} s reached", flush=True)
                    failed.setdefault(name, "not run: --deadline reached")
                    continue
            try:
                result = common.run_worker(Path(__file__), spec, timeout=timeout)
            except (RuntimeError, subprocess.TimeoutExpired) as error:
                reason = "killed at --deadline" if isinstance(error, subprocess.TimeoutExpired) else "failed"
                print(f"  {name:32s} {reason.upper()}: {str(error)[-1500:]}", flush=True)
                failed[name] = f"{reason}: {str(error)[-1500:]}"
                continue
            results[name].append(result)
            more = ""
            if "peak_cuda_mib" in result:
                more += f"  gpu {result['peak_cuda_mib']:.0f} MiB"
            if "mfu" in result:
                more += (
                    f"  {result['achieved_tflops']:.4g} TFLOP/s  MFU {result['mfu']:.3f} "
                    f"(useful {result['useful_mfu']:.3f})"
                )
            if result.get("capped_by_max_seconds"):
                more += f"  CAPPED after {result['steps']} steps"
            if spec.get("compile"):
                more += (
                    f"  compile: {result['untimed_seconds']:.0f} s in {result['untimed_first_steps']} untimed steps, "
                    f"{result['compile_steps_left_out']} timed steps left out ({result['compile_seconds_in_timed_steps']:.0f} s)"
                )
                if result.get("capped_by_compile_max_seconds"):
                    more += f"  STOPPED by --compile-max-seconds after {result['steps']} steady steps"
            print(
                f"  {name:32s} {result['tokens_per_s']:8.1f} tok/s  {result['s_per_step']:6.2f} s/step  "
                f"rows/step {result['rows_per_step']:5.2f}  pad {result['padding_fraction']:.3f}  "
                f"rss {result['peak_rss_mib']:.0f} MiB{more}",
                flush=True,
            )
    fingerprints = {r["weights_fingerprint"] for runs in results.values() for r in runs}
    assert len(fingerprints) <= 1, f"runs started from different weights: {fingerprints}"
    names = [name for name in names if results[name]]  # the table keeps the runs that finished
    results = {name: results[name] for name in names}
    if not names:
        raise SystemExit(f"no run finished: {failed}")

    rows = []
    anchor = names[0]
    optional = ("peak_cuda_mib", "achieved_tflops", "useful_tflops", "mfu", "useful_mfu")
    for name in names:
        runs = results[name]
        keys = (
            "tokens_per_s",
            "target_tokens_per_s",
            "s_per_step",
            "rows_per_step",
            "padding_fraction",
            "peak_rss_mib",
            "seconds",
            *(k for k in optional if all(k in r for r in runs)),
        )
        mean = {k: sum(r[k] for r in runs) / len(runs) for k in keys}
        rows.append({"run": name, **mean, "repeats": len(runs)})
    base = {r["run"]: r for r in rows}
    references = [name for name in dict.fromkeys([anchor, "hf", "hf-fused", "encdec"]) if name in base]
    for row in rows:
        for reference in references:
            row["vs_" + reference] = row["tokens_per_s"] / base[reference]["tokens_per_s"]
    columns = [
        "run",
        "tokens_per_s",
        "target_tokens_per_s",
        "s_per_step",
        "rows_per_step",
        "padding_fraction",
        "peak_rss_mib",
        *(k for k in optional if all(k in r for r in rows)),
        *("vs_" + r for r in references),
    ]
    hf_rows = [row for row in rows if run_spec(row["run"])["framework"] == "hf"]
    if hf_rows:
        best = max(hf_rows, key=lambda row: row["tokens_per_s"])
        for row in rows:
            row["vs_best_hf"] = row["tokens_per_s"] / best["tokens_per_s"]
        columns.append("vs_best_hf")
    print()
    print(common.table(rows, columns))
    if hf_rows and "encdec" in base:
        ratio = base["encdec"]["vs_best_hf"]
        print(
            f"encdec defaults vs the best Seq2SeqTrainer row ({best['run']}): {ratio:.2f}x "
            f"({'at least as fast' if ratio >= 1 else 'SLOWER'})"
        )
    flops = next((r for runs in results.values() for r in runs if "flops_per_padded_token" in r), None)
    if flops:
        rows_, source, target = flops["flop_count_batch"]
        print(
            f"FLOPs (FlopCounterMode, one fwd+bwd on {rows_}x{source} source / {rows_}x{target} target): "
            f"{flops['flops_per_step'] / 1e12:.3f} TFLOP = {flops['flops_per_padded_token'] / 1e9:.3f} GFLOP per "
            f"padded token; MFU = that x padded tokens / s / {peak} TFLOP/s; useful MFU counts non-pad tokens only"
        )
    for name, reason in failed.items():
        print(f"not in the table: {name}: {reason.splitlines()[0][:200]}")
    print(f"({time.time() - started:.0f} s)")
    if not args.no_save:
        method = METHOD
        if args.device != "cpu" or precision != "32-true":
            method = METHOD.replace("; fp32;", f"; {precision} on {args.device} (both sides);")
        mfu_method = {}
        if flops:
            mfu_method["mfu_method"] = (
                "FLOPs of one fwd+bwd counted by torch.utils.flop_counter.FlopCounterMode on a batch of median-length "
                "rows, per padded token, times each run's padded tokens, over its seconds, against a dense bf16 peak "
                f"of {peak} TFLOP/s; useful MFU counts non-pad tokens only."
            )
        results_name = args.results or ("train_gpu.json" if args.device == "cuda" else "train_cpu.json")
        if Path(results_name).is_absolute():
            Path(results_name).parent.mkdir(parents=True, exist_ok=True)
        path = common.write_results(
            results_name,
            {
                "machine": info,
                "method": method,
                "scenarios": {
                    args.scenario: {
                        "date": info["date"],
                        "load_average_at_start": info["load_average_at_start"],
                        "setup": {k: v for k, v in scenario.items() if k != "runs"},
                        "anchor": anchor,
                        "summary": rows,
                        "runs": results,
                        "run_meaning": {n: run_spec(n) for n in names},
                        **({"failed": failed} if failed else {}),
                        **mfu_method,
                    }
                },
            },
            merge_key="scenarios",
        )
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
