"""Learning curves: validation ROUGE-2 and loss against steps and training seconds, for encdec's defaults, each
warm-start lever, HF `Seq2SeqTrainer` on the same model, data and steps (an anchor), and the decoder alone: the same
decoder LM fine-tuned by itself as a plain causal LM with HF `Trainer` (the anchor a pairing must beat, issue 26).

    python bench/quality.py                                   # every lever, aclsum, CPU: bench/results/quality_cpu.json
    python bench/quality.py --levers default,prefix+trained_encoder,hf-seq2seqtrainer --steps 25 --eval-every 5
    python bench/quality.py --levers default,minilm-smollm2,decoder-alone --steps 26 --eval-every 13
    python bench/quality.py --device cuda --results quality_gpu.json
    python bench/quality.py --levers default,decoder-alone-lr1e-4,decoder-alone-lr1e-4-bf16 --steps 26 --seeds 42,1,2

Each encdec curve is one `train.py` run (the user's recipe, validation every --eval-every steps on aclsum's
validation split, nothing else changed but the lever's overrides); the test split is scored once, at the end. The
lead-1 and lead-3 baselines are computed the same way (encdec.metrics.lead_baselines) and drawn on the plot, so a
curve that stays below them has not learned to summarize yet. At the end a table gives each run's test ROUGE-1/2/L,
its training seconds, whether it beats lead-1, lead-3 and the decoder alone in all three, and its training seconds
over the decoder alone's; with --seeds, each lever's mean over the seeds and their standard deviation.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import common

# encdec's defaults before the prefix pair became the quickstart, pinned so those curves stay what they measured: random
# cross-attention and LM head, one learning rate, 48 summary tokens, no lead copies, the encoder trained.
BEFORE = (
    "decoder.cross_attention.init=random",
    "decoder.lm_head_init=random",
    "data.max_target_length=48",
    "generation.no_repeat_ngram_size=0",
    "data.lead_copy_sentences=0",
    "decoder.cross_attention.kind=gated",
)
XATTN = ("decoder.cross_attention.init=self_attention",)
LEVERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "default": ("SmolLM2 prefix pair, encoder frozen, what `python train.py` runs", ("experiment=quickstart",)),
    "prefix+every_layer_trained": (
        "SmolLM2 prefix pair with every decoder layer and the embeddings trained (model.freeze_decoder_layers=0)",
        ("experiment=quickstart", "model.freeze_decoder_layers=0"),
    ),
    "prefix_states": (
        "SmolLM2 pair, kind=prefix_states: the decoder's own key/value projections read the encoder's layer inputs",
        ("experiment=quickstart", "decoder.cross_attention.kind=prefix_states"),
    ),
    "prefix+trained_encoder": (
        "SmolLM2 prefix pair with the encoder trained too",
        ("experiment=quickstart", "model.freeze_encoder=false"),
    ),
    "prefix+source192": (
        "SmolLM2 prefix pair reading 192 source tokens (the default until 2026-12-07: it reads 384 now)",
        ("experiment=quickstart", "data.max_source_length=192"),
    ),
    "prefix+source512": (
        "SmolLM2 prefix pair reading 512 source tokens",
        ("experiment=quickstart", "data.max_source_length=512"),
    ),
    "prefix+lead_copies": (
        "SmolLM2 prefix pair with lead copies (the default until they measured worse)",
        ("experiment=quickstart", "data.lead_copy_sentences=3"),
    ),
    "minilm-minilm": (
        "MiniLM -> MiniLM, what `python train.py` ran before the prefix pair",
        ("experiment=quickstart", "encoder=minilm", "decoder=minilm", *BEFORE),
    ),
    "minilm+new_lr": (
        "MiniLM -> MiniLM, default + new parameters at lr 1e-3",
        ("experiment=quickstart", "encoder=minilm", "decoder=minilm", *BEFORE, "optimizer.new_params_lr=1e-3"),
    ),
    "minilm+levers": (
        "MiniLM -> MiniLM, default + lr 1e-3 + cross-attention from self-attention + identity head",
        (
            "experiment=quickstart",
            "encoder=minilm",
            "decoder=minilm",
            *BEFORE,
            *XATTN,
            "decoder.lm_head_init=identity",
            "optimizer.new_params_lr=1e-3",
        ),
    ),
    "smollm2-before": (
        "MiniLM -> SmolLM2, closed gates, one learning rate, 48 tokens",
        ("experiment=quickstart", "encoder=minilm", "decoder=smollm2", *BEFORE),
    ),
    "smollm2+new_lr": (
        "MiniLM -> SmolLM2, new parameters at lr 1e-3",
        ("experiment=quickstart", "encoder=minilm", "decoder=smollm2", *BEFORE, "optimizer.new_params_lr=1e-3"),
    ),
    "smollm2+xattn_init": (
        "MiniLM -> SmolLM2, lr 1e-3 + cross-attention queries from self-attention",
        ("experiment=quickstart", "encoder=minilm", "decoder=smollm2", *BEFORE, "optimizer.new_params_lr=1e-3", *XATTN),
    ),
    "smollm2+lr3e-3": (
        "MiniLM -> SmolLM2, cross-attention from self-attention, new parameters at lr 3e-3",
        ("experiment=quickstart", "encoder=minilm", "decoder=smollm2", *BEFORE, *XATTN, "optimizer.new_params_lr=3e-3"),
    ),
    "smollm2+gate": (
        "MiniLM -> SmolLM2, cross-attention from self-attention, lr 1e-3, gates start at 0.5",
        (
            "experiment=quickstart",
            "encoder=minilm",
            "decoder=smollm2",
            *BEFORE,
            *XATTN,
            "optimizer.new_params_lr=1e-3",
            "decoder.cross_attention.gate_init=0.5",
        ),
    ),
    "smollm2+len96": (
        "MiniLM -> SmolLM2, cross-attention from self-attention, lr 1e-3, 96 tokens, no repeated trigrams",
        (
            "experiment=quickstart",
            "encoder=minilm",
            "decoder=smollm2",
            *BEFORE,
            *XATTN,
            "optimizer.new_params_lr=1e-3",
            "data.max_target_length=96",
            "generation.no_repeat_ngram_size=3",
        ),
    ),
    "smollm2-smollm2": (
        "SmolLM2 -> SmolLM2 (causal LLM as encoder: keys/values from self-attention too), lr 1e-3",
        (
            "experiment=quickstart",
            "decoder=smollm2",
            "encoder=smollm2",
            *BEFORE,
            *XATTN,
            "optimizer.new_params_lr=1e-3",
        ),
    ),
    "smollm2-smollm2+frozen": (
        "SmolLM2 -> SmolLM2 with the encoder frozen (a third less compute per step)",
        (
            "experiment=quickstart",
            "decoder=smollm2",
            "encoder=smollm2",
            *BEFORE,
            *XATTN,
            "optimizer.new_params_lr=1e-3",
            "model.freeze_encoder=true",
        ),
    ),
    "warm_start_gated": (
        "experiment=warm_start_gated: the best gated combination (+ lead copies, gates 0.5, 96 tokens)",
        ("experiment=warm_start_gated",),
    ),
    "minilm-smollm2": (
        "MiniLM -> SmolLM2, kind=auto (projector)",
        ("experiment=quickstart", "encoder=minilm", "decoder=smollm2"),
    ),
}
HF_ANCHOR = "hf-seq2seqtrainer"
DECODER_ALONE = "decoder-alone"
# Runs that are not train.py: each a worker module of bench/ (its `worker(spec)`) trained on the 'default' config,
# plus the overrides listed.
# The anchor reads the source lengths issue 26 filed it with (192/96), whatever the default reads: the decoder alone pays
# a backward pass for every source token, the prefix pair's frozen encoder only a forward one.
ANCHOR_SOURCE = "data.max_source_length=192"
ANCHORS = {
    HF_ANCHOR: ("quality_hf", "HF Seq2SeqTrainer on the 'default' model, data and steps", ()),
    DECODER_ALONE: (
        "quality_decoder_alone",
        "the decoder alone: the 'default' decoder LM as a plain causal LM in HF Trainer on [document; bos; summary; "
        "eos], the same data, lengths, batch, steps, optimizer, schedule, clipping and decoding",
        (),
    ),
    # Issue 26's anchor as filed: its learning rate, which suits the decoder alone better than the default's.
    "decoder-alone-lr1e-4": (
        "quality_decoder_alone",
        "the decoder alone as above, at learning rate 1e-4 (issue 26's anchor)",
        ("optimizer.lr=1e-4", ANCHOR_SOURCE),
    ),
    # The same in bf16-mixed (Trainer's bf16=True, generation under bf16 autocast): the anchor at the precision
    # trainer.precision=auto gives encdec on a CPU with AMX, for a comparison at equal arithmetic.
    "decoder-alone-lr1e-4-bf16": (
        "quality_decoder_alone",
        "the decoder alone at learning rate 1e-4 as above, in bf16-mixed (Trainer's bf16=True)",
        ("optimizer.lr=1e-4", "trainer.precision=bf16-mixed", ANCHOR_SOURCE),
    ),
    # For reference: the decoder alone reading as much of the paper as the default does, at its own cost.
    "decoder-alone-lr1e-4-bf16-source384": (
        "quality_decoder_alone",
        "the decoder alone at learning rate 1e-4 in bf16-mixed, reading 384 source tokens like the default",
        ("optimizer.lr=1e-4", "trainer.precision=bf16-mixed", "data.max_source_length=384"),
    ),
}
SCORES = ("rouge1", "rouge2", "rougeL")
LEADS = (1, 3)  # encdec.metrics.LEAD_SENTENCES


def train_overrides(steps: int, eval_every: int, device: str, run_dir: Path) -> list[str]:
    return [
        f"trainer.max_steps={steps}",
        "trainer.max_epochs=-1",
        "trainer.check_val_every_n_epoch=null",
        f"trainer.val_check_interval={eval_every}",
        "checkpoint.save_top_k=0",
        "checkpoint.save_last=false",
        "logger=csv",
        "callbacks=none",
        f"trainer={'cpu' if device == 'cpu' else 'gpu'}",
        "+callbacks.quality_clock._target_=quality_clock.TrainingClock",
        f"+callbacks.quality_clock.path={run_dir / 'clock.json'}",
        f"hydra.run.dir={run_dir}",
    ] + (["trainer.precision=32-true"] if device != "cpu" else [])


def run_encdec(name: str, overrides: tuple[str, ...], args, folder: Path) -> dict:
    run_dir = folder / name
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(common.ROOT / "bench"), os.environ.get("PYTHONPATH", "")]),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "WANDB_MODE": "disabled",
    }
    command = [
        sys.executable,
        str(common.ROOT / "train.py"),
        *overrides,
        *train_overrides(args.steps, args.eval_every, args.device, run_dir),
    ]
    started = time.perf_counter()
    process = subprocess.run(command, cwd=common.ROOT, capture_output=True, text=True, env=env)
    if process.returncode != 0:
        raise RuntimeError(f"{name} failed (exit {process.returncode}):\n{process.stderr[-3000:]}")
    curve = json.loads((run_dir / "clock.json").read_text())["curve"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {
        "overrides": list(overrides),
        "curve": curve,
        "train_seconds": curve[-1]["seconds"] if curve else None,  # the clock's: optimizer steps, validation excluded
        "wall_seconds": round(time.perf_counter() - started, 1),
        "test": {k: round(v, 2) for k, v in metrics.items() if k.startswith(("test/", "baseline/", "time/"))},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--levers", default=",".join([*LEVERS, *ANCHORS]), help="comma-separated: " + ", ".join([*LEVERS, *ANCHORS])
    )
    parser.add_argument("--steps", type=int, default=39)
    parser.add_argument("--eval-every", type=int, default=13)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--results", default=None, help="file name under bench/results (quality_<device>.json)")
    parser.add_argument("--parallel", type=int, default=1, help="runs at once (a GPU has room for several)")
    parser.add_argument(
        "--extra",
        nargs="*",
        default=[],
        help="train.py overrides added to every run (a dry run: data.max_eval_samples=4)",
    )
    parser.add_argument(
        "--seeds",
        default=None,
        help="comma-separated seeds: every lever runs once per seed (seed=S), and the table gives each lever's mean "
        "and standard deviation over them (one aclsum run's test ROUGE moves by up to a point with the seed alone)",
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        import importlib

        spec = json.loads(args.worker)
        importlib.import_module(ANCHORS[spec.get("anchor", HF_ANCHOR)][0]).worker(spec)
        return
    results_name = args.results or f"quality_{args.device}.json"
    unknown = [n for n in args.levers.split(",") if n not in LEVERS and n not in ANCHORS]
    if unknown:
        parser.error(f"unknown lever {unknown[0]}: use {', '.join([*LEVERS, *ANCHORS])}")
    runs: dict[str, dict] = {}
    names = args.levers.split(",")
    seeds = [int(seed) for seed in args.seeds.split(",")] if args.seeds else [None]
    # Seed by seed, each lever once per seed: if the machine's load drifts, it drifts over every lever alike.
    tasks = [(name, seed) for seed in seeds for name in names]
    keys = [name if seed is None else f"{name}@seed{seed}" for name, seed in tasks]
    with tempfile.TemporaryDirectory(prefix="encdec-quality-") as scratch:

        def measure(task: tuple[str, int | None]) -> None:
            name, seed = task
            key = name if seed is None else f"{name}@seed{seed}"
            extra = [*args.extra, *([f"seed={seed}"] if seed is not None else [])]
            print(f"[quality] {key} ...", flush=True)
            if name in ANCHORS:
                spec = {
                    "anchor": name,
                    "steps": args.steps,
                    "eval_every": args.eval_every,
                    "device": args.device,
                    "overrides": [*LEVERS["default"][1], *extra, *ANCHORS[name][2]],
                }
                run = {"overrides": spec["overrides"], **common.run_worker(Path(__file__), spec, timeout=7200)}
                run["wall_seconds"] = run["process_seconds"]  # the whole subprocess, as for a train.py run
                run.setdefault("train_seconds", run["curve"][-1]["seconds"] if run["curve"] else None)
            else:
                run = run_encdec(key.replace("@", "-"), (*LEVERS[name][1], *extra), args, Path(scratch))
            run["description"] = LEVERS[name][0] if name in LEVERS else ANCHORS[name][1]
            last = run["curve"][-1] if run["curve"] else {}
            print(
                f"[quality] {key}: val rouge2 {last.get('rouge2', float('nan')):.2f} at step {last.get('step')}, "
                f"{last.get('seconds', 0):.0f} s of training, {run['wall_seconds']:.0f} s in all; "
                f"test {run.get('test', {})}",
                flush=True,
            )
            with lock:
                runs[key] = run
                payload = {
                    "machine": common.machine() if args.device == "cpu" else common.gpu_machine(),
                    "settings": {
                        "steps": args.steps,
                        "eval_every": args.eval_every,
                        "device": args.device,
                        "parallel": args.parallel,
                        "extra": args.extra,
                        "seeds": seeds,
                    },
                    "baselines": baselines,
                    "runs": {k: runs[k] for k in keys if k in runs},
                }
                common.write_results(results_name, payload, merge_key="runs")

        lock = threading.Lock()
        baselines = _validation_baselines(args.extra)
        if args.parallel > 1:
            # Several runs at once share the device: steps and ROUGE are unaffected, the seconds are not comparable.
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(args.parallel) as pool:
                for future in [pool.submit(measure, task) for task in tasks]:
                    try:
                        future.result()
                    except RuntimeError as error:
                        print(f"[quality] FAILED {error}", flush=True)
        else:
            for task in tasks:
                measure(task)
    import quality_plot

    print(f"[quality] plot: {quality_plot.plot(common.RESULTS / results_name)}", flush=True)
    rows = summary_rows(over_seeds(runs, names, seeds), baselines["test"])
    common.write_results(results_name, {"summary": rows})
    print(f"\n[quality] test ROUGE of this invocation's runs ({args.steps} steps, {args.device}):", flush=True)
    print(summary_table(rows), flush=True)


def over_seeds(runs: dict[str, dict], names: list[str], seeds: list[int | None]) -> dict[str, dict]:
    """One run per lever: itself for a single seed; else the mean of its seeds' test scores and training seconds, with
    `seeds` and each score's sample standard deviation (`sd`) beside them."""
    if seeds == [None]:
        return {name: runs[name] for name in names if name in runs}
    merged = {}
    for name in names:
        done = [runs[key] for key in (f"{name}@seed{seed}" for seed in seeds) if key in runs]
        if not done:
            continue
        scores = {
            f"test/{n}": [run["test"][f"test/{n}"] for run in done if f"test/{n}" in run.get("test", {})]
            for n in SCORES
        }
        seconds = [run["train_seconds"] for run in done if run.get("train_seconds")]
        merged[name] = {
            "test": {k: round(statistics.fmean(v), 2) for k, v in scores.items() if v},
            "sd": {k: round(statistics.stdev(v), 2) for k, v in scores.items() if len(v) > 1},
            "seeds": len(done),
            "train_seconds": round(statistics.fmean(seconds), 1) if seconds else None,
            "wall_seconds": round(statistics.fmean(run["wall_seconds"] for run in done), 1),
        }
    return merged


