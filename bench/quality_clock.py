"""A Lightning callback for bench/quality.py: the training seconds (validation excluded) at every optimizer step.

Added to a train.py run from the command line (`+callbacks.quality_clock._target_=quality_clock.TrainingClock
+callbacks.quality_clock.path=FILE`, with bench/ on PYTHONPATH), so the measured run is the user's recipe unchanged.
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
        self.steps: dict[int, float] = {}
        self._started: float | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._started = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._started is not None:
            self.seconds += time.perf_counter() - self._started
            self.steps[trainer.global_step] = round(self.seconds, 2)
            self._started = None

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            self.path.write_text(json.dumps({"training_seconds_at_step": self.steps}))
