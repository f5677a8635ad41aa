"""The LightningModule: teacher-forced loss for training, generation + ROUGE for validation and test."""

from __future__ import annotations

from typing import Any, Callable

import lightning as L
import torch
import torch.nn.functional as F
from transformers import EncoderDecoderModel, PreTrainedTokenizerBase

from encdec.lit.datamodule import IGNORE_INDEX
from encdec.metrics import rouge


class Seq2SeqModule(L.LightningModule):
    def __init__(
        self,
        model: EncoderDecoderModel,
        decoder_tokenizer: PreTrainedTokenizerBase,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        generate_in_validation: bool = True,
        run_config: dict | None = None,
    ):
        super().__init__()
        self.model = model
        self.decoder_tokenizer = decoder_tokenizer
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.generate_in_validation = generate_in_validation
        self.run_config = run_config
        self._outputs: dict[str, list[tuple[int, str]]] = {"val": [], "test": []}
        # stage -> [{"document", "reference", "prediction"}], in data order, for predictions.jsonl and loggers
        self.last_predictions: dict[str, list[dict[str, str]]] = {}

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        # The loss is ours, not EncoderDecoderModel's: its labels path rebuilds decoder masks from pad ids.
        logits = self.model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            decoder_input_ids=batch["decoder_input_ids"],
            decoder_attention_mask=batch["decoder_attention_mask"],
            use_cache=False,
        ).logits
        return F.cross_entropy(logits.float().flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE_INDEX)

    def training_step(self, batch, batch_idx):
        loss = self.loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def _eval_step(self, batch, stage: str) -> None:
        size = batch["input_ids"].shape[0]
        self.log(f"{stage}/loss", self.loss(batch), prog_bar=True, batch_size=size, sync_dist=True)
        if stage == "val" and not self.generate_in_validation:
            return
        predictions = self.generate(batch["input_ids"], batch["attention_mask"])
        self._outputs[stage].extend(zip(batch["index"].tolist(), predictions))

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, "test")

    def on_validation_epoch_end(self):
        self._log_rouge("val")

    def on_test_epoch_end(self):
        self._log_rouge("test")

    def _log_rouge(self, stage: str) -> None:
        outputs = self._outputs[stage]
        self._outputs[stage] = []
        if not outputs:
            return
        if self.trainer.world_size > 1:
            gathered: list = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(gathered, outputs)
            outputs = sorted({item[0]: item for part in gathered for item in part}.values())
        else:
            outputs = sorted(outputs)
        # References are the untruncated summaries, as in published ROUGE numbers.
        raw = self.trainer.datamodule.raw["validation" if stage == "val" else "test"]
        rows = [
            {"document": raw[i]["document"], "reference": raw[i]["summary"], "prediction": prediction}
            for i, prediction in outputs
        ]
        self.last_predictions[stage] = rows
        scores = rouge([r["prediction"] for r in rows], [r["reference"] for r in rows])
        for name, value in scores.items():
            # Every rank holds the gathered outputs, so the values agree without a further reduction.
            self.log(f"{stage}/{name}", value, prog_bar=name == "rouge2", rank_zero_only=False)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **overrides) -> list[str]:
        generated = self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **overrides)
        return self.decoder_tokenizer.batch_decode(generated, skip_special_tokens=True, clean_up_tokenization_spaces=True)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Enough to rebuild the model from the checkpoint alone (eval.py on a .ckpt), without its pretrained sources.
        checkpoint["encdec"] = {"config": self.run_config, "model_config": self.model.config.to_dict()}

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer, num_training_steps=int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