def summary_rows(runs: dict[str, dict], leads: dict[str, float]) -> list[dict]:
    """One row per lead baseline and per run: test ROUGE-1/2/L, training and wall seconds, whether the run beats
    lead-1, lead-3 and every decoder-alone anchor of the invocation in all three scores, and its training seconds over
    the fastest of those anchors'."""
    alone = [run for name, run in runs.items() if ANCHORS.get(name, ("",))[0] == "quality_decoder_alone"]
    # Per score, the best decoder-alone anchor: to beat them all is to beat that.
    anchor_test = {
        f"test/{n}": max(run["test"][f"test/{n}"] for run in alone)
        for n in SCORES
        if alone and all(f"test/{n}" in run.get("test", {}) for run in alone)
    }
    anchor_seconds = min((run["train_seconds"] for run in alone if run.get("train_seconds")), default=None)
    rows = [{"run": f"lead-{k}", **{n: leads.get(f"baseline/lead{k}/{n}") for n in SCORES}} for k in LEADS]

    def beats(test: dict, reference: dict) -> bool | None:
        if not all(f"test/{n}" in test for n in SCORES) or not reference:
            return None
        return all(test[f"test/{n}"] > reference[n] for n in SCORES)

    for name, run in runs.items():
        test = run.get("test", {})
        seconds = run.get("train_seconds")
        rows.append(
            {
                "run": name,
                **{n: test.get(f"test/{n}") for n in SCORES},
                "train_seconds": seconds,
                "wall_seconds": run.get("wall_seconds"),
                "seeds": run.get("seeds", 1),
                **{f"sd_{n}": run.get("sd", {}).get(f"test/{n}") for n in SCORES},
                **{
                    f"beats_lead{k}": beats(test, {n: leads.get(f"baseline/lead{k}/{n}") for n in SCORES})
                    for k in LEADS
                },
                "beats_decoder_alone": None
                if name in ANCHORS
                else beats(test, {n: anchor_test[f"test/{n}"] for n in SCORES if f"test/{n}" in anchor_test}),
                "train_seconds_vs_decoder_alone": round(seconds / anchor_seconds, 2)
                if seconds is not None and anchor_seconds
                else None,
            }
        )
    return rows


