"""examples/: each script runs as a user would run it (here on tiny random models) and its loss falls."""

from __future__ import annotations

import contextlib
import io
import re
import runpy
import sys

import pytest

from conftest import ROOT


@pytest.mark.parametrize("example", ["lightning_trainer.py", "plain_pytorch.py"])
def test_example_runs_and_its_loss_falls(example, monkeypatch):
    monkeypatch.setattr(sys, "argv", [example, "--encoder", "tiny", "--decoder", "tiny", "--steps", "25"])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        runpy.run_path(str(ROOT / "examples" / example), run_name="__main__")
    match = re.search(r"loss: first ([\d.]+) last ([\d.]+) over 25 steps", out.getvalue())
    assert match, out.getvalue()[-2000:]
    first, last = map(float, match.groups())
    assert last < 0.85 * first, (first, last)  # 10.4 -> ~6 measured
    assert "example:" in out.getvalue()
