"""Tokenizing a large `data=files` set: one process vs one per core (issue 27), with the default model's tokenizers.

Builds a training file of `--rows` rows from the packaged ACLSum papers (each row a slice of a paper's text and one
of its summary's sentences, so rows differ), then tokenizes it as `train.py` does (`encdec.data.tokenize
.tokenize_split`) twice, each time into an empty datasets cache: in this process alone, and with
`num_proc=auto` (one process per core when each gets at least ROWS_PER_PROCESS rows). Prints seconds, rows/s and
the speed-up, checks that both give the same tokens and the same cache fingerprint, and that a third call with the
other process count reads the cache instead of tokenizing again. Run alone on the machine: it measures the CPU.

    python bench/tokenize_scaling.py --rows 100000
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path


def write_rows(path: Path, rows: int) -> None:
    from encdec.api import compose
    from encdec.data.loading import load_splits

    papers = load_splits(compose("tiny", "tiny", data="aclsum").data)["train"]
    texts = [(paper["document"].split(), paper["summary"].split(". ")) for paper in papers]
    with path.open("w") as handle:
        for i in range(rows):
            words, sentences = texts[i % len(texts)]
            start = (i * 37) % max(1, len(words) - 300)
            row = {"document": " ".join(words[start : start + 150 + i % 150]), "summary": sentences[i % len(sentences)]}
            handle.write(json.dumps(row) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--max-source-length", type=int, default=512)
    parser.add_argument("--max-target-length", type=int, default=128)
    args = parser.parse_args()

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
