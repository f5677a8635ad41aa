"""The LightningModule: teacher-forced loss for training, generation + ROUGE for validation and test.

It trains on encdec's own batches (SummarizationDataModule) and on ordinary ones from the user's DataLoader or
transformers' DataCollatorForSeq2Seq: `input_ids`, `attention_mask`, `labels` (-100 where ignored), optionally
`decoder_input_ids` / `decoder_attention_mask`.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.plugins.precision import MixedPrecision
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy
from lightning.pytorch.trainer.states import TrainerFn
from transformers import EncoderDecoderModel, PreTrainedTokenizerBase
from transformers.models.encoder_decoder.modeling_encoder_decoder import shift_tokens_right

from encdec import pairings
from encdec.data.tokenize import IGNORE_INDEX
from encdec.errors import EncdecError
from encdec.fused_loss import chunked_cross_entropy, hidden_states_out, lm_head, summed_cross_entropy
from encdec.inference import generate_texts
from encdec.lit import fsdp2, lightning_private, resume, xla
from encdec.lit.compiled import compile_forward, mark_rows_dynamic
from encdec.metrics import rouge
from encdec.models import attention_kernels


class Seq2SeqModule(L.LightningModule):
    def __init__(
        self,
        model: EncoderDecoderModel,
        decoder_tokenizer: PreTrainedTokenizerBase,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
        new_params_lr: float | None = None,
        generate_in_validation: bool = True,
        run_config: dict | None = None,
        compile: bool = False,
        cudnn_attention: bool = False,
        fused_loss: bool = False,
        loss_chunk_tokens: int = 4096,
        compile_backend: str | Callable = "inductor",
        eval_loss_rows: int | None = None,
    ):
        super().__init__()
        self.model = model
        # Only the teacher-forced forward is compiled (fixed call pattern, one graph per width bucket: lit/compiled.py);
        # generation stays eager. Compiling the bound method leaves the module, its parameter names and checkpoints
        # untouched.
        self._compiled_forward = compile_forward(model.forward, compile_backend) if compile else None
        # The loss from chunks of logits, never all of them (encdec.fused_loss); checked here, not at the first step.
        if fused_loss:
            lm_head(model)
        self.fused_loss = fused_loss
        self.loss_chunk_tokens = loss_chunk_tokens
        # Validation/test loss: rows per forward (train.py: data.batch_size); None: the whole evaluation batch.
        self.eval_loss_rows = eval_loss_rows
        self.cudnn_attention = cudnn_attention
        self.decoder_tokenizer = decoder_tokenizer
        # Without one, the optimizer=adamw preset's (lr 1e-4): a user's own Lightning script needs to pass nothing.
        self.optimizer_factory = optimizer or functools.partial(torch.optim.AdamW, lr=1e-4)
        self.scheduler_factory = scheduler
        # Parameters no checkpoint provided (cross-attention, gates, a missing LM head) may learn at their own rate.
        self.new_params_lr = new_params_lr
        self.generate_in_validation = generate_in_validation
        self.run_config = run_config
        # Validation metrics before any training, kept in checkpoints so a resumed run still reports them.
        self.initial_metrics: dict[str, float] = {}
        # Wall-clock seconds the run has worked, summed over its resumed parts (metrics.json's time/seconds).
        self.seconds_before_resume = 0.0
        self._clock_started = time.time()
        # Seconds inside training steps (each batch's start to its end, validation excluded), over resumed parts too.
        self.train_seconds = 0.0
        self._step_started: float | None = None
        self._outputs: dict[str, list[tuple[int, str]]] = {"val": [], "test": []}
        # Ordinary batches carry their references (texts, or labels to decode) instead of an index into datamodule.raw.
        self._rows: dict[str, list[dict[str, str]]] = {"val": [], "test": []}
        # stage -> [{"document", "reference", "prediction"}], in data order, for predictions.jsonl and loggers
        self.last_predictions: dict[str, list[dict[str, str]]] = {}

    def seconds_worked(self) -> float:
        """Since this process built the module, plus what the checkpoint it resumed from had worked (the time a
        killed run spent past its last checkpoint is not in it: that work is done again)."""
        return self.seconds_before_resume + time.time() - self._clock_started

    def on_fit_start(self) -> None:
        """A pairing kind that learns from the training texts first (a projector) does so here, when a fresh fit runs on
        encdec's datamodule and nothing prepared it yet (train.py prepares it before its first validation)."""
        data = getattr(self.trainer, "datamodule", None)
        if self.trainer.ckpt_path is None and getattr(data, "raw", None) and "train" in data.raw:
            prepared = pairings.prepare(
                self.model, data.encoder_tokenizer, data.decoder_tokenizer, data.raw["train"], data.data
            )
            if prepared and self.trainer.is_global_zero:
                print(prepared, flush=True)

    def configure_model(self) -> None:
        """trainer=fsdp2: the model sharded by FSDP2 (encdec.lit.fsdp2); nothing under other strategies."""
        fsdp2.shard(self)

    def setup(self, stage: str) -> None:
        """ZeRO stage 3 across train.py's validate, fit, validate, test: each call wraps this module in a new DeepSpeed
        engine, but the previous engine's parameter hooks stay on every submodule (Lightning strips them before an
        inference engine only), and its teardown moved the buffers to the CPU, where a new engine leaves them once the
        weights are already partitioned. Two engines' hooks break the first training forward ("IndexError: pop from an
        empty deque"); CPU buffers (BERT's position ids) break the first embedding lookup."""
        xla.keep_tied_parameters(self)  # trainer=tpu: what each call's move to the CPU untied (encdec.lit.xla)
        strategy = self.trainer.strategy
        if self.fused_loss and self._shards_weights():
            # The chunks read the LM head's weight outside its forward, where a sharded strategy holds only a shard.
            raise EncdecError("model.fused_loss=true needs the LM head's whole weight: not under FSDP or ZeRO stage 3")
        if not getattr(strategy, "zero_stage_3", False):
            return
        lightning_private.remove_deepspeed_hooks(self)
        for submodule in self.modules():
            for name, buffer in submodule.named_buffers(recurse=False):
                setattr(submodule, name, buffer.to(strategy.root_device))

    def teardown(self, stage: str) -> None:
        xla.keep_tied_parameters(self)

    def on_train_batch_start(self, batch, batch_idx) -> None:
        self._step_started = time.perf_counter()

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if self._step_started is not None:
            self.train_seconds += time.perf_counter() - self._step_started
            self._step_started = None

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean cross-entropy over the labelled target tokens; without gradients, `evaluation_loss`."""
        if not torch.is_grad_enabled():
            return self.evaluation_loss(batch)
        # The loss is ours, not EncoderDecoderModel's: its labels path rebuilds decoder masks from pad ids.
        inputs = self._model_inputs(batch)
        head = lm_head(self.model) if self.fused_loss else None
        logits = self._forward(inputs, head)
        if head is not None:  # `logits` are the hidden states the LM head reads
            return chunked_cross_entropy(logits, head, batch["labels"], self.loss_chunk_tokens)
        return F.cross_entropy(logits.float().flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE_INDEX)

    @torch.no_grad()
    def evaluation_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The training loss's value, within float rounding, in bounded memory. Validation and test batches are cut
        for generation (up to data.eval_max_tokens_per_batch tokens: all 50 aclsum validation papers in one), and the
        plain loss over one of them would hold rows x target x vocabulary logits and their log-softmax (1.9 GB for
        SmolLM2's 49k vocabulary) besides every row's activations. Here the rows go through in slices of
        `eval_loss_rows` and each slice's logits in chunks of `loss_chunk_tokens` labelled tokens (where the LM head
        allows it: encdec.fused_loss); the sums over slices and chunks, divided by the labelled tokens, are the mean.
        Under sharded weights (FSDP, ZeRO stage 3) every rank must run the same forwards, and XLA wants one static
        shape: one forward of the whole batch there, as training computes it."""
        labels = batch["labels"]
        if self._shards_weights() or labels.device.type == "xla":
            return F.cross_entropy(
                self._forward(self._model_inputs(batch), None).float().flatten(0, 1),
                labels.flatten(),
                ignore_index=IGNORE_INDEX,
            )
        head = self._chunkable_head()
        rows = labels.shape[0]
        step = self.eval_loss_rows or rows
        total = torch.zeros((), dtype=torch.float32, device=labels.device)
        for start in range(0, rows, step):
            part = {k: v[start : start + step] for k, v in batch.items() if _per_row(v, rows)}
            outputs = self._forward(self._model_inputs(part), head)
            if head is not None:
                total += summed_cross_entropy(outputs, head, part["labels"], self.loss_chunk_tokens)
            else:
                total += F.cross_entropy(
                    outputs.float().flatten(0, 1), part["labels"].flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
                )
        return total / (labels != IGNORE_INDEX).sum()

    def _chunkable_head(self) -> torch.nn.Linear | None:
        """The LM head whose logits can be made chunk by chunk, or None (a head that changes its logits after it)."""
        try:
            return lm_head(self.model)
        except EncdecError:
            return None

    def _shards_weights(self) -> bool:
        """Each rank holds only shards of the weights (FSDP, FSDP2, DeepSpeed stage 3)."""
        if self._trainer is None:
            return False
        strategy = self.trainer.strategy
        return isinstance(strategy, (FSDPStrategy, ModelParallelStrategy)) or bool(
            getattr(strategy, "zero_stage_3", False)
        )

    def _forward(self, inputs: dict[str, torch.Tensor | None], head: torch.nn.Linear | None) -> torch.Tensor:
        """The model's logits, or with `head` the hidden states that head reads."""
        with attention_kernels(self.cudnn_attention), hidden_states_out(head) if head else contextlib.nullcontext():
            if self._compiled_forward is None:
                return self.model(**inputs, use_cache=False).logits
            return self._compiled_forward(**mark_rows_dynamic(inputs), use_cache=False).logits

    def _model_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor | None]:
        decoder_input_ids, decoder_attention_mask = self._decoder_inputs(batch)
        return {
            "input_ids": batch["input_ids"],
            "attention_mask": batch.get("attention_mask"),
            "decoder_input_ids": decoder_input_ids,
            "decoder_attention_mask": decoder_attention_mask,
        }

    def _decoder_inputs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The batch's decoder inputs, or, as EncoderDecoderModel does with labels alone, the labels shifted right
        behind the start token (-100 read as pad). No mask then: causal attention keeps each kept position's view
        the same, and the padded positions after a summary's end are ignored by the loss."""
        if batch.get("decoder_input_ids") is not None:
            return batch["decoder_input_ids"], batch.get("decoder_attention_mask")
        config = self.model.config
        if config.decoder_start_token_id is None or config.pad_token_id is None:
            raise EncdecError(
                "the batch has labels but no decoder_input_ids, and model.config has no "
                "decoder_start_token_id/pad_token_id to shift them with: build the model with "
                "encdec.build_model, or put decoder_input_ids in the batch"
            )
        return shift_tokens_right(batch["labels"], config.pad_token_id, config.decoder_start_token_id), None

    def training_step(self, batch, batch_idx):
        loss = self.loss(batch)
        # Not on XLA: reading the loss on the host every step would end each step's lazy graph there (trainer=tpu).
        if loss.device.type != "xla" and not torch.isfinite(loss):
            # Stop before the optimizer spreads NaN into the weights; checkpoints on disk are from good steps.
            raise EncdecError(
                f"training loss became {loss.item()} at step {self.global_step}: lower optimizer.lr, keep "
                "trainer.gradient_clip_val, or use precision 32-true; the last good checkpoint is kept in checkpoints/"
            )
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def _eval_step(self, batch, stage: str) -> None:
        size = batch["input_ids"].shape[0]
        self.log(f"{stage}/loss", self.loss(batch), prog_bar=True, batch_size=size, sync_dist=True)
        if stage == "val" and not self.generate_in_validation:
            return
        if "index" in batch and self._raw_splits() is not None:
            predictions = self.generate(batch["input_ids"], batch.get("attention_mask"), **self._generation_sync())
            self._outputs[stage].extend(zip(batch["index"].tolist(), predictions))
            return
        references = self._references(batch)
        if references is None:
            return  # nothing to score against: the loss is all this batch reports
        predictions = self.generate(batch["input_ids"], batch.get("attention_mask"), **self._generation_sync())
        documents = batch.get("document") or [""] * len(predictions)
        self._rows[stage].extend(
            {"document": document, "reference": reference, "prediction": prediction}
            for document, reference, prediction in zip(documents, references, predictions)
        )

    def _raw_splits(self) -> dict | None:
        """encdec's SummarizationDataModule keeps the untruncated texts that its batches' `index` points into."""
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        return getattr(datamodule, "raw", None) or None

    def _references(self, batch) -> list[str] | None:
        """An ordinary batch's reference summaries: its `summary` texts, else its labels decoded."""
        texts = batch.get("summary")
        if isinstance(texts, (list, tuple)) and all(isinstance(text, str) for text in texts):
            return list(texts)
        labels = batch.get("labels")
        if labels is None or self.decoder_tokenizer is None or self.decoder_tokenizer.pad_token_id is None:
            return None
        labels = labels.masked_fill(labels == IGNORE_INDEX, self.decoder_tokenizer.pad_token_id)
        texts = self.decoder_tokenizer.batch_decode(labels, skip_special_tokens=True, clean_up_tokenization_spaces=True)
        return [text.strip() for text in texts]

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, "test")

    def on_validation_epoch_end(self):
        self._log_rouge("val")

    def on_test_epoch_end(self):
        self._log_rouge("test")

    def _log_rouge(self, stage: str) -> None:
        outputs, rows = self._outputs[stage], self._rows[stage]
        self._outputs[stage], self._rows[stage] = [], []
        if stage == "val" and not self.generate_in_validation:
            return
        if self._trainer is not None and self.trainer.world_size > 1:
            # Each rank generated its own share of the rows (EvalBatchSampler); all of them join this gather.
            gathered: list = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(gathered, (outputs, rows))
            outputs = sorted({item[0]: item for part in gathered for item in part[0]}.values())
            rows = [row for part in gathered for row in part[1]]
        else:
            outputs = sorted(outputs)
        if outputs:
            # References are the untruncated summaries, as in published ROUGE numbers.
            raw = self._raw_splits()["validation" if stage == "val" else "test"]
            rows = [
                {"document": raw[i]["document"], "reference": raw[i]["summary"], "prediction": prediction}
                for i, prediction in outputs
            ]
        if not rows:
            return
        self.last_predictions[stage] = rows
        scores = rouge([r["prediction"] for r in rows], [r["reference"] for r in rows])
        for name, value in scores.items():
            # Every rank holds the gathered outputs, so the values agree; sync_dist only tells Lightning so (one
            # all-reduce of equal numbers per epoch instead of a warning per metric on every multi-GPU run).
            self.log(f"{stage}/{name}", value, prog_bar=name == "rouge2", sync_dist=True)

    def _generation_sync(self) -> dict:
        """Under sharded weights (FSDP, DeepSpeed stage 3) every forward gathers parameters from all ranks, so a rank
        whose batch is done must keep stepping until every rank's is (transformers' synced_gpus)."""
        return {"synced_gpus": True} if self._shards_weights() and self.trainer.world_size > 1 else {}

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **overrides) -> list[str]:
        return generate_texts(
            self.model,
            self.decoder_tokenizer,
            input_ids,
            attention_mask,
            cudnn_attention=self.cudnn_attention,
            **overrides,
        )

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Enough to rebuild the model from the checkpoint alone (eval.py on a .ckpt), without its pretrained sources.
        checkpoint["encdec"] = {
            "config": self.run_config,
            "model_config": self.model.config.to_dict(),
            "initial_metrics": self.initial_metrics,
            "seconds": self.seconds_worked(),
            "train_seconds": self.train_seconds,
        }
        resume.save_state(checkpoint, self._trainer)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint.get("encdec", {})
        resume.restore_state(checkpoint, self._trainer)
        self.initial_metrics = saved.get("initial_metrics", self.initial_metrics)
        if self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING:
            # A resume (not validate/test loading the best checkpoint): count what the killed run had worked.
            self.seconds_before_resume = saved.get("seconds", 0.0)
            self.train_seconds = saved.get("train_seconds", 0.0)

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        if not isinstance(self.trainer.strategy, DeepSpeedStrategy):  # DeepSpeed's engine clears its own
            # Lightning zeroes gradients inside the next step's closure, after that step's forward, so the forward's
            # activations would share memory with a full set of stale gradients; free them now (as HF's Trainer does).
            optimizer.zero_grad(set_to_none=True)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        if (
            gradient_clip_val
            and gradient_clip_algorithm in (None, "norm")
            and isinstance(self.trainer.strategy, FSDPStrategy)
        ):
            # Lightning's FSDP precision plugin clips by value only (Lightning issue #19235); the norm over all
            # shards is FSDP's own method on the wrapped module.
            self.trainer.model.clip_grad_norm_(gradient_clip_val)
            return
        plugin = self.trainer.precision_plugin
        if gradient_clip_val and isinstance(plugin, MixedPrecision) and plugin.scaler is None:
            # bf16-mixed scales nothing, so a fused optimizer's gradients are final here; Lightning's plugin refuses
            # any optimizer that could unscale inside step(), scaler or not.
            clip = plugin.clip_grad_by_value if gradient_clip_algorithm == "value" else plugin.clip_grad_by_norm
            clip(optimizer, gradient_clip_val)
            return
        self.clip_gradients(
            optimizer, gradient_clip_val=gradient_clip_val, gradient_clip_algorithm=gradient_clip_algorithm
        )

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        new = [p for p in params if getattr(p, "encdec_new", False)]
        if self.new_params_lr and new:
            pretrained = [p for p in params if not getattr(p, "encdec_new", False)]
            # Named groups: LearningRateMonitor logs each rate under its name (lr-AdamW/new).
            params = [
                {"params": pretrained, "name": "pretrained"},
                {"params": new, "lr": self.new_params_lr, "name": "new"},
            ]
            params = [group for group in params if group["params"]]
        optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer, num_training_steps=int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def _per_row(value, rows: int) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == rows
