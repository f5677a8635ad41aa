"""last.ckpt: the latest state at every validation, and a hard link (not a second copy) when it is also the best."""

from __future__ import annotations

import os

import lightning as L
import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel

from encdec.lit.checkpoint_io import AtomicCheckpointIO, LinkedLastCheckpoint

# val/score per validation: better, worse, better, equal (not better), worse
SCORES = [1.0, 0.5, 2.0, 2.0, 0.1]


class ScoredModel(BoringModel):
    def __init__(self):
        super().__init__()
        self.validations = 0

    def on_validation_epoch_end(self):
        if not self.trainer.sanity_checking:
            self.log("val/score", SCORES[self.validations])
            self.validations += 1


class Recorder(L.Callback):
    """The checkpoint folder after each validation's saves (Lightning runs ModelCheckpoints after other callbacks, so
    it is read at the next batch or at the end)."""

    def __init__(self, checkpoint: LinkedLastCheckpoint):
        self.checkpoint = checkpoint
        self.records: list[dict] = []
        self.validated = False

    def on_validation_end(self, trainer, *args):
        self.validated = True

    def record(self, trainer):
        if not self.validated:
            return
        self.validated = False
        last = os.path.join(self.checkpoint.dirpath, "last.ckpt")
        best = self.checkpoint.best_model_path
        self.records.append(
            {
                "step": trainer.global_step,
                "last_step": torch.load(last, weights_only=False)["global_step"],
                "linked_to_best": os.stat(last).st_ino == os.stat(best).st_ino,
                "best": os.path.basename(best),
                "files": sorted(os.listdir(self.checkpoint.dirpath)),
            }
        )

    def on_train_batch_start(self, trainer, *args):
        self.record(trainer)

    def on_train_end(self, trainer, *args):
        self.record(trainer)


def fit(tmp_path, val_check_interval, max_steps=10, ckpt_path=None, model=None):
    checkpoint = LinkedLastCheckpoint(
        dirpath=tmp_path / "checkpoints",
        filename="best-step{step}",
        auto_insert_metric_name=False,
        monitor="val/score",
        mode="max",
        save_top_k=1,
        save_last=True,
    )
    recorder = Recorder(checkpoint)
    trainer = L.Trainer(
        max_steps=max_steps,
        limit_train_batches=4 if val_check_interval == 1.0 else 10,
        val_check_interval=val_check_interval,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        callbacks=[recorder, checkpoint],
        plugins=[AtomicCheckpointIO()],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model or ScoredModel(), ckpt_path=ckpt_path)
    return recorder.records


@pytest.mark.parametrize("val_check_interval", [2, 1.0], ids=["mid-epoch", "epoch-end"])
def test_last_is_the_latest_state_and_a_link_when_it_is_the_best(tmp_path, val_check_interval):
    every = 2 if val_check_interval == 2 else 4
    records = fit(tmp_path, val_check_interval, max_steps=5 * every)
    assert [r["step"] for r in records] == [every * (i + 1) for i in range(5)]
    assert [r["last_step"] for r in records] == [r["step"] for r in records]  # latest, not the best step
    assert [r["linked_to_best"] for r in records] == [True, False, True, False, False]
    best_step = every * 3
    assert [r["best"] for r in records][-1] == f"best-step{best_step}.ckpt"
    assert records[-1]["files"] == [f"best-step{best_step}.ckpt", "last.ckpt"]  # no temporary file, no last-v1
    best = torch.load(tmp_path / "checkpoints" / f"best-step{best_step}.ckpt", weights_only=False)
    assert best["global_step"] == best_step  # the best survived last.ckpt being rewritten past it


def test_resume_from_a_linked_last_keeps_one_last(tmp_path):
    # Killed right after the first validation (best = last, one file): resume from last.ckpt.
    first = fit(tmp_path, 2, max_steps=2)
    assert first[-1]["linked_to_best"] and first[-1]["files"] == ["best-step2.ckpt", "last.ckpt"]
    model = ScoredModel()
    model.validations = 1
    records = fit(tmp_path, 2, max_steps=6, ckpt_path=tmp_path / "checkpoints" / "last.ckpt", model=model)
    assert records[-1]["files"] == ["best-step6.ckpt", "last.ckpt"]  # not last-v1.ckpt beside it
    assert records[-1]["linked_to_best"] and records[-1]["last_step"] == 6


def test_last_is_a_copy_where_hard_links_are_refused(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError("hard links not supported")

    monkeypatch.setattr(os, "link", refuse)
    records = fit(tmp_path, 2, max_steps=2)
    assert records[-1]["files"] == ["best-step2.ckpt", "last.ckpt"] and not records[-1]["linked_to_best"]
    assert records[-1]["last_step"] == 2
