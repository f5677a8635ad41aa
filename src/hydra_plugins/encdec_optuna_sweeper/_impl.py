"""How the encdec Optuna sweeper works.

1. The search space is `hydra.sweeper.params` (YAML: `{type: float|int|categorical, ...}` or Hydra's sweep syntax,
   `tag(log, interval(1e-5, 1e-3))`, `choice(4, 8)`, `range(0, 100, 10)`) plus any sweep override on the command line
   (`optimizer.lr=interval(1e-5,1e-3)`); other command-line overrides are passed unchanged to every trial.
2. The study is stored in SQLite, `<sweep dir>/optuna.db` unless `storage` says otherwise, and loaded if it exists.
   A trial left RUNNING by a killed sweep is settled first: COMPLETE if its run folder's metrics.json holds the
   metric (the run finished, the kill came before the study heard of it), else FAIL marked `interrupted` and its
   parameters queued again. COMPLETE, PRUNED and (not interrupted) FAIL trials count against `n_trials`; only the
   rest are run.
3. Each trial is one ordinary Hydra job, launched by the configured launcher (in process, or submitit/SLURM) into
   `<sweep dir>/<trial number>/`. The task's return value is the objective; an exception, a SystemExit, None or NaN
   makes the trial FAIL and the sweep goes on. Ctrl-C marks the running trials interrupted and stops.
4. At the end the best trial is printed and `<sweep dir>/optimization_results.yaml` written.
"""

from __future__ import annotations

import json
import logging
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from encdec.run_folder import METRICS, OPTUNA_RESULTS
from hydra_plugins.encdec_optuna_sweeper._search_space import (
    distribution_from_override,
    distribution_from_spec,
    override_value,
)
from hydra_plugins.encdec_optuna_sweeper._values import _consecutive, _fmt, _objective, _params_text

log = logging.getLogger("encdec.optuna")

DB_FILE = "optuna.db"
SAMPLERS = {
    "tpe": "TPESampler",
    "random": "RandomSampler",
    "cmaes": "CmaEsSampler",
    "gp": "GPSampler",
    "qmc": "QMCSampler",
}


class TrialFailed(Exception):
    """A trial ended by SystemExit (encdec's one-line user errors exit 2), recorded as a failed trial."""


class TrialTask:
    """Wraps Hydra's task function: SystemExit inside a trial becomes an exception (a FAILED job), not the sweep's end.

    Picklable (a module-level class holding the task function), so submitit can ship it to SLURM nodes.
    """

    def __init__(self, task_function: Callable[[DictConfig], Any]) -> None:
        self.task_function = task_function

    def __call__(self, cfg: DictConfig) -> Any:
        try:
            return self.task_function(cfg)
        except SystemExit as exit_:
            raise TrialFailed(f"the run exited with code {exit_.code}") from None


# --------------------------------------------------------------------------------------------------- settings


