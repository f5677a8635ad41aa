"""Shared entry-point behaviour for train.py, eval.py and predict.py."""

from __future__ import annotations

import errno
import functools
import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from encdec.arguments import checked_arguments
from encdec.errors import EncdecError, exit_with
from encdec.run_folder import SAVED_CONFIG, check_creatable, check_fresh, remove_fresh_run_dir


def quiet_third_party() -> None:
    # Tokenizer threads fight DataLoader workers for 2 cores; transformers' advice banners are not for our users.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    for name in ("transformers", "datasets", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # Lightning 2.6 on torch 2.13, once per validation/test loop: nothing a user can act on.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")


# The deepest folder on the run folder's path that existed before Hydra made the rest: a run that fails on bad input
# removes what Hydra made below it (outputs/ included, on a first run) and nothing above.
_existing_before_run: Path | None = None
# How the user started this run, for messages that give a command to run next: `python train.py` or `encdec train`.
_invoked_as = "python train.py"


def invoked_as() -> str:
    return _invoked_as


def command_line(argv: list[str], config_name: str, config_dir: Path) -> list[str]:
    """sys.argv for Hydra: `resume=` expanded (train.py), pass-through keys added, any mistake one line and exit 2."""
    global _existing_before_run, _invoked_as
    _invoked_as = argv[0] if argv[0].startswith("encdec ") else f"python {Path(argv[0]).name}"
    expanded = resume_arguments(argv) if config_name == "train" else argv
    resuming, argv = expanded is not argv, expanded
    try:
        args, cfg = checked_arguments(
            argv[1:], config_name, config_dir, check_job=functools.partial(check_sweep_job, command=config_name)
        )
        if cfg is not None and not resuming and cfg.hydra.output_subdir is not None:
            # Hydra writes .hydra/ before the task runs: a folder holding results is refused before that.
            run_dir = Path(cfg.hydra.run.dir).expanduser().absolute()
            check_fresh(run_dir, resumable=config_name == "train")
            _existing_before_run = next((folder for folder in (run_dir, *run_dir.parents) if folder.is_dir()), None)
            check_creatable(run_dir, _existing_before_run)
    except EncdecError as error:
        exit_with(error)
    return [argv[0], *args]


def check_sweep_job(cfg: DictConfig, command: str = "train") -> None:
    """A run's settings, or each of a sweep's, checked before any job runs (Hydra's grid sweeper stops at the first
    job that fails) and before anything loads."""
    from encdec.checks import validate

    validate(cfg, command)


def resume_arguments(argv: list[str]) -> list[str]:
    """`resume=RUN_FOLDER` continues that run in its own folder: Hydra must log there and write no new .hydra/."""
    resume = [arg.split("=", 1)[1] for arg in argv[1:] if arg.startswith("resume=")]
    if not resume or resume[0] in ("", "null"):
        return argv
    run_dir = Path(resume[0]).expanduser().resolve()
    if not (run_dir / SAVED_CONFIG).is_file():
        exit_with(
            EncdecError(f"resume={resume[0]} is not a run folder (no {SAVED_CONFIG}): give outputs/<date>/<time>")
        )
    ignored = [arg for arg in argv[1:] if not arg.startswith(("resume=", "hydra.", "-"))]
    if ignored:
        # The run continues from its own saved config, so another value would be silently dropped: say so instead.
        exit_with(
            EncdecError(
                f"resume={resume[0]} continues the run exactly as it was configured, so {ignored[0]} "
                "would be ignored: drop it, or start a new run to change settings"
            )
        )
    return [*argv, f"hydra.run.dir={run_dir}", "hydra.output_subdir=null"]


def guarded(task: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Run `task`; a user error becomes one line, exit 2, and no half-made run folder."""
    quiet_third_party()
    run_dir = None
    if HydraConfig.initialized() and HydraConfig.get().output_subdir is not None:
        run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        return task(cfg)
    except EncdecError as error:
        failure = error
    except MissingMandatoryValue as error:
        key = getattr(error, "full_key", None) or "a required value"
        failure = EncdecError(f"{key} is required: pass {key}=VALUE on the command line")
    except OmegaConfBaseException as error:
        failure = EncdecError(f"config: {str(error).splitlines()[0]}")
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
        where = f" while writing {error.filename}" if error.filename else ""
        failure = EncdecError(
            f"disk full{where}: free space or point hydra.run.dir at a larger disk; "
            "files already written were left whole"
        )
        run_dir = None  # the run folder stays: what it holds is whole
    if run_dir is not None:  # drop the half-made run folder, and the empty folders Hydra made above it
        remove_fresh_run_dir(run_dir, _existing_before_run)
    exit_with(failure)