def summary_table(rows: list[dict]) -> str:
    def cell(value, digits: int = 2) -> str:
        if value is None:
            return "-"
        if isinstance(value, bool):
            return "yes" if value else "no"
        return f"{value:.{digits}f}"

    lines = [
        {
            "run": row["run"],
            "test R-1/2/L": " / ".join(cell(row.get(n)) for n in SCORES),
            **(
                {"sd over seeds": " / ".join(cell(row.get(f"sd_{n}")) for n in SCORES), "seeds": row.get("seeds", "")}
                if any(row.get("seeds", 1) > 1 for row in rows)
                else {}
            ),
            "train s": cell(row.get("train_seconds"), 0),
            "wall s": cell(row.get("wall_seconds"), 0),
            "> lead-1 (all 3)": cell(row.get("beats_lead1")),
            "> lead-3 (all 3)": cell(row.get("beats_lead3")),
            "> decoder-alone (all 3)": "(anchor)" if row["run"] in ANCHORS else cell(row.get("beats_decoder_alone")),
            "train s / decoder-alone's": cell(row.get("train_seconds_vs_decoder_alone")),
        }
        for row in rows
    ]
    return common.table(lines, list(lines[0]))


def _validation_baselines(extra: list[str] = ()) -> dict[str, float]:
    from encdec.data.loading import load_splits
    from encdec.metrics import lead_baselines

    # The runs' data caps (data.max_test_samples=4, ...) apply to the baselines too; hydra.* keys are not the config's.
    overrides = [o for o in extra if not o.lstrip("+~").startswith("hydra.")]
    splits = load_splits(common.compose("experiment=quickstart", *overrides).data)
    return {
        split: lead_baselines(list(splits[split]["document"]), list(splits[split]["summary"]))
        for split in ("validation", "test")
    }


if __name__ == "__main__":
    main()
