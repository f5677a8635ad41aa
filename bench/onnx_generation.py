"""ONNX Runtime (export.py format=onnx and its runner.py) vs PyTorch `model.generate` on CPU: same weights, documents,
batches and settings, every new token forced (min_new_tokens = max_new_tokens) so both do the same work; tokens are
compared, then summaries/s timed in alternating rounds.

    python bench/onnx_generation.py                      # MiniLM->MiniLM (packaged), 16 aclsum documents, greedy (~3 min)
    python bench/onnx_generation.py --mode beam --new-tokens 24
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
    parser.add_argument("--documents", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-source-length", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    common.quiet()
    import torch

    from encdec.onnx_export import export_onnx

    torch.set_num_threads(args.threads)
    _, model, encoder_tokenizer, decoder_tokenizer = common.build("minilm")
    model.eval()
    settings = {**SETTINGS[args.mode], "max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens}
    texts = documents(args.documents, "spread", "aclsum", encoder_tokenizer)
    with tempfile.TemporaryDirectory() as scratch:
        started = time.perf_counter()
        export_onnx(model, encoder_tokenizer, decoder_tokenizer, Path(scratch) / "onnx", args.max_source_length)
        export_seconds = time.perf_counter() - started
        sys.path.insert(0, str(Path(scratch) / "onnx"))
        from runner import OnnxSummarizer

        runner = OnnxSummarizer(Path(scratch) / "onnx", threads=args.threads)
        batches = [texts[i:i + args.batch_size] for i in range(0, len(texts), args.batch_size)]
        encoded = [encoder_tokenizer(batch, padding=True, truncation=True, max_length=args.max_source_length,
                                     return_tensors="pt") for batch in batches]

        def pytorch():
            with torch.no_grad():
                return [model.generate(**batch, **settings).tolist() for batch in encoded]

        def onnx_runtime():
            return [runner.generate(batch["input_ids"].numpy(), batch["attention_mask"].numpy(), **settings).tolist()
                    for batch in encoded]

        same = pytorch() == onnx_runtime()
        seconds = {"pytorch": [], "onnxruntime": []}
        for _ in range(args.rounds):
            for name, run in (("pytorch", pytorch), ("onnxruntime", onnx_runtime)):
                started = time.perf_counter()
                run()
                seconds[name].append(time.perf_counter() - started)
    rows = [{"run": name, "summaries/s": len(texts) / min(times), "best s": min(times)} for name, times in seconds.items()]
    print(common.table(rows, ["run", "summaries/s", "best s"]))
    ratio = rows[1]["summaries/s"] / rows[0]["summaries/s"]
    print(f"mode {args.mode}, {args.new_tokens} new tokens, batch {args.batch_size}, {args.threads} thread(s): "
          f"identical tokens {same}; onnxruntime / pytorch = {ratio:.2f}x; export took {export_seconds:.0f} s")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
