"""A plain PyTorch loop on encdec's model: no Lightning, no Hydra, just `encdec.build_model`.

    python examples/plain_pytorch.py                                       # tiny random models, seconds on a CPU
    python examples/plain_pytorch.py --encoder minilm --decoder smollm2 --steps 200 --lr 1e-4

`build_model` returns a plain transformers EncoderDecoderModel (with encdec's cross-attention where the decoder has
none) and both tokenizers, from the names and options the configs take. Its forward computes the loss from `labels`
(shifted into decoder inputs behind the start token), and `generate` decodes with the settings build_model set.
"""

import argparse

import torch

import encdec

WORDS = "alpha beta gamma delta epsilon zeta theta kappa lambda sigma omega".split()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="tiny")
    parser.add_argument("--decoder", default="tiny")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()

    torch.manual_seed(0)
    model, encoder_tokenizer, decoder_tokenizer = encdec.build_model(
        args.encoder, args.decoder, generation={"max_new_tokens": 8}
    )
    documents = [" ".join(WORDS[(i * 3 + j * 7) % len(WORDS)] for j in range(12)) for i in range(32)]
    summaries = [" ".join(document.split()[:3]) for document in documents]
    sources = encoder_tokenizer(documents, padding=True, return_tensors="pt")
    eos = decoder_tokenizer.eos_token or decoder_tokenizer.sep_token
    targets = decoder_tokenizer(
        [summary + eos for summary in summaries], padding=True, add_special_tokens=False, return_tensors="pt"
    )
    labels = targets["input_ids"].masked_fill(targets["attention_mask"] == 0, -100)  # -100: padding is no target

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    model.train()
    losses = []
    for step in range(args.steps):
        rows = torch.arange(step * 8, step * 8 + 8) % len(documents)
        loss = model(
            input_ids=sources["input_ids"][rows], attention_mask=sources["attention_mask"][rows], labels=labels[rows]
        ).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    print(f"loss: first {losses[0]:.3f} last {losses[-1]:.3f} over {len(losses)} steps")

    model.eval()
    with torch.no_grad():
        generated = model.generate(input_ids=sources["input_ids"][:2], attention_mask=sources["attention_mask"][:2])
    for document, summary in zip(documents, decoder_tokenizer.batch_decode(generated, skip_special_tokens=True)):
        print(f"example: {document[:40]}... -> {summary.strip()}")


if __name__ == "__main__":
    main()
