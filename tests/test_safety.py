"""Never lose work: atomic writes under a full disk, safe loading, and a data pipeline that takes any text."""

from __future__ import annotations

import errno
import json
from types import SimpleNamespace

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf
from transformers import AutoTokenizer, GenerationConfig

from conftest import SMOKE, compose_config, run_script
from encdec import run_folder
from encdec.data.loading import _to_document_summary
from encdec.data.tokenize import IGNORE_INDEX, tokenize_split
from encdec.export import export_hf_model
from encdec.lit.datamodule import SummarizationDataModule
from encdec.sources import resolve


class DiskFull(OSError):
    def __init__(self):
        super().__init__(errno.ENOSPC, "No space left on device")


class StubModel:
    """Just enough of an EncoderDecoderModel for export_hf_model: a BERT decoder, config.json holding `text`."""

    config = SimpleNamespace(encoder=SimpleNamespace(model_type="bert"), decoder=SimpleNamespace(model_type="bert"))
    decoder = SimpleNamespace(config=config.decoder)
    generation_config = GenerationConfig()

    def __init__(self, text="{}", fail=False):
        self.text, self.fail = text, fail

    def save_pretrained(self, folder, state_dict=None):
        (folder / "config.json").write_text(self.text)
        if self.fail:
            raise DiskFull()


class StubTokenizer:
    def save_pretrained(self, folder):
        folder.mkdir(exist_ok=True)


def test_full_disk_during_a_write_keeps_the_previous_file_whole(tmp_path):
    target = tmp_path / "metrics.json"
    run_folder.write_json(target, {"val/rouge2": 1.0})

    def fill_the_disk(handle):
        handle.write('{"val/rouge2": 2.')
        raise DiskFull()

    with pytest.raises(OSError) as caught:
        run_folder.write_atomic(target, fill_the_disk)
    assert caught.value.errno == errno.ENOSPC
    assert json.loads(target.read_text()) == {"val/rouge2": 1.0}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temporary file left behind


def test_full_disk_during_export_leaves_no_hf_model(tmp_path):
    class FailingModel:
        def save_pretrained(self, folder, state_dict=None):
            (folder / "model.safetensors").write_bytes(b"partial")
            raise DiskFull()

    with pytest.raises(OSError):
        export_hf_model(FailingModel(), None, None, tmp_path / "hf_model")
    assert list(tmp_path.iterdir()) == []


def test_results_are_readable_by_the_group_as_umask_allows(tmp_path):
    import os
    import stat

    previous = os.umask(0o022)
    try:
        run_folder.write_json(tmp_path / "metrics.json", {"a": 1})
        export_hf_model(StubModel(), StubTokenizer(), StubTokenizer(), tmp_path / "hf_model")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "metrics.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "hf_model").stat().st_mode) == 0o755


def test_export_replaces_a_previous_export_and_keeps_it_when_the_new_one_fails(tmp_path):
    target = tmp_path / "hf_model"
    export_hf_model(StubModel("old"), StubTokenizer(), StubTokenizer(), target)
    with pytest.raises(OSError):
        export_hf_model(StubModel("new", fail=True), StubTokenizer(), StubTokenizer(), target)
    assert (target / "config.json").read_text() == "old"
    export_hf_model(StubModel("new"), StubTokenizer(), StubTokenizer(), target)
    assert (target / "config.json").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["hf_model"]  # nothing moved aside is left behind


def test_failed_run_removes_only_the_folders_hydra_made(tmp_path):
    from encdec.run_folder import remove_fresh_run_dir

    mine = tmp_path / "mine"  # empty, but the user made it: it stays
    run_dir = mine / "outputs" / "2026-11-26" / "13-00-00"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / "train.log").write_text("")
    remove_fresh_run_dir(run_dir, existing=mine)
    assert mine.is_dir() and not any(mine.iterdir())

    (run_dir / ".hydra").mkdir(parents=True)
    (mine / "outputs" / "2026-11-26" / "earlier-run").mkdir()
    remove_fresh_run_dir(run_dir, existing=mine)
    assert sorted(p.name for p in (mine / "outputs" / "2026-11-26").iterdir()) == ["earlier-run"]

    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / "checkpoints").mkdir()  # a product: nothing is removed
    remove_fresh_run_dir(run_dir, existing=mine)
    assert (run_dir / "checkpoints").is_dir()


