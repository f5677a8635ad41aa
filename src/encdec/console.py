"""The installed command: `encdec train|eval|predict|export|report ARGS`, the root scripts from any folder.

Each subcommand takes exactly what its root script takes (`encdec train encoder=tiny` is `python train.py
encoder=tiny` in a checkout), runs in the current folder (runs land in ./outputs/), and reads the configs shipped
inside the package: a wheel carries conf/ as encdec/conf/ (setup.py copies it at build time), while an editable
install or a checkout on PYTHONPATH reads the checkout's conf/ itself. `--config-dir DIR` adds the user's own groups.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import io
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from encdec.errors import EncdecError, exit_with

# command -> (module, function, what it does); each is the task of the root script of the same name.
COMMANDS = {
    "train": ("encdec.train", "run", "fine-tune an encoder paired with a decoder into a summarizer"),
    "eval": ("encdec.evaluate", "evaluate", "ROUGE of a trained model on a data split"),
    "predict": ("encdec.evaluate", "predict", "summarize documents, one a line (input=FILE or input=-)"),
    "export": ("encdec.export", "export", "export a trained model (hf, gguf, onnx; push_to_hub=ORG/NAME)"),
    "report": ("encdec.report", "main", "compare runs: report.md and a plot of validation ROUGE-2"),
}


def config_dir() -> Path:
    """encdec's config folder: the wheel's copy inside the package, else the checkout's conf/."""
    package = Path(__file__).resolve().parent
    for folder in (package / "conf", package.parents[1] / "conf"):
        if (folder / "train.yaml").is_file():
            return folder
    raise EncdecError(
        f"encdec's configs are missing: neither {package / 'conf'} nor {package.parents[1] / 'conf'} "
        "holds train.yaml; reinstall encdec (pip install encdec, or pip install . in a checkout)"
    )


def main(argv: Sequence[str] | None = None) -> int | None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    command, args = argv[0], argv[1:]
    if command not in COMMANDS:
        close = difflib.get_close_matches(command, COMMANDS, n=1)
        hint = f" (did you mean encdec {close[0]}?)" if close else ""
        exit_with(EncdecError(f"{command} is not an encdec command{hint}; choose from {', '.join(COMMANDS)}"))
    if command == "report":
        # Plain argparse, no Hydra: report reads run folders, not configs.
        from encdec.report import main as report

        return report(args, prog="encdec report")
    try:
        conf = config_dir()
    except EncdecError as error:
        exit_with(error)
    _run_hydra_app(command, args, conf)
    return 0


def _run_hydra_app(command: str, args: list[str], conf: Path) -> None:
    """What `python <command>.py args` does in a checkout: check the command line, then run the Hydra app."""
    import hydra
    from omegaconf import DictConfig

    from encdec.cli import command_line, guarded

    module, function, _ = COMMANDS[command]
    task = getattr(importlib.import_module(module), function)

    def task_function(cfg: DictConfig):
        return guarded(task, cfg)

    # Hydra names the job after the task's module (`<command>.log` in the run folder, hydra.job.name), as it names a
    # root script's after its file.
    task_function.__module__ = f"encdec.{command}"
    app = hydra.main(version_base="1.3", config_path=str(conf), config_name=command)(task_function)
    sys.argv = command_line([f"encdec {command}", *args], command, conf)
    if not any(arg in ("--help", "-h") for arg in sys.argv[1:]):
        app()
        return
    # The help texts are written for the root scripts: say `encdec train` where they say `python train.py`.
    text = io.StringIO()
    try:
        with contextlib.redirect_stdout(text):
            app()
    finally:
        print(
            re.sub(r"(?:python |encdec )?\b(train|eval|predict|export|report)\.py\b", r"encdec \1", text.getvalue()),
            end="",
        )


def usage() -> str:
    lines = [
        "encdec: warm-start encoder-decoder summarizers on Lightning + Hydra.",
        "",
        "Usage: encdec COMMAND [GROUP=OPTION ...] [KEY=VALUE ...] [--config-dir MYCONF]",
        "",
        "Commands (encdec COMMAND --help shows each one's settings and examples):",
    ]
    lines += [f"  {name:<9}{what}" for name, (_, _, what) in COMMANDS.items()]
    lines += [
        "",
        "  encdec train encoder=tiny decoder=tiny trainer.max_steps=3    a smoke run: outputs/<date>/<time>/ here",
        "  encdec train --config-dir myconf data=mydata                 your own groups beside the packaged ones",
        "  encdec eval model_path=outputs/DATE/TIME",
        "",
    ]
    try:
        conf = config_dir()
    except EncdecError as error:
        return "\n".join([*lines, f"(no configs: {error})"])
    lines.append(f"Groups of encdec train (GROUP=OPTION; configs in {conf}):")
    for group in sorted(folder for folder in conf.iterdir() if folder.is_dir() and folder.name != "hydra"):
        options = sorted(path.stem for path in group.glob("*.yaml"))
        lines.append(f"  {group.name:<15}{', '.join(options)}")
    return "\n".join(lines)
