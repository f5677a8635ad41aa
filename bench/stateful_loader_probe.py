"""Does torchdata's StatefulDataLoader, saved and restored by Lightning with the fit loop, resume training exactly?

encdec's contract for `resume=`: after a kill, the resumed run trains on exactly the batches the uninterrupted run
would have trained on, in the same order (mid-epoch too), with an order that is a function of (seed, epoch), sharded
across ranks. This probe trains a one-layer model on 48 indexed rows, batch 4, 3 epochs, checkpointing every 5 steps;
a second run is killed at step 17 and resumed from the step-15 checkpoint. It prints the batches each run trained on
after step 15 and whether they match, for:

* torchdata StatefulDataLoader(shuffle=True) — Lightning >= 2.3 saves its state_dict in the checkpoint's loops
* torchdata StatefulDataLoader with encdec's ResumableBatchSampler as batch_sampler (its state_dict is used)
* a plain DataLoader with encdec's ResumableBatchSampler and encdec's own resume (`resume_at` from the fit loop's
  progress, as `encdec.resume` does)

    PYTHONPATH=/path/to/torchdata python bench/stateful_loader_probe.py
"""

from __future__ import annotations

import sys
import tempfile
import warnings
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from encdec.data.sampling import FixedSize, ResumableBatchSampler

warnings.filterwarnings("ignore")
ROWS, BATCH, EPOCHS, EVERY, KILL_AT = 48, 4, 3, 5, 17


class Rows(torch.utils.data.Dataset):
    def __len__(self):
        return ROWS

    def __getitem__(self, i):
        return {"index": i, "x": torch.full((2,), float(i))}


class Model(L.LightningModule):
    def __init__(self, kill_at=None, own_resume=False):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.seen: list[tuple[int, list[int]]] = []
        self.kill_at, self.own_resume = kill_at, own_resume

    def training_step(self, batch, batch_idx):
        if self.kill_at is not None and self.global_step == self.kill_at:
            raise KeyboardInterrupt
        self.seen.append((self.global_step, batch["index"].tolist()))
        return self.layer(batch["x"]).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def on_load_checkpoint(self, checkpoint):
        if not self.own_resume:
            return
        progress = checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]
        done = progress["current"]["processed"]
        position = (checkpoint["epoch"] + 1, 0) if progress["is_last_batch"] else (checkpoint["epoch"], done)
        self.trainer.train_dataloader_sampler.resume_at(*position)


def loader(kind: str):
    if kind == "stateful-shuffle":
        from torchdata.stateful_dataloader import StatefulDataLoader

        return StatefulDataLoader(Rows(), batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(0))
    sampler = ResumableBatchSampler(FixedSize(ROWS, BATCH), seed=0)
    if kind == "stateful-encdec-sampler":
        from torchdata.stateful_dataloader import StatefulDataLoader

        return StatefulDataLoader(Rows(), batch_sampler=sampler), sampler
    return DataLoader(Rows(), batch_sampler=sampler), sampler


def run(kind: str, folder: Path, kill_at=None, resume_from=None) -> list[tuple[int, list[int]]]:
    made = loader(kind)
    data, sampler = made if isinstance(made, tuple) else (made, None)
    model = Model(kill_at, own_resume=kind == "encdec")
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=folder, every_n_train_steps=EVERY, save_top_k=-1, filename="step{step}", auto_insert_metric_name=False
    )
    trainer = L.Trainer(
        max_epochs=EPOCHS,
        callbacks=[checkpoint],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
    )
    trainer.train_dataloader_sampler = sampler
    try:
        trainer.fit(model, train_dataloaders=data, ckpt_path=resume_from)
    except SystemExit:
        pass
    return model.seen


def main() -> int:
    for kind in ("stateful-shuffle", "stateful-encdec-sampler", "encdec"):
        with tempfile.TemporaryDirectory() as tmp:
            whole = run(kind, Path(tmp) / "whole")
            run(kind, Path(tmp) / "killed", kill_at=KILL_AT)
            resumed = run(kind, Path(tmp) / "resumed", resume_from=str(Path(tmp) / "killed" / "step15.ckpt"))
        expected = [batch for step, batch in whole if step >= 15]
        got = [batch for _, batch in resumed]
        same = got == expected
        first_diff = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), None)
        print(
            f"{kind:26s} resumed == uninterrupted: {same}  (batches {len(got)} vs {len(expected)}; first difference "
            f"at resumed batch {first_diff}; resumed starts {got[:2]}, expected {expected[:2]})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