def test_checkpoint_loading_refuses_pickled_code(tmp_path):
    from encdec.errors import EncdecError
    from encdec.inference import load_trained

    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "encdec": Payload()}, path)
    with pytest.raises(EncdecError, match="not a readable checkpoint"):
        load_trained(path)


def test_export_is_safetensors_only(tmp_path):
    from encdec.models import build_model

    model, encoder_tokenizer, decoder_tokenizer = build_model(compose_config("encoder=tiny", "decoder=tiny"))
    export_hf_model(model, encoder_tokenizer, decoder_tokenizer, tmp_path / "hf_model")
    files = {p.name for p in (tmp_path / "hf_model").iterdir()}
    assert "model.safetensors" in files and not any(name.endswith((".bin", ".pt", ".pkl")) for name in files)


def test_no_secret_in_saved_config(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "secret-key-123")
    monkeypatch.setenv("HF_TOKEN", "hf_secret456")
    text = OmegaConf.to_yaml(compose_config())
    assert "secret-key-123" not in text and "hf_secret456" not in text


def test_no_secret_in_any_file_a_run_writes(tmp_path):
    # A smoke run with both secrets in its environment and the CSV and TensorBoard loggers on (they log the config as
    # hyperparameters): no file of the run folder holds either value, in any encoding a file could carry it.
    secrets = {"HF_TOKEN": "hf_Q7sEcReTtOkEn9x", "WANDB_API_KEY": "wandb0f1e2d3c4b5a69788796a5b4c3d2e1f0"}
    run_dir = tmp_path / "run"
    result = run_script(
        "train.py",
        "encoder=tiny",
        "decoder=tiny",
        *(o for o in SMOKE if not o.startswith("logger=")),
        "logger=[csv,tensorboard]",
        f"hydra.run.dir={run_dir}",
        env=secrets,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    files = [path for path in run_dir.rglob("*") if path.is_file()]
    names = {path.relative_to(run_dir).parts[0] for path in files}
    assert {".hydra", "checkpoints", "hf_model", "metrics.json", "predictions.jsonl", "csv"} <= names, names
    assert any("tfevents" in path.name for path in files)
    for path in files:
        data = path.read_bytes()
        for name, value in secrets.items():
            for encoded in (value.encode(), value.encode("utf-16-le")):
                assert encoded not in data, f"{name}'s value in {path.relative_to(run_dir)}"
    assert not any(value in result.stdout + result.stderr for value in secrets.values())


@pytest.fixture(scope="module")
def pipeline():
    cfg = compose_config("encoder=minilm", "data.max_source_length=32", "data.max_target_length=8")
    tokenizer = AutoTokenizer.from_pretrained(resolve(cfg.encoder.pretrained, "encoder.pretrained"))
    return cfg, SummarizationDataModule(cfg.data, tokenizer, tokenizer, decoder_start_token_id=tokenizer.cls_token_id)


cell = st.one_of(
    st.none(),
    st.text(max_size=300),
    st.integers(),
    st.floats(allow_nan=True),
    st.booleans(),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=2000, max_size=5000),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(cell, cell), min_size=1, max_size=8))
def test_any_rows_are_cleaned_tokenized_and_batched(pipeline, rows):
    import datasets

    from encdec.errors import EncdecError

    cfg, dm = pipeline
    # Mixed column types arrive as strings from json/csv readers; keep that shape here.
    table = {
        "document": [None if d is None else str(d) for d, _ in rows],
        "summary": [None if s is None else str(s) for _, s in rows],
    }
    try:
        cleaned = _to_document_summary(datasets.Dataset.from_dict(table), cfg.data, "train")
    except EncdecError as error:
        assert "no rows with both" in str(error)
        return
    assert all(d.strip() and s.strip() for d, s in zip(cleaned["document"], cleaned["summary"]))
    tokenized = tokenize_split(
        cleaned,
        "train",
        dm.encoder_tokenizer,
        dm.decoder_tokenizer,
        cfg.data.max_source_length,
        cfg.data.max_target_length,
    )
    batch = dm.collate([{**row, "index": i} for i, row in enumerate(tokenized)])
    assert batch["input_ids"].shape[1] <= 32 and batch["labels"].shape[1] <= 8
    assert ((batch["labels"] == IGNORE_INDEX) | (batch["labels"] >= 0)).all()
    assert (batch["attention_mask"].sum(1) >= 2).all()  # at least [CLS] [SEP]
