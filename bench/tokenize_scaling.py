"""Tokenizing a large `data=files` set: one process vs one per core (issue 27), with the default model's tokenizers.

Builds a training file of `--rows` rows from the packaged ACLSum papers (each row a slice of a paper's text and one
of its summary's sentences, so rows differ), then tokenizes it as `train.py` does (`encdec.data.tokenize
.tokenize_split`) twice, each time into an empty datasets cache: in this process alone, and with
`num_proc=auto` (one process per core when each gets at least ROWS_PER_PROCESS rows). Prints seconds, rows/s and
the speed-up, checks that both give the same tokens and the same cache fingerprint, and that a third call with the
other process count reads the cache instead of tokenizing again. Run alone on the machine: it measures the CPU.

    python bench/tokenize_scaling.py --rows 100000

`--growth` measures what the data's size costs a whole run instead (issue 27's data-growth table): it writes training
files of 1x, 10x (and 100x) `--base-rows` rows the same way, then runs `python train.py` on each with the default
model and `data=files` for `--steps` training steps, export included, each in its own process and datasets cache:
a first run (it converts and tokenizes the file), a second run (it reads both from the cache), and a run with
`data.streaming=true` (nothing converted or tokenized first). Validation and test files hold `--eval-rows` rows and
summaries are cut at `--new-tokens`, so that what is left to grow is the training data's. It prints wall seconds, peak
RSS (`metrics.json`'s `memory/peak_rss_gb`), the seconds inside tokenizing (`tokenize_split`, timed in the run's own
process) and how much the peak grew from 1x.

    python bench/tokenize_scaling.py --growth --base-rows 33000 --scales 1,10 --streamed-scales 1,10,100
    python bench/tokenize_scaling.py --growth --base-rows 300 -- encoder=tiny decoder=tiny   # smoke: overrides after --
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path


def write_rows(path: Path, rows: int, start: int = 0) -> None:
    from encdec.api import compose
    from encdec.data.loading import load_splits

    papers = load_splits(compose("tiny", "tiny", data="aclsum").data)["train"]
    texts = [(paper["document"].split(), paper["summary"].split(". ")) for paper in papers]
    with path.open("w") as handle:
        for i in range(start, start + rows):
            words, sentences = texts[i % len(texts)]
            start = (i * 37) % max(1, len(words) - 300)
            row = {"document": " ".join(words[start : start + 150 + i % 150]), "summary": sentences[i % len(sentences)]}
            handle.write(json.dumps(row) + "\n")


TOKENIZE_PREFIX = "TOKENIZE_SECONDS "


def train_child(arguments: list[str]) -> None:
    """`python train.py ARGUMENTS` in this process, with the seconds spent in tokenize_split printed at exit."""
    import atexit
    import runpy
    import sys

    import encdec.data.tokenize as tokenize
    import encdec.lit.datamodule as datamodule

    spent = [0.0]
    original = tokenize.tokenize_split

    def timed(*args, **kwargs):
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - started

    tokenize.tokenize_split = datamodule.tokenize_split = timed
    atexit.register(lambda: print(f"{TOKENIZE_PREFIX}{spent[0]:.2f}", flush=True))
    root = Path(__file__).resolve().parents[1]
    sys.argv = [str(root / "train.py"), *arguments]
    runpy.run_path(str(root / "train.py"), run_name="__main__")


def growth(args) -> None:
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    scales = sorted({*args.scales, *args.streamed_scales})
    results = []
    with tempfile.TemporaryDirectory(prefix="data-growth-", dir=args.scratch) as scratch:
        scratch = Path(scratch)
        evaluation = {}
        for split, start in (("validation", 10**8), ("test", 2 * 10**8)):
            evaluation[split] = scratch / f"{split}.jsonl"
            write_rows(evaluation[split], args.eval_rows, start)

        def run(name: str, train_file: Path, cache: Path, *extra: str) -> dict:
            run_dir = scratch / "runs" / name.replace(" ", "-").replace(",", "").replace("=", "-")
            command = [
                sys.executable,
                str(Path(__file__).resolve()),
                "--train-child",
                "--",
                "data=files",
                f"data.train_file={train_file}",
                f"data.validation_file={evaluation['validation']}",
                f"data.test_file={evaluation['test']}",
                f"trainer.max_steps={args.steps}",
                f"generation.max_new_tokens={args.new_tokens}",
                "logger=csv",
                f"hydra.run.dir={run_dir}",
                *args.train_arguments,
                *extra,
            ]
            env = {
                **os.environ,
                "HF_DATASETS_CACHE": str(cache),
                "HF_HUB_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false",
            }
            started = time.perf_counter()
            process = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
            wall = time.perf_counter() - started
            if process.returncode:
                raise SystemExit(f"{name} failed:\n{process.stderr[-3000:]}")
            tokenizing = [line for line in process.stdout.splitlines() if line.startswith(TOKENIZE_PREFIX)]
            metrics = json.loads((run_dir / "metrics.json").read_text())
            result = {
                "run": name,
                "wall_s": round(wall, 1),
                "peak_rss_gb": metrics["memory/peak_rss_gb"],
                "tokenizing_s": float(tokenizing[-1][len(TOKENIZE_PREFIX) :]) if tokenizing else None,
                "train_seconds": metrics.get("time/train_seconds"),
            }
            shutil.rmtree(run_dir, ignore_errors=True)  # a run folder holds GBs of checkpoints
            print(json.dumps(result), flush=True)
            results.append(result)
            return result

        for scale in scales:
            rows = scale * args.base_rows
            train_file = scratch / f"train-{scale}x.jsonl"
            started = time.perf_counter()
            write_rows(train_file, rows)
            print(f"{rows} rows written in {time.perf_counter() - started:.0f} s", flush=True)
            label = f"{rows // 1000}k" if rows < 10**6 else f"{rows / 10**6:.1f}M"
            if scale in args.scales:
                cache = scratch / f"cache-{scale}x"
                run(f"{label}, first run", train_file, cache)
                run(f"{label}, second run", train_file, cache)
                shutil.rmtree(cache, ignore_errors=True)
            if scale in args.streamed_scales:
                run(
                    f"{label}, data.streaming=true",
                    train_file,
                    scratch / f"cache-{scale}x-streamed",
                    "data.streaming=true",
                )
            train_file.unlink()

    print()
    print(
        f"{' '.join(args.train_arguments) or 'default model'}, data=files, {args.steps} training steps, export included; {args.eval_rows} validation and test"
    )
    print(f"rows, {args.new_tokens} new tokens; each run its own process; datasets cache per size")
    print()
    print("| train rows | wall | peak RSS | tokenizing |")
    print("|---|---:|---:|---:|")
    for result in results:
        tokenizing = "" if not result["tokenizing_s"] else f"{result['tokenizing_s']:.1f} s"
        print(f"| {result['run']} | {result['wall_s']:.0f} s | {result['peak_rss_gb']:.2f} GB | {tokenizing} |")
    for kind in ("first run", "data.streaming=true"):
        peaks = [r["peak_rss_gb"] for r in results if r["run"].endswith(kind)]
        if len(peaks) > 1:
            growths = ", ".join(f"{100 * (peak / peaks[0] - 1):+.1f}%" for peak in peaks[1:])
            print(f"peak RSS from 1x ({kind}): {growths}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--max-source-length", type=int, default=512)
    parser.add_argument("--max-target-length", type=int, default=128)
    parser.add_argument("--growth", action="store_true", help="the data-growth table: whole train.py runs")
    parser.add_argument("--base-rows", type=int, default=33_000, help="--growth: training rows at 1x")

    def scales(text: str) -> list[int]:
        return [int(x) for x in text.split(",") if x]

    parser.add_argument("--scales", type=scales, default=[1, 10], help="--growth: sizes run cached (first, second)")
    parser.add_argument("--streamed-scales", type=scales, default=[1, 10, 100], help="--growth: sizes streamed")
    parser.add_argument("--steps", type=int, default=2, help="--growth: training steps per run")
    parser.add_argument("--eval-rows", type=int, default=8, help="--growth: validation and test rows")
    parser.add_argument("--new-tokens", type=int, default=16, help="--growth: generation.max_new_tokens")
    parser.add_argument("--scratch", default=None, help="--growth: folder for the files and caches (default TMPDIR)")
    parser.add_argument("--train-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("train_arguments", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.train_child:
        train_child(args.train_arguments)
        return
    if args.growth:
        growth(args)
        return

    import datasets

    from encdec.api import compose
    from encdec.data.tokenize import tokenize_split, tokenizing_processes
    from encdec.models import load_tokenizer

    cfg = compose("smollm2", "smollm2")
    encoder_tokenizer = load_tokenizer(cfg.encoder, "encoder")
    decoder_tokenizer = load_tokenizer(cfg.decoder, "decoder")
    with tempfile.TemporaryDirectory(prefix="tokenize-scaling-") as scratch:
        scratch = Path(scratch)
        rows_file = scratch / "train.jsonl"
        write_rows(rows_file, args.rows)

        def tokenize(num_proc, cache: Path):
            dataset = datasets.load_dataset("json", data_files=str(rows_file), split="train", cache_dir=str(cache))
            started = time.perf_counter()
            tokenized = tokenize_split(
                dataset,
                "train",
                encoder_tokenizer,
                decoder_tokenizer,
                args.max_source_length,
                args.max_target_length,
                num_proc=num_proc,
            )
            return tokenized, time.perf_counter() - started

        processes = tokenizing_processes(args.rows)
        results = {}
        for name, num_proc in (("one process", None), (f"num_proc=auto ({processes or 1})", "auto")):
            cache = scratch / name.split()[0]
            tokenized, seconds = tokenize(num_proc, cache)
            results[name] = (tokenized, seconds)
            print(f"{name:24s} {seconds:7.1f} s  {args.rows / seconds:8.0f} rows/s", flush=True)
            other = "auto" if num_proc is None else None
            _, cached = tokenize(other, cache)
            print(f"{'  then cached, other count':24s} {cached:7.1f} s", flush=True)
        (single, one_s), (parallel, many_s) = results.values()
        same = single._fingerprint == parallel._fingerprint and single["labels"] == parallel["labels"]
        same = same and single["input_ids"] == parallel["input_ids"]
        print(f"speed-up {one_s / many_s:.2f}x on {processes or 1} processes; same tokens and fingerprint: {same}")
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
