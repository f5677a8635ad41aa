"""Your own Lightning Trainer and DataLoader, encdec's model and LightningModule.

    python examples/lightning_trainer.py                                   # tiny random models, seconds on a CPU
    python examples/lightning_trainer.py --encoder minilm --decoder minilm --steps 200 --lr 1e-4

The batches are ordinary ones, as transformers' DataCollatorForSeq2Seq makes them: input_ids, attention_mask and
labels padded with -100. Seq2SeqModule shifts the labels into decoder inputs itself, and validation decodes the
labels as references, so it reports ROUGE without encdec's datamodule.
"""

import argparse
import functools

import lightning as L
import torch
from transformers import DataCollatorForSeq2Seq

import encdec

WORDS = "alpha beta gamma delta epsilon zeta theta kappa lambda sigma omega".split()


def toy_pairs(count: int) -> list[dict[str, str]]:
    """Your data goes here: documents of words, each summarized by its first three words."""
    documents = [[WORDS[(i * 3 + j * 7) % len(WORDS)] for j in range(12)] for i in range(count)]
    return [{"document": " ".join(words), "summary": " ".join(words[:3])} for words in documents]


def tokenized(pairs, encoder_tokenizer, decoder_tokenizer):
    # Sources through the encoder's tokenizer, summaries through the decoder's, each summary ending in its eos.
    eos = (
        decoder_tokenizer.eos_token_id if decoder_tokenizer.eos_token_id is not None else decoder_tokenizer.sep_token_id
    )
    return [
        {
            "input_ids": encoder_tokenizer(pair["document"], truncation=True, max_length=64)["input_ids"],
            "labels": decoder_tokenizer(pair["summary"], add_special_tokens=False)["input_ids"] + [eos],
        }
        for pair in pairs
    ]


class LossHistory(L.Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="tiny")
    parser.add_argument("--decoder", default="tiny")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()

    L.seed_everything(0)
    model, encoder_tokenizer, decoder_tokenizer = encdec.build_model(
        args.encoder, args.decoder, generation={"max_new_tokens": 8}
    )
    collate = DataCollatorForSeq2Seq(encoder_tokenizer, label_pad_token_id=-100)
    train = torch.utils.data.DataLoader(
        tokenized(toy_pairs(32), encoder_tokenizer, decoder_tokenizer), batch_size=8, shuffle=True, collate_fn=collate
    )
    validation = torch.utils.data.DataLoader(
        tokenized(toy_pairs(4), encoder_tokenizer, decoder_tokenizer), batch_size=4, collate_fn=collate
    )

    module = encdec.Seq2SeqModule(model, decoder_tokenizer, optimizer=functools.partial(torch.optim.AdamW, lr=args.lr))
    history = LossHistory()
    trainer = L.Trainer(
        max_steps=args.steps,
        accelerator="auto",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[history],
    )
    trainer.fit(module, train_dataloaders=train, val_dataloaders=validation)
    metrics = trainer.validate(module, dataloaders=validation, verbose=False)[0]
    print(f"loss: first {history.losses[0]:.3f} last {history.losses[-1]:.3f} over {len(history.losses)} steps")
    print(f"validation: loss {metrics['val/loss']:.3f} rouge1 {metrics['val/rouge1']:.2f}")
    print("example:", module.last_predictions["val"][0])


if __name__ == "__main__":
    main()
