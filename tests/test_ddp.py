"""A 2-process CPU DDP run (gloo) through the real CLI leaves the same run folder as a 1-process run."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from conftest import ROOT, SMOKE, assert_sane_metrics, error_lines, run_script, script_environment

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
    for name in (
        ".hydra/config.yaml",
        "checkpoints/last.ckpt",
        "hf_model/config.json",
        "hf_model/model.safetensors",
        "hf_model/encoder_tokenizer",
        "hf_model/decoder_tokenizer",
        "metrics.json",
        "predictions.jsonl",
    ):
        assert (run_dir / name).exists(), name
    # One run folder only: the second rank must not create its own (Hydra run dir per rank).
    assert not [p for p in run_dir.parent.iterdir() if p != run_dir]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert_sane_metrics(metrics, ("val/rouge1", "val/rouge2", "val/loss", "test/rouge2"))
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
    single = run_script(
        "train.py",
        "encoder=tiny",
        "decoder=tiny",
        "trainer.accelerator=cpu",
        *smoke,
        "data.batch_size=4",
        f"hydra.run.dir={single_dir}",
        timeout=TIMEOUT_S,
        env={"OMP_NUM_THREADS": "1"},
    )
    assert single.returncode == 0, single.stderr[-4000:]

    def listing(root):
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts)

    assert listing(run_dir) == listing(single_dir)
    assert set(json.loads((single_dir / "metrics.json").read_text())) == set(metrics)
    single_rows = [json.loads(line) for line in (single_dir / "predictions.jsonl").read_text().splitlines()]
    assert [r["document"] for r in single_rows] == [r["document"] for r in rows]


def _launch_nodes(launch, run_dir, port):
    """Two 'nodes' of one CPU process each on this machine, started the way README's "Several nodes" says."""
    overrides = [
        "encoder=tiny",
        "decoder=tiny",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=1",
        "trainer.num_nodes=2",
        *SMOKE,
        f"hydra.run.dir={run_dir}",
    ]
    processes = []
    for node in (0, 1):
        if launch == "by-hand":
            command = [sys.executable, str(ROOT / "train.py"), *overrides]
            env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "NODE_RANK": str(node)}
        else:
            command = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes=2",
                "--nproc-per-node=1",
                f"--node-rank={node}",
                "--master-addr=127.0.0.1",
                f"--master-port={port}",
                str(ROOT / "train.py"),
                *overrides,
            ]
            env = {}
        processes.append(
            subprocess.Popen(
                command,
                cwd=ROOT,
                env=script_environment({"OMP_NUM_THREADS": "1", **env}),
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        )
    results = []
    try:
        for process in processes:
            out, err = process.communicate(timeout=TIMEOUT_S)
            results.append((process.returncode, out, err))
    except subprocess.TimeoutExpired:
        for process in processes:
            process.kill()
        pytest.fail(f"2-node run ({launch}) did not finish in {TIMEOUT_S} s")
    return results


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("launch", ["by-hand", "torchrun"])
def test_two_node_run_shares_one_run_folder(tmp_path, launch):
    run_dir = tmp_path / "run"
    results = _launch_nodes(launch, run_dir, _free_port())
    for node, (code, _out, err) in enumerate(results):
        assert code == 0, f"node {node}: {err[-3000:]}"
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in results[1][2]
    # Node 0 holds global rank 0: it alone writes the products and says where they are.
    assert "run folder:" in results[0][1] and "run folder:" not in results[1][1]
    assert "model: tiny" in results[0][1] and results[1][1].strip() == "", results[1][1]
    for name in ("checkpoints/last.ckpt", "hf_model/model.safetensors", "metrics.json", "predictions.jsonl"):
        assert (run_dir / name).exists(), name
    assert [p.name for p in tmp_path.iterdir()] == ["run"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert_sane_metrics(metrics, ("val/rouge2", "val/loss", "test/rouge2"))
    assert metrics["train/steps"] == 1  # 4 rows, 2 per rank, 2 ranks: the two nodes really split the batch
    rows = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 2  # one test row generated on each node, gathered on rank 0


def test_several_nodes_need_one_named_run_folder(tmp_path):
    result = run_script(
        "train.py",
        "encoder=tiny",
        "decoder=tiny",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.num_nodes=2",
        *SMOKE,
        env={"NODE_RANK": "0"},
        timeout=120,
    )
    assert result.returncode != 0
    assert error_lines(result.stderr) == [
        "encdec: error: trainer.num_nodes=2 needs one run folder for all nodes: pass hydra.run.dir=PATH on a "
        "filesystem every node shares, the same on each node"
    ], result.stderr[-2000:]
