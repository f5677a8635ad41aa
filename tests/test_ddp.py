"""A 2-process CPU DDP run (gloo) through the real CLI leaves the same run folder as a 1-process run."""

from __future__ import annotations

import json
import subprocess

import pytest

from conftest import SMOKE, run_script

TIMEOUT_S = 600


def test_two_process_ddp_run_folder(tmp_path):
    run_dir = tmp_path / "ddp"
    try:
        result = run_script(
            "train.py",
            "encoder=tiny",
            "decoder=tiny",
            "trainer=ddp",
            "trainer.devices=2",
            "trainer.accelerator=cpu",
            *SMOKE,
            f"hydra.run.dir={run_dir}",
            timeout=TIMEOUT_S,
            env={"OMP_NUM_THREADS": "1"},
        )
    except subprocess.TimeoutExpired as error:  # a hang (a collective one rank never reaches) must fail, not stall
        pytest.fail(f"2-process DDP run did not finish in {TIMEOUT_S} s: {str(error.stderr or '')[-2000:]}")
    assert result.returncode == 0, result.stderr[-4000:]
    for name in (".hydra/config.yaml", "checkpoints/last.ckpt", "hf_model/config.json", "hf_model/model.safetensors",
                 "hf_model/encoder_tokenizer", "hf_model/decoder_tokenizer", "metrics.json", "predictions.jsonl"):
        assert (run_dir / name).exists(), name
    # One run folder only: the second rank must not create its own (Hydra run dir per rank).
    assert not [p for p in run_dir.parent.iterdir() if p != run_dir]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("val/rouge1", "val/rouge2", "val/loss", "test/rouge2"):
        assert isinstance(metrics[key], float), key
    # 4 train rows, batch 2 per rank, 2 ranks: one optimizer step per epoch (max_epochs=1), as in any DDP run.
    assert metrics["train/steps"] == 1
    rows = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    # SMOKE keeps 2 test rows: gathered from both ranks, deduplicated by index, in data order.
    assert len(rows) == 2 and set(rows[0]) == {"document", "reference", "prediction"}
    assert result.stdout.count("run folder:") == 1

    # One process with the same global batch (4 rows per step) leaves the same files (checkpoint names and all) and
    # the same metric keys.
    single_dir = tmp_path / "single"
    smoke = [o for o in SMOKE if not o.startswith("data.batch_size=")]
    single = run_script("train.py", "encoder=tiny", "decoder=tiny", "trainer.accelerator=cpu", *smoke,
                        "data.batch_size=4", f"hydra.run.dir={single_dir}", timeout=TIMEOUT_S,
                        env={"OMP_NUM_THREADS": "1"})
    assert single.returncode == 0, single.stderr[-4000:]

    def listing(root):
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts)

    assert listing(run_dir) == listing(single_dir)
    assert set(json.loads((single_dir / "metrics.json").read_text())) == set(metrics)
    single_rows = [json.loads(line) for line in (single_dir / "predictions.jsonl").read_text().splitlines()]
    assert [r["document"] for r in single_rows] == [r["document"] for r in rows]
