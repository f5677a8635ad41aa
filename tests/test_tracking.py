"""What the trackers receive: wandb offline run with metrics, config and the predictions table; CSV curves."""

from __future__ import annotations

import csv
import json

from conftest import SMOKE, run_script


def test_wandb_offline_run_holds_metrics_config_and_predictions(tmp_path):
    run_dir = tmp_path / "run"
    result = run_script(
        "train.py",
        "encoder=tiny",
        "decoder=tiny",
        *SMOKE,
        "logger=default",
        "callbacks.throughput.window=1",
        f"hydra.run.dir={run_dir}",
        env={"WANDB_MODE": "offline", "WANDB_SILENT": "true"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    log = next(runs[0].glob("run-*.wandb")).read_bytes()
    for key in (
        b"train/loss",
        b"val/rouge2",
        b"val/loss",
        b"train/tokens_per_s",
        b"train/memory_gib",
        b"val/predictions",
    ):
        assert key in log, key
    assert b"encoder/name" in log and b"optimizer/lr" in log  # the resolved config, flattened
    tables = list((runs[0] / "files" / "media" / "table").rglob("*.table.json"))
    assert tables
    table = json.loads(tables[0].read_text())
    assert table["columns"] == ["document", "reference", "prediction"] and len(table["data"]) == 2
    heatmaps = list((run_dir / "figures").glob("cross_attention_step*.png"))
    assert heatmaps and heatmaps[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(run_dir / "csv" / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert any(row.get("train/tokens_per_s") for row in rows)
    assert any(row.get("val/rouge2") for row in rows)
