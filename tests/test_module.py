"""Seq2SeqModule under a real lightning.Trainer: when gradients exist (with and without accumulation), and clipping
a fused optimizer under bf16-mixed."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from conftest import compose_config
from encdec.lit.module import Seq2SeqModule
from encdec.models import build_model


def batches(model, count: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        out.append(
            {
                "input_ids": torch.randint(1000, 2000, (2, 12), generator=generator),
                "attention_mask": torch.ones(2, 12, dtype=torch.long),
                "decoder_input_ids": torch.randint(1000, 2000, (2, 5), generator=generator),
                "decoder_attention_mask": torch.ones(2, 5, dtype=torch.long),
                "labels": torch.randint(1000, 2000, (2, 5), generator=generator),
            }
        )
    return out


def fit_only_trainer(**settings) -> L.Trainer:
    """A CPU Trainer that only trains: no logger, checkpoint, progress bar, summary or validation."""
    return L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        **settings,
    )


class GradientsAtBatchStart(L.Callback):
    """Records, before each training_step's forward, whether any parameter still holds a gradient."""

    def __init__(self):
        self.seen: list[bool] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen.append(any(p.grad is not None for p in pl_module.parameters()))


@pytest.mark.parametrize("accumulate", [1, 2])
def test_gradients_are_freed_right_after_each_optimizer_step(accumulate):
    # Lightning itself zeroes them only after the next forward: its activations would sit beside stale gradients.
    torch.manual_seed(0)
    model, _, decoder_tokenizer = build_model(compose_config("encoder=tiny", "decoder=tiny"))
    module = Seq2SeqModule(model, decoder_tokenizer, optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3))
    probe = GradientsAtBatchStart()
    trainer = fit_only_trainer(
        max_steps=3,
        accumulate_grad_batches=accumulate,
        gradient_clip_val=1.0,
        callbacks=[probe],
    )
    before = [p.detach().clone() for p in model.parameters()]
    trainer.fit(module, train_dataloaders=DataLoader(batches(model, 3 * accumulate), batch_size=None))
    assert trainer.global_step == 3
    # Gradients exist at a batch's start only in the middle of an accumulation window.
    assert probe.seen == [i % accumulate != 0 for i in range(3 * accumulate)]
    assert all(p.grad is None for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))  # it did train


class NormsAroundClipping(L.Callback):
    """Gradient norms before clipping (Lightning's hook runs before it) and right after the module's clipping."""

    def __init__(self):
        self.before: list[float] = []
        self.after: list[float] = []
        self.largest_after: list[float] = []

    @staticmethod
    def norm(module) -> float:
        return float(
            torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in module.parameters() if p.grad is not None]))
        )

    def on_train_start(self, trainer, pl_module):
        clip = pl_module.configure_gradient_clipping

        def clip_and_record(*args, **kwargs):
            clip(*args, **kwargs)
            self.after.append(self.norm(pl_module))
            self.largest_after.append(
                max(float(p.grad.abs().max()) for p in pl_module.parameters() if p.grad is not None)
            )

        pl_module.configure_gradient_clipping = clip_and_record

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.before.append(self.norm(pl_module))


@pytest.mark.parametrize("algorithm", ["norm", "value"])
def test_fused_adamw_is_clipped_under_bf16_mixed(algorithm):
    # Lightning's mixed-precision plugin refuses to clip any optimizer that could unscale inside step(); bf16 has no
    # scaler, so Seq2SeqModule clips itself and the fused kernel stays on.
    torch.manual_seed(0)
    model, _, decoder_tokenizer = build_model(compose_config("encoder=tiny", "decoder=tiny"))
    module = Seq2SeqModule(
        model, decoder_tokenizer, optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3, fused=True)
    )
    norms = NormsAroundClipping()
    clip = 0.05
    trainer = fit_only_trainer(
        precision="bf16-mixed",
        max_steps=3,
        gradient_clip_val=clip,
        gradient_clip_algorithm=algorithm,
        callbacks=[norms],
    )
    trainer.fit(module, train_dataloaders=DataLoader(batches(model, 3), batch_size=None))
    assert trainer.global_step == 3 and trainer.optimizers[0].defaults["fused"] is True
    assert len(norms.after) == 3 and min(norms.before) > clip  # every step needed clipping
    if algorithm == "norm":
        assert max(norms.after) == pytest.approx(clip, rel=1e-3)
    else:
        assert max(norms.largest_after) == pytest.approx(clip) and all(a < b for a, b in zip(norms.after, norms.before))


class RatesUsedBySteps(L.Callback):
    """The learning rate each optimizer step ran with (read just before the step)."""

    def __init__(self):
        self.rates: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.rates.append(optimizer.param_groups[0]["lr"])


@pytest.mark.parametrize("scheduler", ["linear_warmup", "constant", "inverse_sqrt"])
def test_the_scheduler_steps_every_optimizer_step(scheduler):
    # The schedules warm up over 10 steps: step n (0-based) runs at lr * n / 10. A scheduler stepped per epoch, or
    # never, would leave every step of this one-epoch run at 0.
    from encdec.train import _optimizer, _scheduler

    torch.manual_seed(0)
    cfg = compose_config("encoder=tiny", "decoder=tiny", f"scheduler={scheduler}", "optimizer.lr=1e-3")
    model, _, decoder_tokenizer = build_model(cfg)
    module = Seq2SeqModule(model, decoder_tokenizer, optimizer=_optimizer(cfg), scheduler=_scheduler(cfg))
    rates = RatesUsedBySteps()
    trainer = fit_only_trainer(
        max_steps=3,
        max_epochs=1,
        callbacks=[rates],
    )
    trainer.fit(module, train_dataloaders=DataLoader(batches(model, 3), batch_size=None))
    assert cfg.scheduler.num_warmup_steps == 10 and trainer.global_step == 3
    assert rates.rates == pytest.approx([0.0, 1e-4, 2e-4], rel=1e-9, abs=1e-15)
