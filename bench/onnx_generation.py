"""ONNX Runtime (export.py format=onnx and its runner.py) vs PyTorch `model.generate` on CPU, side by side: same
weights, documents, batches and settings, every new token forced (min_new_tokens = max_new_tokens) so both do the same
work; tokens are compared, then summaries/s timed in alternating rounds and the ratio printed. Both sides carry a KV
cache (PyTorch's DynamicCache; the export's past.*/present.* inputs and outputs). Both wall and process CPU seconds
are timed: with one thread each, CPU seconds are the fairer ratio on a machine shared with other work.

    python bench/onnx_generation.py                      # MiniLM->MiniLM (packaged), 16 aclsum documents, greedy
    python bench/onnx_generation.py --mode beam --new-tokens 24
    python bench/onnx_generation.py --model bert2gpt2-4x256   # another common.MODELS shape (random weights)

Results are merged into bench/results/onnx_cpu.json under "{model}-{mode}-{new tokens}" (--no-save: print only).
Exits 1 when the tokens differ.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from generation import documents  # noqa: E402

SETTINGS = {"greedy": {}, "beam": {"num_beams": 4, "no_repeat_ngram_size": 3, "length_penalty": 1.0}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=sorted(SETTINGS), default="greedy")
    parser.add_argument("--model", choices=sorted(common.MODELS), default="minilm")
    parser.add_argument("--documents", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-source-length", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    common.quiet()
    import onnxruntime
    import torch

    from encdec.onnx_export import export_onnx

    torch.set_num_threads(args.threads)
    info = common.machine()
    _, model, encoder_tokenizer, decoder_tokenizer = common.build(args.model)
    model.eval()
    settings = {**SETTINGS[args.mode], "max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens}
    texts = documents(args.documents, "spread", "aclsum", encoder_tokenizer)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "onnx"
        started = time.perf_counter()
        export_onnx(model, encoder_tokenizer, decoder_tokenizer, folder, args.max_source_length)
        export_seconds = time.perf_counter() - started
        sizes_mb = {path.name: round(path.stat().st_size / 2**20, 1) for path in sorted(folder.glob("*.onnx*"))}
        sys.path.insert(0, str(folder))
        from runner import OnnxSummarizer

        runner = OnnxSummarizer(folder, threads=args.threads)
        batches = [texts[i : i + args.batch_size] for i in range(0, len(texts), args.batch_size)]
        encoded = [
            encoder_tokenizer(
                batch, padding=True, truncation=True, max_length=args.max_source_length, return_tensors="pt"
            )
            for batch in batches
        ]

        def pytorch():
            with torch.no_grad():
                return [model.generate(**batch, **settings).tolist() for batch in encoded]

        def onnx_runtime():
            return [
                runner.generate(batch["input_ids"].numpy(), batch["attention_mask"].numpy(), **settings).tolist()
                for batch in encoded
            ]

        same = pytorch() == onnx_runtime()  # also the warm-up of both
        # Wall seconds, and the process's CPU seconds: on a shared machine the wall clock counts other work too.
        seconds, cpu_seconds = {"pytorch": [], "onnxruntime": []}, {"pytorch": [], "onnxruntime": []}
        for round_index in range(args.rounds):
            order = (("pytorch", pytorch), ("onnxruntime", onnx_runtime))
            for name, run in order if round_index % 2 == 0 else order[::-1]:
                started, started_cpu = time.perf_counter(), time.process_time()
                run()
                seconds[name].append(time.perf_counter() - started)
                cpu_seconds[name].append(time.process_time() - started_cpu)
    rows = [
        {
            "run": name,
            "summaries/s": len(texts) / min(seconds[name]),
            "best s": min(seconds[name]),
            "summaries/cpu-s": len(texts) / min(cpu_seconds[name]),
            "best cpu s": min(cpu_seconds[name]),
        }
        for name in seconds
    ]
    print(common.table(rows, ["run", "summaries/s", "best s", "summaries/cpu-s", "best cpu s"]))
    ratio = rows[1]["summaries/s"] / rows[0]["summaries/s"]
    cpu_ratio = rows[1]["summaries/cpu-s"] / rows[0]["summaries/cpu-s"]
    print(
        f"{args.model}, mode {args.mode}, {args.new_tokens} new tokens, batch {args.batch_size}, {args.threads} "
        f"thread(s): identical tokens {same}; onnxruntime / pytorch = {ratio:.2f}x wall, {cpu_ratio:.2f}x CPU time; "
        f"export took {export_seconds:.0f} s; files (MB) {sizes_mb}"
    )
    if not args.no_save:
        path = common.write_results(
            "onnx_cpu.json",
            {
                "machine": {**info, "onnxruntime": onnxruntime.__version__},
                "scenarios": {
                    f"{args.model}-{args.mode}-{args.new_tokens}": {
                        "setup": {
                            "documents": len(texts),
                            "batch_size": args.batch_size,
                            "max_source_length": args.max_source_length,
                            "threads": args.threads,
                            "rounds": args.rounds,
                            "settings": settings,
                            "command": " ".join(["python", "bench/onnx_generation.py", *sys.argv[1:]]),
                        },
                        "identical_tokens": same,
                        "onnxruntime_over_pytorch": round(ratio, 3),
                        "onnxruntime_over_pytorch_cpu_time": round(cpu_ratio, 3),
                        "summary": rows,
                        "seconds": seconds,
                        "cpu_seconds": cpu_seconds,
                        "export_seconds": round(export_seconds, 1),
                        "files_mb": sizes_mb,
                    }
                },
            },
            merge_key="scenarios",
        )
        print(f"wrote {path}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
