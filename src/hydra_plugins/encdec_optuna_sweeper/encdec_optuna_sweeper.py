"""The Hydra plugin class. Hydra's plugin scan imports this module for every app, so it imports nothing heavy."""

from __future__ import annotations

from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class EncdecOptunaSweeper(Sweeper):
    """Runs `n_trials` jobs whose overrides Optuna samples from `params`; the study lives in `<sweep dir>/optuna.db`.

    All keyword arguments come from `hydra.sweeper` (conf/hydra/sweeper/encdec_optuna.yaml documents each one).
    """

    def __init__(self, **settings: Any) -> None:
        from hydra_plugins.encdec_optuna_sweeper._impl import SweeperSettings

        self.settings = SweeperSettings.from_config(settings)
        self.hydra_context: HydraContext | None = None
        self.config: DictConfig | None = None
        self.launcher = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        from hydra_plugins.encdec_optuna_sweeper._impl import TrialTask

        self.hydra_context = hydra_context
        self.config = config
        # TrialTask turns a trial's SystemExit (encdec exits 2 on a user error) into an ordinary failure, so Hydra's
        # launcher records it as a FAILED job and the sweep goes on.
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=TrialTask(task_function), config=config
        )

    def sweep(self, arguments: list[str]) -> Any:
        from hydra_plugins.encdec_optuna_sweeper._impl import OptunaSweep

        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        return OptunaSweep(self, self.settings).run(arguments)
