"""What experiment trackers show besides the curves: throughput, memory, sample predictions, cross-attention maps.

Each callback writes to whichever loggers can carry it: wandb (tables, images), TensorBoard (text, figures); the
CSV logger gets the scalars, and pictures also land in the run folder under figures/.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import lightning as L
import psutil
import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

from encdec import run_folder
from encdec.data.tokenize import IGNORE_INDEX

log = logging.getLogger(__name__)


class ThroughputMonitor(L.Callback):
    """train/tokens_per_s (source + target tokens, padding excluded), train/target_tokens_per_s, memory in GiB."""

    def __init__(self, window: int = 10):
        self.window = window
        self._tokens = self._target_tokens = 0
        self._started: float | None = None
        self._batches = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self._started is None:
            self._started = time.perf_counter()
        self._tokens += int(batch["attention_mask"].sum() + batch["decoder_attention_mask"].sum())
        self._target_tokens += int((batch["labels"] != IGNORE_INDEX).sum())
        self._batches += 1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self._batches < self.window:
            return
        elapsed = time.perf_counter() - self._started
        metrics = {
            "train/tokens_per_s": self._tokens / elapsed,
            "train/target_tokens_per_s": self._target_tokens / elapsed,
            "train/memory_gib": memory_gib(pl_module.device),
        }
        pl_module.log_dict(metrics, on_step=True, on_epoch=False, batch_size=1)
        self._tokens = self._target_tokens = self._batches = 0
        self._started = time.perf_counter()


def memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return psutil.Process().memory_info().rss / 2**30


class PredictionSamples(L.Callback):
    """A table of (document, reference, prediction) after every validation."""

    def __init__(self, num_samples: int = 8, max_document_chars: int = 1000):
        self.num_samples = num_samples
        self.max_document_chars = max_document_chars

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        rows = pl_module.last_predictions.get("val", [])[: self.num_samples]
        if not rows:
            return
        table = [[r["document"][: self.max_document_chars], r["reference"], r["prediction"]] for r in rows]
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_table(
                    "val/predictions",
                    columns=["document", "reference", "prediction"],
                    data=table,
                    step=trainer.global_step,
                )
            elif isinstance(logger, TensorBoardLogger):
                text = "\n\n".join(f"**reference:** {r}\n\n**prediction:** {p}" for _, r, p in table)
                logger.experiment.add_text("val/predictions", text, global_step=trainer.global_step)


class CrossAttentionHeatmap(L.Callback):
    """Which source tokens each generated token read: last decoder layer, heads averaged, one validation sample."""

    def __init__(self, max_source_tokens: int = 64, max_target_tokens: int = 32):
        self.max_source_tokens = max_source_tokens
        self.max_target_tokens = max_target_tokens

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking or not trainer.is_global_zero or trainer.datamodule is None:
            return
        if getattr(pl_module, "_generation_sync", dict)():  # sharded weights: rank 0 alone cannot run a forward
            return
        try:
            figure = self.figure(trainer, pl_module)
        except Exception as error:  # noqa: BLE001 - a picture must never stop training
            log.warning("cross-attention heatmap skipped: %s", error)
            return
        if figure is None:
            return
        path = run_folder.figure_path(Path(trainer.default_root_dir), "cross_attention", trainer.global_step)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Glyph .* missing from font")  # rare tokens, e.g. CJK
            figure.savefig(path, dpi=110, bbox_inches="tight")
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image("val/cross_attention", [str(path)], step=trainer.global_step)
            elif isinstance(logger, TensorBoardLogger):
                logger.experiment.add_figure("val/cross_attention", figure, global_step=trainer.global_step)
        import matplotlib.pyplot as plt

        plt.close(figure)

    @torch.no_grad()
    def figure(self, trainer, pl_module):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        datamodule = trainer.datamodule
        row = datamodule.tokenized["validation"][0]
        source = torch.tensor([row["input_ids"][: self.max_source_tokens]], device=pl_module.device)
        mask = torch.ones_like(source)
        model = pl_module.model
        generated = model.generate(input_ids=source, attention_mask=mask, max_new_tokens=self.max_target_tokens)
        previous = model.config._attn_implementation if hasattr(model.config, "_attn_implementation") else None
        try:
            # Attention weights only exist in the eager implementation.
            model.set_attn_implementation("eager")
            outputs = model(input_ids=source, attention_mask=mask, decoder_input_ids=generated, output_attentions=True)
        finally:
            if previous:
                model.set_attn_implementation(previous)
        if not outputs.cross_attentions or outputs.cross_attentions[-1] is None:
            log.info("cross-attention heatmap: this decoder returns no attention weights")
            return None
        weights = outputs.cross_attentions[-1][0].float().mean(0).cpu()  # (target, source)
        source_tokens = datamodule.encoder_tokenizer.convert_ids_to_tokens(source[0].tolist())
        target_tokens = datamodule.decoder_tokenizer.convert_ids_to_tokens(generated[0].tolist())
        # Row i is the attention used to predict token i+1; label rows with the token they produced.
        produced = target_tokens[1:] + ["</end>"]
        figure, axis = plt.subplots(figsize=(max(6, len(source_tokens) * 0.22), max(3, len(produced) * 0.22)))
        image = axis.imshow(weights.numpy(), aspect="auto", cmap="viridis")
        axis.set_xticks(range(len(source_tokens)), source_tokens, rotation=90, fontsize=6)
        axis.set_yticks(range(len(produced)), produced, fontsize=6)
        axis.set_xlabel("source token (encoder)")
        axis.set_ylabel("generated token (decoder)")
        axis.set_title(f"cross-attention, last decoder layer, heads averaged — step {trainer.global_step}")
        figure.colorbar(image, ax=axis, fraction=0.02)
        return figure
