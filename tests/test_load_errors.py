"""A damaged hf_model/ export, an unusable device= and corrupt report inputs end in one `encdec: error:` line, exit 2."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT, compose_config, error_lines, run_script
from encdec import inference, run_folder
from encdec.errors import EncdecError
from encdec.export import export_hf_model
from encdec.inference import load_trained, pick_device
from encdec.models import build_model

EVAL = ("data.max_test_samples=2", "data.max_source_length=32")


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    """A whole hf_model/ export of an untrained tiny -> tiny model, as train.py writes it (no training: fast)."""
    model, encoder_tokenizer, decoder_tokenizer = build_model(compose_config("encoder=tiny", "decoder=tiny"))
    target = tmp_path_factory.mktemp("export") / run_folder.HF_MODEL
    export_hf_model(model, encoder_tokenizer, decoder_tokenizer, target)
    return target


def copy_run(export: Path, tmp_path: Path, with_checkpoint: bool = True) -> Path:
    """A run folder holding a copy of `export` (and an empty checkpoints/best-step2.ckpt, only ever named)."""
    run = tmp_path / "run"
    shutil.copytree(export, run / run_folder.HF_MODEL)
    if with_checkpoint:
        (run / run_folder.CHECKPOINTS).mkdir()
        (run / run_folder.CHECKPOINTS / "best-step2.ckpt").write_bytes(b"")
    return run


def assert_one_line(result: subprocess.CompletedProcess, out: Path | None = None) -> str:
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr[-3000:]
    if out is not None:
        assert not out.exists(), "the half-made eval folder was left behind"
    return lines[0]


def test_the_export_itself_loads(export):
    model, encoder_tokenizer, decoder_tokenizer = load_trained(export)
    assert model.config.is_encoder_decoder and encoder_tokenizer is not None and decoder_tokenizer is not None


# ------------------------------------------------------------------------------------------- a damaged export


def test_eval_export_without_model_safetensors(export, tmp_path):
    broken = tmp_path / "copy"
    shutil.copytree(export, broken)
    (broken / "model.safetensors").unlink()
    out = tmp_path / "out"
    line = assert_one_line(run_script("eval.py", f"model_path={broken}", *EVAL, f"hydra.run.dir={out}"), out)
    assert line.startswith(f"encdec: error: model_path={broken}: could not load the exported model (OSError: "), line
    assert line.endswith("point model_path at the run folder's checkpoints/best-*.ckpt (or last.ckpt)"), line


def test_eval_run_with_truncated_model_safetensors(export, tmp_path):
    run = copy_run(export, tmp_path)
    weights = run / run_folder.HF_MODEL / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:3000])  # cut inside the header
    out = tmp_path / "out"
    line = assert_one_line(run_script("eval.py", f"model_path={run}", *EVAL, f"hydra.run.dir={out}"), out)
    assert line.startswith(
        f"encdec: error: model_path={run}: could not load the exported model in {run / run_folder.HF_MODEL} "
        "(SafetensorError: "
    ), line
    assert line.endswith(f"point model_path at {run / run_folder.CHECKPOINTS / 'best-step2.ckpt'} instead"), line


def test_safetensors_cut_short_after_its_header(export, tmp_path):
    run = copy_run(export, tmp_path)
    weights = run / run_folder.HF_MODEL / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    with pytest.raises(
        EncdecError, match=r"could not load the exported model \(SafetensorError: .*best-step2\.ckpt instead$"
    ):
        load_trained(weights.parent)


def test_corrupt_tokenizer_is_named(export, tmp_path):
    broken = tmp_path / "copy"
    shutil.copytree(export, broken)
    (broken / run_folder.DECODER_TOKENIZER / "tokenizer_config.json").write_text("{", encoding="utf-8")
    with pytest.raises(EncdecError, match=rf"^model_path={broken}: could not load the exported decoder tokenizer \("):
        load_trained(broken)


def test_export_without_tokenizer_folder(export, tmp_path):
    run = copy_run(export, tmp_path)
    shutil.rmtree(run / run_folder.HF_MODEL / run_folder.ENCODER_TOKENIZER)
    with pytest.raises(EncdecError, match=rf"^model_path={run}: the export .* has no encoder_tokenizer/ folder; point"):
        load_trained(run)


def test_long_messages_stay_one_short_line(export, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise OSError("x" * 1000 + "\nsecond line")

    monkeypatch.setattr(inference.EncoderDecoderModel, "from_pretrained", fail)
    with pytest.raises(EncdecError) as caught:
        load_trained(export)
    message = str(caught.value)
    assert "\n" not in message and "second line" not in message and "x" * 197 + "..." in message
    assert len(message) < 600


@pytest.mark.parametrize("raised", [KeyboardInterrupt(), EncdecError("already one line")])
def test_interrupts_and_encdec_errors_pass_through(export, monkeypatch, raised):
    def fail(*args, **kwargs):
        raise raised

    monkeypatch.setattr(inference.EncoderDecoderModel, "from_pretrained", fail)
    with pytest.raises(type(raised)) as caught:
        load_trained(export)
    assert caught.value is raised


# ----------------------------------------------------------------------------------------------------- device=


def test_eval_device_banana(export, tmp_path):
    out = tmp_path / "out"
    line = assert_one_line(
        run_script("eval.py", f"model_path={export}", *EVAL, "device=banana", f"hydra.run.dir={out}"), out
    )
    assert line == "encdec: error: device=banana is not a torch device: use auto, cpu, cuda or cuda:N"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_eval_device_cuda_without_a_gpu(export, tmp_path):
    out = tmp_path / "out"
    line = assert_one_line(
        run_script("eval.py", f"model_path={export}", *EVAL, "device=cuda", f"hydra.run.dir={out}"), out
    )
    assert line == "encdec: error: device=cuda but no CUDA GPU is available here: use device=auto or device=cpu"


@pytest.mark.parametrize("requested", ["banana", "cuda:x", "cuda:-1", "", "0"])
def test_pick_device_refuses_what_is_no_device(requested):
    with pytest.raises(
        EncdecError, match=rf"^device={requested} is not a torch device: use auto, cpu, cuda or cuda:N$"
    ):
        pick_device(requested)


@pytest.mark.parametrize("requested", ["cuda", "cuda:0", "cuda:3"])
def test_pick_device_cuda_without_a_gpu(requested, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(EncdecError, match=rf"^device={requested} but no CUDA GPU is available here: use device=auto"):
        pick_device(requested)


def test_pick_device_cuda_index_beyond_the_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(EncdecError, match=r"^device=cuda:2 but this machine has 2 CUDA GPUs \(cuda:0 to cuda:1\): use"):
        pick_device("cuda:2")
    assert pick_device("cuda:1") == torch.device("cuda:1")
    assert pick_device("cuda") == torch.device("cuda")


def test_pick_device_accepts_auto_and_cpu():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert pick_device(None) == pick_device("auto")


# ---------------------------------------------------------------------------------------- report.py on corrupt runs


def report(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "report.py"), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )


@pytest.mark.parametrize(
    "content, kind", [("[1, 2, 3]", "array"), ('"x"', "string"), ("7", "number"), ("null", "null")]
)
def test_report_metrics_json_that_is_not_an_object(tmp_path, content, kind):
    run = tmp_path / "runs" / "0"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(content, encoding="utf-8")
    out = tmp_path / "out"
    line = assert_one_line(report(tmp_path / "runs", "--out", out), out)
    assert line == (
        f"encdec: error: {run / 'metrics.json'} holds a JSON {kind}, not an object of metrics such as "
        '{"val/rouge2": 7.2}: restore it, or move it aside to list the run as incomplete'
    )


def test_report_metrics_json_that_is_not_utf8(tmp_path):
    (tmp_path / "metrics.json").write_bytes(b'{"val/rouge2": "\xff"}')
    out = tmp_path / "out"
    line = assert_one_line(report(tmp_path, "--out", out), out)
    assert line.startswith(f"encdec: error: {tmp_path / 'metrics.json'} is not UTF-8 text ("), line


def test_report_metrics_csv_that_is_not_utf8(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"val/rouge2": 1.0}), encoding="utf-8")
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "metrics.csv").write_bytes(b"step,val/rouge2\n1,\xff\xfe0.5\n")
    out = tmp_path / "out"
    line = assert_one_line(report(tmp_path, "--out", out), out)
    assert line.startswith(f"encdec: error: {tmp_path / 'csv' / 'metrics.csv'} is not UTF-8 text ("), line
    assert line.endswith("restore it, or move it aside to list the run without a curve"), line
