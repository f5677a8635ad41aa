"""A Lightning callback for bench/quality.py: at every validation, the optimizer steps taken, the training seconds
spent so far (validation excluded), and the validation ROUGE-2 and loss.

Added to a train.py run from the command line (`+callbacks.quality_clock._target_=quality_clock.TrainingClock
+callbacks.quality_clock.path=FILE`, with bench/ on PYTHONPATH), so the measured run is the user's recipe unchanged.
The step is the trainer's own count, not the logger's row (Lightning logs a validation at the step before or at
the step it follows, depending on where in the epoch it falls).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import lightning as L


class TrainingClock(L.Callback):
    def __init__(self, path: str):
        self.path = Path(path)
        self.seconds = 0.0
        self.curve: dict[int, dict] = {}
        self._started: float | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._started = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._started is not None:
            self.seconds += time.perf_counter() - self._started
            self._started = None

    def on_validation_end(self, trainer, pl_module) -> None:
        metrics = trainer.callback_metrics
        if trainer.sanity_checking or "val/rouge2" not in metrics or not trainer.is_global_zero:
            return
        # train.py validates once more after fit: the same step, and here the same weights (no checkpoint is kept).
        self.curve[trainer.global_step] = {
            "step": trainer.global_step,
            "seconds": round(self.seconds, 2),
            "rouge2": float(metrics["val/rouge2"]),
            "loss": float(metrics["val/loss"]),
        }
        self.path.write_text(json.dumps({"curve": list(self.curve.values())}))