@dataclass
class SweeperSettings:
    study_name: str = "encdec"
    storage: str | None = None
    direction: str = "maximize"
    n_trials: int = 10
    n_jobs: int = 1
    metric: str | None = None
    metrics_file: str = METRICS
    sampler: dict[str, Any] = field(default_factory=lambda: {"name": "tpe", "seed": None})
    params: dict[str, Any] = field(default_factory=dict)
    enqueue_trials: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_config(cls, settings: dict[str, Any]) -> SweeperSettings:
        plain = {k: _plain(v) for k, v in settings.items()}
        unknown = sorted(set(plain) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(
                f"hydra.sweeper: unknown setting(s) {', '.join(unknown)}; known: {', '.join(cls.__dataclass_fields__)}"
            )
        result = cls(**{k: v for k, v in plain.items() if v is not None or k in ("storage", "metric")})
        if result.direction not in ("maximize", "minimize"):
            raise ValueError(f"hydra.sweeper.direction={result.direction}: use maximize or minimize")
        if int(result.n_trials) < 0 or int(result.n_jobs) < 1:
            raise ValueError("hydra.sweeper.n_trials must be >= 0 and hydra.sweeper.n_jobs >= 1")
        result.n_trials, result.n_jobs = int(result.n_trials), int(result.n_jobs)
        result.sampler = dict(result.sampler or {})
        result.params = dict(result.params or {})
        result.enqueue_trials = [dict(t) for t in (result.enqueue_trials or [])]
        return result


def _plain(value: Any) -> Any:
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


# ------------------------------------------------------------------------------------------------------ sweep


class OptunaSweep:
    def __init__(self, sweeper, settings: SweeperSettings) -> None:
        self.sweeper = sweeper
        self.settings = settings
        self.config: DictConfig = sweeper.config
        self.launcher = sweeper.launcher
        self.sweep_dir = Path(str(self.config.hydra.sweep.dir)).absolute()
        self.metric = settings.metric or self.config.get("optimized_metric") or "objective"

    # -- setup ---------------------------------------------------------------------------------------------

    def _search_space(self, arguments: list[str]):
        from hydra.core.override_parser.overrides_parser import OverridesParser

        parser = OverridesParser.create(config_loader=self.sweeper.hydra_context.config_loader)
        space = {key: distribution_from_spec(key, spec, parser) for key, spec in self.settings.params.items()}
        fixed: list[str] = []

        def searched(key: str) -> list[str]:  # `+key` (add) and `key` name the same config key
            return [k for k in space if k.lstrip("+~") == key.lstrip("+~")]

        for override in parser.parse_overrides(arguments):
            key = override.get_key_element()
            if override.is_sweep_override():
                for old in searched(key):
                    log.info("%s: the command line's search space replaces hydra.sweeper.params", key)
                    del space[old]
                space[key] = distribution_from_override(override)
            else:
                for old in searched(key):  # a value on the command line pins a searched key
                    log.info("%s: fixed by the command line, not searched", key)
                    del space[old]
                fixed.append(override.input_line)
        return space, fixed

    def _sampler(self, offset: int):
        import optuna

        spec = dict(self.settings.sampler)
        name = str(spec.pop("name", "tpe")).lower()
        if name not in SAMPLERS:
            raise ValueError(f"hydra.sweeper.sampler.name={name}: use one of {', '.join(SAMPLERS)}")
        if spec.get("seed") is not None and offset:
            # A resumed study must not replay the first session's random start-up draws.
            spec["seed"] = int(spec["seed"]) + offset
        return getattr(optuna.samplers, SAMPLERS[name])(**spec)

    def _storage(self) -> str:
        return self.settings.storage or f"sqlite:///{self.sweep_dir / DB_FILE}"

    def _open_study(self):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(
            study_name=self.settings.study_name,
            storage=self._storage(),
            sampler=self._sampler(0),
            direction=self.settings.direction,
            load_if_exists=True,
        )
        if study.trials:
            study.sampler = self._sampler(len(study.trials))
        return study

    # -- bookkeeping ---------------------------------------------------------------------------------------

    def _run_dir(self, number: int) -> Path:
        return self.sweep_dir / str(number)

    def _recorded_value(self, run_dir: Path) -> float | None:
        try:
            value = json.loads((run_dir / self.settings.metrics_file).read_text()).get(self.metric)
        except (OSError, ValueError, AttributeError):
            return None
        return _objective(value)[0]

    def _settle_stale_trials(self, study) -> None:
        """Trials a killed sweep left RUNNING: recover finished runs, fail and requeue the others."""
        import optuna
        from optuna.trial import TrialState

        for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            run_dir = Path(frozen.user_attrs.get("run_dir") or self._run_dir(frozen.number))
            trial = optuna.trial.Trial(study, frozen._trial_id)
            value = self._recorded_value(run_dir)
            if value is not None:
                trial.set_user_attr("recovered", True)
                study.tell(frozen.number, value)
                log.info("trial %d: recovered %s=%s from %s", frozen.number, self.metric, _fmt(value), run_dir)
                continue
            trial.set_user_attr("interrupted", True)
            study.tell(frozen.number, state=TrialState.FAIL)
            if frozen.params:
                study.enqueue_trial(frozen.params, user_attrs={"retry_of": frozen.number})
            log.info("trial %d was interrupted: its parameters will run again", frozen.number)

    @staticmethod
    def _counted(study) -> int:
        from optuna.trial import TrialState

        done = 0
        for trial in study.get_trials(deepcopy=False):
            if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
                done += 1
            elif trial.state == TrialState.FAIL and not trial.user_attrs.get("interrupted"):
                done += 1
        return done

    # -- the loop ------------------------------------------------------------------------------------------

    def run(self, arguments: list[str]):
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, self.sweep_dir / "multirun.yaml")
        space, fixed = self._search_space(arguments)
        # A typo in a fixed override fails here, once, instead of failing every trial.
        self.sweeper.validate_batch_is_legal([fixed])

        study = self._open_study()
        fresh = not study.trials
        self._settle_stale_trials(study)
        if fresh:
            study.set_user_attr("fixed_overrides", fixed)
            for params in self.settings.enqueue_trials:
                study.enqueue_trial({k: _plain(v) for k, v in params.items()})
        elif study.user_attrs.get("fixed_overrides") not in (None, fixed):
            log.warning(
                "study %s was started with overrides %s; this run passes %s",
                study.study_name,
                study.user_attrs.get("fixed_overrides"),
                fixed,
            )

        done = self._counted(study)
        remaining = max(0, self.settings.n_trials - done)
        log.info(
            "study %s in %s: %d of %d trials done, %d to run",
            study.study_name,
            self._storage(),
            done,
            self.settings.n_trials,
            remaining,
        )
        returns = []
        while remaining > 0:
            batch = [study.ask(space) for _ in range(min(self.settings.n_jobs, remaining))]
            returns.append(self._run_batch(study, batch, fixed))
            remaining = max(0, self.settings.n_trials - self._counted(study))
        self._finish(study)
        return returns

    def _run_batch(self, study, trials, fixed: list[str]):
        from optuna.trial import TrialState

        overrides = []
        for trial in trials:
            lines = [*fixed, *(f"{key}={override_value(value)}" for key, value in trial.params.items())]
            trial.set_user_attr("overrides", lines)
            overrides.append(lines)
        launchable, results = [], {}
        for trial, lines in zip(trials, overrides):
            try:
                self.sweeper.validate_batch_is_legal([lines])
                launchable.append((trial, lines))
            except Exception as error:  # noqa: BLE001 - a sampled value the config refuses (e.g. an unknown group option)
                results[trial.number] = error
        try:
            for group in _consecutive(launchable):
                first = group[0][0].number
                for (trial, _), ret in zip(group, self.launcher.launch([lines for _, lines in group], first)):
                    results[trial.number] = ret
        except BaseException:
            for trial in trials:
                if trial.number not in results:
                    trial.set_user_attr("interrupted", True)
                    study.tell(trial, state=TrialState.FAIL)
                    study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
            raise
        returns = []
        for trial in trials:
            returns.append(self._record(study, trial, results[trial.number]))
        return returns

    def _record(self, study, trial, result):
        from hydra.core.utils import JobReturn, JobStatus
        from optuna.trial import TrialState

        error = None
        if isinstance(result, JobReturn):
            output_dir = OmegaConf.select(result.hydra_cfg, "hydra.runtime.output_dir") if result.hydra_cfg else None
            trial.set_user_attr("run_dir", str(output_dir or self._run_dir(trial.number)))
            if result.status == JobStatus.COMPLETED:
                value, problem = _objective(result._return_value)
            else:
                error = result._return_value
                value, problem = None, f"{type(error).__name__}: {error}"
        else:
            error = result
            value, problem = None, f"{type(result).__name__}: {result}"
        if value is None:
            trial.set_user_attr("error", " ".join(str(problem).split())[:500])
            study.tell(trial, state=TrialState.FAIL)
            # An unexpected exception (a bug, not encdec's one-line user error) keeps its traceback.
            trace = isinstance(error, BaseException) and not isinstance(error, TrialFailed)
            log.warning(
                "trial %d failed (%s); the sweep goes on",
                trial.number,
                " ".join(str(problem).split())[:300],
                exc_info=error if trace else None,
            )
        else:
            study.tell(trial, value)
            log.info("trial %d: %s=%s  %s", trial.number, self.metric, _fmt(value), _params_text(trial.params))
        return result

    # -- the end -------------------------------------------------------------------------------------------

    def _finish(self, study) -> None:
        from optuna.trial import TrialState

        trials = study.get_trials(deepcopy=False)
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        failed = [t for t in trials if t.state == TrialState.FAIL and not t.user_attrs.get("interrupted")]
        results: dict[str, Any] = {
            "name": "optuna",
            "study_name": study.study_name,
            "storage": self._storage(),
            "direction": self.settings.direction,
            "metric": self.metric,
            "n_trials": self.settings.n_trials,
            "complete": len(complete),
            "failed": len(failed),
            "interrupted": sum(1 for t in trials if t.user_attrs.get("interrupted")),
            "best_trial": None,
            "best_value": None,
            "best_params": {},
            "best_run_dir": None,
            "best_overrides": [],
            "host": socket.gethostname(),
        }
        if complete:
            best = study.best_trial
            results.update(
                best_trial=best.number,
                best_value=float(best.value),
                best_params=dict(best.params),
                best_run_dir=best.user_attrs.get("run_dir", str(self._run_dir(best.number))),
                best_overrides=list(best.user_attrs.get("overrides", [])),
            )
        OmegaConf.save(OmegaConf.create(results), self.sweep_dir / OPTUNA_RESULTS)
        summary = (
            f"study {study.study_name}: {len(complete)} complete, {len(failed)} failed of n_trials="
            f"{self.settings.n_trials}"
        )
        if complete:
            summary += (
                f"\nbest trial {results['best_trial']}: {self.metric}={_fmt(results['best_value'])}  "
                f"{_params_text(results['best_params'])}\nbest run folder: {results['best_run_dir']}"
            )
        summary += f"\nresults: {self.sweep_dir / OPTUNA_RESULTS}"
        print(summary, flush=True)
        if not complete and self.settings.n_trials > 0:
            # A search in which nothing ran to the end is an error for scripts and CI, not a quiet success.
            print(
                f"encdec: error: no trial of study {study.study_name} completed: see the failed trials' messages above",
                file=sys.stderr,
                flush=True,
            )
            raise SystemExit(1)
