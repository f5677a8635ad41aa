from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

if os.environ.get("PYTEST_XDIST_WORKER"):
    # One worker per core: each worker and the scripts it starts keep to one thread, or they fight over the cores.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)

# Small enough that a whole train.py run takes seconds on 2 CPU cores.
SMOKE = (
    "trainer.max_steps=2",
    "trainer.max_epochs=1",
    "trainer.log_every_n_steps=1",
    "data.max_train_samples=4",
    "data.max_eval_samples=2",
    "data.max_test_samples=2",
    "data.batch_size=2",
    "data.lead_copy_sentences=0",
    "data.max_source_length=32",
    "data.max_target_length=8",
    "logger=none",
)


def compose_config(*overrides: str, config_name: str = "train"):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose(config_name, overrides=list(overrides))


def script_environment(env: dict | None = None) -> dict:
    """The environment the scripts run in under test: offline, no tokenizer threads, plus `env`."""
    return {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", **(env or {})}


def run_script(script: str, *args: str, stdin: str | None = None, timeout: int = 600, env: dict | None = None):
    environment = script_environment(env)
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args],
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environment,
    )


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("encdec: error:")]


def assert_sane_metrics(metrics: dict, keys: tuple[str, ...]) -> None:
    """`keys` are there as floats, and every number is one a real run can produce: finite, ROUGE (any key naming
    rouge, baselines included) in [0, 100], a loss above 0 (a cross-entropy over a vocabulary of thousands)."""
    for key in keys:
        assert isinstance(metrics.get(key), float), (key, metrics.get(key))
    numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    assert all(math.isfinite(v) for v in numbers.values()), numbers
    rouge = {k: v for k, v in numbers.items() if "rouge" in k}
    losses = {k: v for k, v in numbers.items() if k.split("/")[-1] == "loss"}
    assert rouge and all(0 <= v <= 100 for v in rouge.values()), rouge
    assert losses and all(v > 0 for v in losses.values()), losses


GENERATE_SETTINGS = ("num_beams", "max_new_tokens", "max_length")


def spy_on_generate(monkeypatch) -> list[dict]:
    """The decoding settings each `EncoderDecoderModel.generate` call of this process runs with (its arguments over
    the model's generation config), in call order."""
    from transformers import EncoderDecoderModel

    calls: list[dict] = []
    original = EncoderDecoderModel.generate

    def generate(self, *args, **kwargs):
        config = kwargs.get("generation_config") or self.generation_config
        calls.append({key: kwargs.get(key, getattr(config, key)) for key in GENERATE_SETTINGS})
        return original(self, *args, **kwargs)

    monkeypatch.setattr(EncoderDecoderModel, "generate", generate)
    return calls


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def tiny_files(tmp_path):
    """A small data=files set: documents of words, summaries their first three words."""
    words = "alpha beta gamma delta epsilon zeta theta kappa lambda sigma omega".split()
    rows = []
    for i in range(12):
        document = [words[(i * 3 + j * 7) % len(words)] for j in range(10)]
        rows.append({"document": " ".join(document), "summary": " ".join(document[:3])})
    return {
        "train": write_jsonl(tmp_path / "train.jsonl", rows[:8]),
        "validation": write_jsonl(tmp_path / "val.jsonl", rows[8:10]),
        "test": write_jsonl(tmp_path / "test.jsonl", rows[10:]),
    }


def run_folder_with_a_checkpoint(tmp_path: Path, state: dict) -> tuple[Path, Path]:
    """A run folder as a killed run leaves it: its saved config and one whole step checkpoint holding `state`."""
    import torch
    from omegaconf import OmegaConf

    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({"seed": 0}), run_dir / ".hydra" / "config.yaml")
    (run_dir / "checkpoints").mkdir()
    checkpoint = run_dir / "checkpoints" / "step2.ckpt"
    torch.save(state, checkpoint)
    return run_dir, checkpoint


@pytest.fixture(scope="module")
def single_thread():
    """Models this small only pay synchronisation costs for intra-op threads, badly so on a busy 2-core machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
