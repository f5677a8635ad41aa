"""Generation: encdec.inference.summarize (length-sorted batches) vs plain model.generate, same model and inputs.

    python bench/generation.py --mode greedy            # 32 aclsum documents, <=256 source tokens, 64 new tokens
    python bench/generation.py --mode beam              # beam 4 (the generation=beam preset)
    python bench/generation.py --mode greedy --lengths full   # every document truncated to 256 (no length spread)
    python bench/generation.py --mode greedy --static-cache   # adds summarize with cache_implementation=static
    python bench/generation.py --model bert2gpt2-4x256        # another common.MODELS shape (random weights)

On a CUDA GPU (float32 as on CPU; the GPU image has neither the packaged MiniLM nor aclsum, hence bert2bert-base,
random weights over a generated vocabulary, and synthetic documents; run on an H200 2026-11-26 by bench/gpu_all.sh
with --documents 64 --batch-sizes 8,16,64 --rounds 1, ~15-20 s per mode; see bench/README.md, GPU, for the .whl
packages the image lacks and PYTHONPATH=src):
    python bench/generation.py --device cuda --model bert2bert-base --data synthetic --mode greedy \
        --documents 128 --batch-sizes 16,64 --no-single

Flags beyond the above: --device cpu|cuda (cuda: model, inputs and warm-up on the GPU, torch.cuda.synchronize()
around every timed method; exits 2 at once if CUDA is unavailable), --model NAME (a common.MODELS key, default
minilm), --data aclsum|synthetic (synthetic: documents of random single-token words from the encoder vocabulary, cut
like aclsum's, for machines without aclsum; under bert2bert-base's generated vocabulary aclsum text would be all
[UNK] anyway, so only lengths matter there). aclsum's test split has 100 documents: a larger --documents cycles
through them (each copy cut to its own random length with --lengths spread).

Methods, run alternately (the order flips every round) in one process on the same weights:
  single       model.generate one document at a time (no padding at all): the reference outputs
  batched-N    model.generate on batches of N in input order, padded (tokenizer(..., padding=True)), default settings
  encdec-N     encdec.inference.summarize(batch_size=N): documents sorted by length, then batched
  encdec-tokT  summarize(max_tokens=T): sorted, each batch as many rows as fit rows * (longest source +
               max_new_tokens) <= T (data.eval_max_tokens_per_batch, 8192 by default; --budgets)
Greedy outputs must be identical token for token (asserted); beam outputs are compared and differences reported.
Results are merged into bench/results/generation_cpu.json (generation_gpu.json with --device cuda); the scenario key
is MODE-LENGTHS, prefixed with the model and suffixed with -synthetic / -cuda when those are not the defaults.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

PRESETS = {
    "greedy": ["generation=greedy"],
    "beam": ["generation=beam"],  # num_beams 4, no_repeat_ngram_size 3, early_stopping, length_penalty 1
}


def documents(count: int, lengths: str, data: str, tokenizer, seed: int = 0) -> list[str]:
    """aclsum test documents (cycled when count exceeds the split) or synthetic ones of 400 random single-token words
    (every aclsum test document has over 350 words, so the cuts below give both the same length mix); with
    lengths=spread each is cut to a random 20..260 words (a realistic mix)."""
    import numpy as np

    if data == "synthetic":
        words = [w for w in tokenizer.get_vocab() if w.isascii() and w.isalnum()]  # no [special] or ##pieces
        rng = np.random.default_rng(seed + 1)
        docs = [" ".join(words[i] for i in rng.integers(0, len(words), size=400)) for _ in range(count)]
    else:
        from encdec.data.loading import load_splits

        raw = load_splits(common.compose().data)["test"]
        if count > len(raw):
            print(f"note: aclsum's test split has {len(raw)} documents; cycling through them for {count}")
        docs = [raw[i % len(raw)]["document"] for i in range(count)]
    if lengths == "spread":
        rng = np.random.default_rng(seed)
        docs = [" ".join(d.split()[: int(k)]) for d, k in zip(docs, rng.integers(20, 261, size=count))]
    return docs


def strip(ids: list[int], pad: int, eos: int) -> list[int]:
    """A generated row without the padding after eos (batched rows are padded to the longest in their batch)."""
    out = []
    for token in ids:
        out.append(token)
        if token == eos and len(out) > 1:
            break
    while out and out[-1] == pad and pad != eos:
        out.pop()
    return out


def fail(message: str) -> None:
    print(f"generation.py: error: {message}", file=sys.stderr)
    sys.exit(2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=sorted(PRESETS), default="greedy")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--model", choices=list(common.MODELS), default="minilm")
    parser.add_argument("--data", choices=["aclsum", "synthetic"], default="aclsum")
    parser.add_argument("--documents", type=int, default=32)
    parser.add_argument("--max-source-length", type=int, default=256)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--lengths", choices=["spread", "full"], default="spread")
    parser.add_argument("--batch-sizes", default="8,16")
    parser.add_argument(
        "--budgets",
        default="8192",
        help="comma-separated max_tokens for encdec-tokN (data.eval_max_tokens_per_batch); '' for none",
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-single", action="store_true", help="skip one-at-a-time (slow); no token check then")
    parser.add_argument("--static-cache", action="store_true", help="also time summarize with a static KV cache")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()

    common.quiet()
    import torch

    from encdec.errors import EncdecError
    from encdec.inference import summarize
    from encdec.models import configure_generation

    # Fail in seconds, before building anything, on what a bare GPU machine lacks.
    if args.device == "cuda" and not torch.cuda.is_available():
        fail(f"--device cuda: CUDA is not available (torch {torch.__version__}, CUDA build {torch.version.cuda})")
    if args.data == "aclsum" and importlib.util.find_spec("aclsum") is None:
        fail("--data aclsum: the aclsum package is not installed; use --data synthetic")
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    info = common.machine()
    if device.type == "cuda":
        info.update(common.gpu_machine())
        info["note"] = "one GPU, float32; methods alternated in one process: compare ratios within an invocation"
    try:
        cfg, model, encoder_tokenizer, decoder_tokenizer = common.build(
            args.model,
            *PRESETS[args.mode],
            f"generation.max_new_tokens={args.max_new_tokens}",
            f"data.max_source_length={args.max_source_length}",
        )
    except EncdecError as error:  # e.g. minilm without its package (the GPU image): say so in one line
        fail(f"--model {args.model}: {error}")
    configure_generation(model, decoder_tokenizer, cfg.generation)
    model.to(device).eval()
    pad, eos = model.generation_config.pad_token_id, model.generation_config.eos_token_id
    docs = documents(args.documents, args.lengths, args.data, encoder_tokenizer)
    encoded = encoder_tokenizer(docs, max_length=args.max_source_length, truncation=True)["input_ids"]
    source_lengths = [len(e) for e in encoded]
    parameters_m = round(sum(p.numel() for p in model.parameters()) / 1e6, 1)
    print(
        f"{args.mode}: {len(docs)} {args.data} documents ({args.lengths}: source tokens "
        f"{min(source_lengths)}..{max(source_lengths)}, mean {sum(source_lengths) / len(docs):.0f}), "
        f"{args.max_new_tokens} new tokens, {args.model} ({parameters_m}M parameters), float32, {args.device}"
        + (f" ({info['gpu']})" if "gpu" in info else "")
        + f", {args.threads} thread(s)"
    )
    print(f"generation config: {model.generation_config.to_diff_dict()}")

    def decode(rows):
        return [
            t.strip()
            for t in decoder_tokenizer.batch_decode(rows, skip_special_tokens=True, clean_up_tokenization_spaces=True)
        ]

    calls = [0]  # generate calls (batches) of the method last run

    @torch.no_grad()
    def plain(batch_size: int):
        """model.generate over batches in input order; returns (token rows, texts, padded source tokens)."""
        rows, padded_tokens = [], 0
        calls[0] = 0
        for start in range(0, len(docs), batch_size):
            calls[0] += 1
            inputs = encoder_tokenizer(
                docs[start : start + batch_size],
                max_length=args.max_source_length,
                truncation=True,
                padding=True,
                return_tensors="pt",
            ).to(device)
            padded_tokens += inputs["input_ids"].numel()
            out = model.generate(**inputs)
            rows += [strip(r, pad, eos) for r in out.tolist()]
        return rows, decode(rows), padded_tokens

    def with_encdec(batch_size: int, max_tokens: int | None = None, **generate_kwargs):
        """encdec.inference.summarize, with model.generate wrapped to record the token rows it produced."""
        by_source: dict[tuple, list[int]] = {}  # lists: cycled aclsum documents with --lengths full repeat
        for i, e in enumerate(encoded):
            by_source.setdefault(tuple(e), []).append(i)
        rows: list = [None] * len(docs)
        padded = [0]
        calls[0] = 0
        original = model.generate

        def recording(*a, **k):
            out = original(*a, **{**k, **generate_kwargs})
            padded[0] += k["input_ids"].numel()
            calls[0] += 1
            for source, mask, generated in zip(k["input_ids"].tolist(), k["attention_mask"].tolist(), out.tolist()):
                rows[by_source[tuple(s for s, m in zip(source, mask) if m)].pop()] = strip(generated, pad, eos)
            return out

        model.generate = recording
        try:
            texts = summarize(
                model,
                encoder_tokenizer,
                decoder_tokenizer,
                docs,
                batch_size=batch_size,
                max_source_length=args.max_source_length,
                device=device,
                progress=False,
                max_tokens=max_tokens,
            )
        finally:
            del model.generate
        return rows, texts, padded[0]

    methods = {}
    if not args.no_single:
        methods["single"] = lambda: plain(1)
    for size in map(int, args.batch_sizes.split(",")):
        methods[f"batched-{size}"] = lambda size=size: plain(size)
        methods[f"encdec-{size}"] = lambda size=size: with_encdec(size)
        if args.static_cache:
            methods[f"encdec-{size}-static"] = lambda size=size: with_encdec(size, cache_implementation="static")
    for budget in [int(b) for b in args.budgets.split(",") if b.strip()]:
        methods[f"encdec-tok{budget}"] = lambda budget=budget: with_encdec(1, max_tokens=budget)

    def clock() -> float:
        if device.type == "cuda":  # .tolist() syncs anyway; explicit so no queued GPU work straddles a reading
            torch.cuda.synchronize()
        return time.perf_counter()

    with torch.no_grad():  # warm-up (CUDA context, kernels, allocator too): first-call costs hit no timed method
        model.generate(
            **encoder_tokenizer(
                docs[:2], max_length=args.max_source_length, truncation=True, padding=True, return_tensors="pt"
            ).to(device),
            max_new_tokens=4,
        )
    times: dict[str, list[float]] = {name: [] for name in methods}
    batches: dict[str, int] = {}
    outputs = {}
    names = list(methods)
    started = time.time()
    for round_ in range(args.rounds):
        for name in names if round_ % 2 == 0 else names[::-1]:
            t0 = clock()
            try:
                outputs[name] = methods[name]()
                batches[name] = calls[0]
            except Exception as error:  # noqa: BLE001 - a lever that does not work here (static cache) is reported, not fatal
                print(f"  {name}: failed: {type(error).__name__}: {str(error).splitlines()[0][:200]}")
                methods.pop(name)
                times.pop(name)
                names.remove(name)
                continue
            times[name].append(clock() - t0)
            print(f"  round {round_}: {name:18s} {times[name][-1]:7.2f} s", flush=True)

    reference = "single" if "single" in outputs else names[0]
    ref_rows, ref_texts, _ = outputs[reference]
    rows = []
    for name in names:
        token_rows, texts, padded_tokens = outputs[name]
        seconds = (
            sorted(times[name])[len(times[name]) // 2] if len(times[name]) % 2 else sum(times[name]) / len(times[name])
        )
        differing = [i for i in range(len(docs)) if token_rows[i] != ref_rows[i]]
        rows.append(
            {
                "method": name,
                "seconds": seconds,
                "summaries_per_s": len(docs) / seconds,
                "padded_source_tokens": padded_tokens,
                "source_padding_fraction": round(1 - sum(source_lengths) / padded_tokens, 4),
                "generated_tokens": sum(len(r) for r in token_rows),
                f"rows_differing_from_{reference}": len(differing),
                "texts_differing": sum(a != b for a, b in zip(texts, ref_texts)),
                "differing_rows": differing,
            }
        )
    by_name = {r["method"]: r for r in rows}
    for row in rows:
        row["vs_single"] = (
            row["summaries_per_s"] / by_name["single"]["summaries_per_s"] if "single" in by_name else None
        )
        size = row["method"].split("-")[1] if row["method"] != "single" else None
        row["rows_per_batch"] = round(len(docs) / batches[row["method"]], 1) if row["method"] in batches else None
        if size and f"batched-{size}" in by_name:
            row["vs_batched_same_size"] = row["summaries_per_s"] / by_name[f"batched-{size}"]["summaries_per_s"]
    # Default against default: encdec evaluates in length-sorted batches under data.eval_max_tokens_per_batch (8192);
    # Seq2SeqTrainer's predict_with_generate uses per_device_eval_batch_size=8 in data order.
    if "encdec-tok8192" in by_name and "batched-8" in by_name:
        by_name["encdec-tok8192"]["defaults_vs_defaults"] = (
            by_name["encdec-tok8192"]["summaries_per_s"] / by_name["batched-8"]["summaries_per_s"]
        )
    print()
    print(
        common.table(
            rows,
            [
                "method",
                "seconds",
                "summaries_per_s",
                "source_padding_fraction",
                "generated_tokens",
                f"rows_differing_from_{reference}",
                "rows_per_batch",
                "vs_single",
                "vs_batched_same_size",
                "defaults_vs_defaults",
            ],
        )
    )
    print(f"({time.time() - started:.0f} s)")

    key = (
        f"{args.mode}-{args.lengths}"
        + ("-static-cache" if args.static_cache else "")
        + ("-no-single" if args.no_single else "")
    )
    # Non-defaults only, so the keys of results already on file stay as they are.
    key = (
        ("" if args.model == "minilm" else f"{args.model}-")
        + key
        + ("-synthetic" if args.data == "synthetic" else "")
        + ("-cuda" if device.type == "cuda" else "")
    )
    peak = {"peak_cuda_mib": round(torch.cuda.max_memory_allocated() / 2**20)} if device.type == "cuda" else {}
    if not args.no_save:
        path = common.write_results(
            "generation_gpu.json" if device.type == "cuda" else "generation_cpu.json",
            {
                "machine": info,
                "scenarios": {
                    key: {
                        "setup": {
                            "mode": args.mode,
                            "model": args.model,
                            "parameters_m": parameters_m,
                            "device": args.device,
                            "data": args.data,
                            "documents": len(docs),
                            "lengths": args.lengths,
                            "source_tokens": common.length_summary(source_lengths),
                            "max_source_length": args.max_source_length,
                            "max_new_tokens": args.max_new_tokens,
                            "threads": args.threads,
                            "rounds": args.rounds,
                            **peak,
                            "generation_config": model.generation_config.to_diff_dict(),
                        },
                        "summary": rows,
                        "times": times,
                    }
                },
            },
            merge_key="scenarios",
        )
        print(f"wrote {path}")
    if args.mode == "greedy" and reference == "single":
        bad = {r["method"]: r["differing_rows"] for r in rows if r["differing_rows"]}
        assert not bad, f"greedy outputs differ from one-at-a-time generation: {bad}"
        assert all(r["texts_differing"] == 0 for r in rows)
        print("greedy: every method produced the same tokens as one-at-a-time generation")


if __name__ == "__main__":
    main()
