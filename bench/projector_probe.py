"""Projector probe: can a frozen SmolLM2 read MiniLM's states once they are projected onto its vocabulary?

Fits encdec's projector (`encdec.projector_prefix.fit_projector`) on MiniLM's states of aclsum's training documents
and summaries, then scores the frozen SmolLM2's summary-token loss (nats) on validation papers after each prefix:
nothing, the document's own text, the projected states at two temperatures, only their top token, and another
paper's projected states (a generic cue would score like the paper's own). docs/decoders.md has the numbers.

    python bench/projector_probe.py --steps 300 --papers 50
"""

from __future__ import annotations

import argparse

import torch

import common


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="fitting steps")
    parser.add_argument("--papers", type=int, default=50, help="validation papers scored")
    args = parser.parse_args()
    common.quiet()
    from encdec.data.loading import load_splits
    from encdec.models import build_model
    from encdec.projector_prefix import fit_projector

    cfg = common.compose("encoder=minilm", "decoder=smollm2", "decoder.cross_attention.kind=projector")
    model, encoder_tokenizer, decoder_tokenizer = build_model(cfg)
    model.eval()
    splits = load_splits(cfg.data)
    texts = list(splits["train"]["document"]) + list(splits["train"]["summary"])
    fitted = fit_projector(model, encoder_tokenizer, decoder_tokenizer, texts, steps=args.steps, max_length=192)
    print(f"fit: {fitted}")
    lm, projector = model.decoder.lm, model.decoder.projector
    embeddings = lm.get_input_embeddings().weight.detach()
    validation = splits["validation"].select(range(args.papers))

    def summary_loss(prefix, prefix_mask, summaries) -> float:
        target = decoder_tokenizer(
            [decoder_tokenizer.bos_token + s + decoder_tokenizer.eos_token for s in summaries],
            add_special_tokens=False,
            truncation=True,
            max_length=96,
            padding=True,
            return_tensors="pt",
        )
        embedded = lm.get_input_embeddings()(target.input_ids)
        if prefix is not None:
            embedded, mask = torch.cat([prefix, embedded], 1), torch.cat([prefix_mask, target.attention_mask], 1)
        else:
            mask = target.attention_mask
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        logits = lm(inputs_embeds=embedded, attention_mask=mask, position_ids=positions).logits
        logits = logits[:, -target.input_ids.shape[1] : -1]
        labels = target.input_ids[:, 1:].masked_fill(target.attention_mask[:, 1:] == 0, -100)
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)).item()

    def projected(states, temperature, top_only=False):
        logits = projector.logits(states, embeddings)
        if top_only:
            return embeddings[logits.argmax(-1)]
        return (logits / temperature).softmax(-1) @ embeddings

    rows = {
        "nothing": [],
        "the document's text": [],
        "projected, temperature 1": [],
        "projected, temperature 0.5": [],
        "projected, top token only": [],
        "another paper's, temperature 1": [],
    }
    with torch.no_grad():
        for start in range(0, args.papers, 10):
            part = validation.select(range(start, min(start + 10, args.papers)))
            documents, summaries = list(part["document"]), list(part["summary"])
            source = encoder_tokenizer(documents, truncation=True, max_length=192, padding=True, return_tensors="pt")
            states = model.encoder(**source).last_hidden_state
            text = decoder_tokenizer(
                documents, truncation=True, max_length=192, add_special_tokens=False, padding=True, return_tensors="pt"
            )
            mask = source.attention_mask
            rows["nothing"].append(summary_loss(None, None, summaries))
            rows["the document's text"].append(
                summary_loss(lm.get_input_embeddings()(text.input_ids), text.attention_mask, summaries)
            )
            rows["projected, temperature 1"].append(summary_loss(projected(states, 1.0), mask, summaries))
            rows["projected, temperature 0.5"].append(summary_loss(projected(states, 0.5), mask, summaries))
            rows["projected, top token only"].append(summary_loss(projected(states, 1, True), mask, summaries))
            rows["another paper's, temperature 1"].append(
                summary_loss(projected(states, 1.0).roll(1, 0), mask.roll(1, 0), summaries)
            )
    for name, losses in rows.items():
        print(f"{name:34s} {sum(losses) / len(losses):.2f}")


if __name__ == "__main__":
    main()
