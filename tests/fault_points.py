"""The write points of a run and a fault at one of them: ENCDEC_FAULT_AT=POINT:N:FAULT is read here, and only here.

A run commits every file it writes with a rename (os.replace), the best checkpoint's second name with os.link, and a
sweep's optuna.db with an SQLite commit. `install(point, n, fault)` makes the N-th commit of POINT (1-based)
* `kill-before`: SIGKILL the process just before it (what was written is a temporary file, complete or not),
* `kill-after`: SIGKILL it right after (the file is in place; nothing after it happened),
* `enospc`: fail it with OSError(ENOSPC) and no file name, as a write() on a full disk does.

tests/fault_injection/sitecustomize.py installs it in a subprocess whose PYTHONPATH starts with that folder.
"""

from __future__ import annotations

import errno
import os
import re
import signal
from collections.abc import Callable
from pathlib import Path

# Point -> the name of the file its rename puts in place.
RENAMED = {
    "step": r"step\d+\.ckpt",
    "best": r"best-step\d+\.ckpt",
    "last": r"last\.ckpt",
    "hf_model": r"hf_model",
    "metrics": r"metrics\.json",
    "predictions": r"predictions\.jsonl",
}
LINKED = "link"  # os.link(best-stepN.ckpt, temporary), then renamed to last.ckpt
COMMITTED = "optuna_db"  # an SQLite commit to optuna.db
POINTS = (*RENAMED, LINKED, COMMITTED)
FAULTS = ("kill-before", "kill-after", "enospc")
# In-process runs: what the faulted commit was to put in place, and a digest of what was there before (None: nothing).
faulted: dict = {}


def install(point: str, n: int, fault: str) -> Callable[[], None]:
    """Fault the N-th commit of `point` from now on; returns what undoes it."""
    assert point in POINTS and fault in FAULTS and n >= 1, (point, n, fault)
    calls = 0

    def at_point(commit, *args, **kwargs):
        nonlocal calls
        calls += 1
        if calls != n:
            return commit(*args, **kwargs)
        if fault == "enospc":
            target = Path(args[1] if point != LINKED else args[0])
            faulted.update(target=target, before=digest(target))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        if fault == "kill-before":
            os.kill(os.getpid(), signal.SIGKILL)
        result = commit(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)
        return result

    if point == COMMITTED:
        from sqlalchemy.engine.default import DefaultDialect

        commit = DefaultDialect.do_commit
        DefaultDialect.do_commit = lambda self, connection: at_point(commit, self, connection)
        return lambda: setattr(DefaultDialect, "do_commit", commit)
    real_replace, real_link = os.replace, os.link

    def replace(source, target, *args, **kwargs):
        if point in RENAMED and re.fullmatch(RENAMED[point], Path(target).name):
            return at_point(real_replace, source, target, *args, **kwargs)
        return real_replace(source, target, *args, **kwargs)

    def link(source, target, *args, **kwargs):
        if point == LINKED and re.fullmatch(RENAMED["best"], Path(source).name):
            return at_point(real_link, source, target, *args, **kwargs)
        return real_link(source, target, *args, **kwargs)

    os.replace, os.link = replace, link

    def undo():
        os.replace, os.link = real_replace, real_link

    return undo


def digest(path: Path) -> str | None:
    """The bytes of a file, or of every file in a folder, as one hash; None when nothing is there."""
    import hashlib

    if not path.exists():
        return None
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    hashed = hashlib.sha256()
    for file in files:
        hashed.update(str(file.relative_to(path) if path.is_dir() else "").encode() + file.read_bytes())
    return hashed.hexdigest()


def install_from_environment() -> None:
    spec = os.environ.get("ENCDEC_FAULT_AT")
    if spec:
        point, n, fault = spec.split(":")
        install(point, int(n), fault)


def environment(point: str, n: int, fault: str) -> dict:
    """The environment variables that make a subprocess (python train.py ...) fault at `point`."""
    folder = Path(__file__).resolve().parent
    path = os.pathsep.join([str(folder / "fault_injection"), str(folder), os.environ.get("PYTHONPATH", "")])
    return {"ENCDEC_FAULT_AT": f"{point}:{n}:{fault}", "PYTHONPATH": path.rstrip(os.pathsep)}
