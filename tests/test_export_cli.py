"""The model card, the Hub upload (offline: up to huggingface_hub's calls, which are replaced) and export.py."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from huggingface_hub import ModelCard
from omegaconf import OmegaConf
from transformers import AutoTokenizer

from conftest import ROOT, SMOKE, compose_config, error_lines, run_script
from encdec import model_card, run_folder
from encdec.errors import EncdecError
from encdec.export import push_to_hub
from test_export import export_of

METRICS = {
    "val/rouge1": 14.091,
    "val/rouge2": 2.27,
    "val/rougeL": 12.69,
    "test/rouge1": 15.07,
    "test/rouge2": 2.08,
    "test/rougeL": 12.99,
    "train/steps": 39,
}
BASELINES = {
    "baseline/lead1/rouge1": 20.5,
    "baseline/lead1/rouge2": 4.25,
    "baseline/lead1/rougeL": 15.0,
    "baseline/lead3/rouge1": 30.125,
    "baseline/lead3/rouge2": 9.0,
    "baseline/lead3/rougeL": 21.5,
}
# Python imports sitecustomize from PYTHONPATH at start: a script run with it records Hub calls instead of making them.
RECORD_HUB_CALLS = """
import json, os
from pathlib import Path
import huggingface_hub

def recorder(name):
    def record(self, *args, **kwargs):
        folder = kwargs.get("folder_path")
        files = sorted(p.relative_to(folder).as_posix() for p in Path(folder).rglob("*")) if folder else []
        with open(os.environ["HUB_CALLS"], "a") as log:
            log.write(json.dumps({"call": name, "args": [str(a) for a in args], "repo_id": kwargs.get("repo_id"),
                                  "folder_path": folder, "files": files}) + "\\n")
    return record

huggingface_hub.HfApi.create_repo = recorder("create_repo")
huggingface_hub.HfApi.upload_folder = recorder("upload_folder")
"""


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return export_of(tmp_path_factory.mktemp("card") / run_folder.HF_MODEL, "encoder=tiny", "decoder=tiny")[0]


def card_of(text: str, tmp_path: Path) -> ModelCard:
    (tmp_path / "README.md").write_text(text, encoding="utf-8")
    return ModelCard.load(tmp_path / "README.md")


def test_model_card_metadata_parses_and_names_models_data_and_scores(tiny_model, tmp_path):
    config = compose_config("encoder=minilm", "decoder=gpt2", "data=cnn_dailymail", "generation=beam")
    tiny_model.generation_config.update(num_beams=4, length_penalty=2.0)
    card = card_of(model_card.render(tiny_model, config, {**METRICS, **BASELINES}, remote_code=False), tmp_path)
    assert card.data.base_model == ["sentence-transformers/all-MiniLM-L6-v2", "openai-community/gpt2"]
    assert card.data.datasets == ["abisee/cnn_dailymail"]
    assert card.data.metrics == ["rouge"] and card.data.library_name == "transformers"
    assert "summarization" in card.data.tags and card.data.license is None
    assert "| validation | 14.09 | 2.27 | 12.69 |" in card.text
    assert "| test | 15.07 | 2.08 | 12.99 |" in card.text
    assert "| lead-1 baseline (first sentence) | 20.50 | 4.25 | 15.00 |" in card.text
    assert "| lead-3 baseline (first three sentences) | 30.12 | 9.00 | 21.50 |" in card.text
    assert "num_beams=4" in card.text and "length_penalty=2.0" in card.text and "for 39 steps" in card.text
    assert "AutoModelForSeq2SeqLM.from_pretrained(path)" in card.text


def test_model_card_skips_missing_baselines_and_random_sides(tiny_model, tmp_path):
    config = compose_config("encoder=tiny", "decoder=minilm")  # tiny: a random-initialised MiniLM
    card = card_of(model_card.render(tiny_model, config, METRICS, remote_code=True), tmp_path)
    assert card.data.base_model == ["sentence-transformers/all-MiniLM-L6-v2"]
    assert card.data.datasets == ["sobamchan/aclsum"] and "custom_code" in card.data.tags
    assert "lead-1" not in card.text and "| test | 15.07 | 2.08 | 12.99 |" in card.text
    assert "trust_remote_code=True" in card.text
    bare = card_of(model_card.render(tiny_model, None, None, remote_code=False), tmp_path)  # a model from elsewhere
    assert bare.data.base_model is None and "ROUGE-1" not in bare.text


def test_push_to_hub_uploads_the_folder_when_a_token_is_present(tmp_path, monkeypatch):
    import huggingface_hub

    calls = []
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(
        huggingface_hub.HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create", repo_id, kw))
    )
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", lambda self, **kw: calls.append(("upload", kw)))
    assert push_to_hub(tmp_path, "me/tiny", "push_to_hub") == "https://huggingface.co/me/tiny"
    assert calls[0] == ("create", "me/tiny", {"repo_type": "model", "exist_ok": True})
    assert calls[1][1]["folder_path"] == str(tmp_path) and calls[1][1]["repo_id"] == "me/tiny"

    def refused(self, **kwargs):
        raise RuntimeError("403 Forbidden: no write access\nmore detail")

    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", refused)
    with pytest.raises(
        EncdecError,
        match=r"push_to_hub=me/tiny: the upload failed \(RuntimeError: 403 Forbidden: no "
        r"write access\); .* is complete, upload it later with `hf upload me/tiny",
    ):
        push_to_hub(tmp_path, "me/tiny", "push_to_hub")


def test_train_without_a_token_stops_before_training(tmp_path):
    started = time.monotonic()
    run_dir = tmp_path / "run"
    result = run_script(
        "train.py",
        "encoder=tiny",
        "decoder=tiny",
        *SMOKE,
        "export.push_to_hub=me/tiny",
        f"hydra.run.dir={run_dir}",
        env={"HF_TOKEN": "", "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "0"},
    )
    assert result.returncode == 2
    assert error_lines(result.stderr) == [
        "encdec: error: export.push_to_hub=me/tiny needs a Hugging Face token with write access: run `hf auth login` "
        "or set HF_TOKEN, or drop export.push_to_hub"
    ]
    assert "validation ROUGE" not in result.stdout and not run_dir.exists()
    assert time.monotonic() - started < 60
    bad_name = run_script("export.py", f"model_path={tmp_path}", "push_to_hub=me/not a name")
    assert bad_name.returncode == 2 and error_lines(bad_name.stderr)[0].startswith(
        "encdec: error: push_to_hub=me/not a name is not a Hub repository name"
    )


@pytest.fixture
def finished_run(tmp_path) -> Path:
    """A run folder as train.py leaves it (config, hf_model/ without a card of its run, metrics.json), made fast."""
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(compose_config("encoder=tiny", "decoder=minilm"), run_dir / ".hydra" / "config.yaml")
    export_of(run_dir / run_folder.HF_MODEL, "encoder=tiny", "decoder=tiny")
    run_folder.write_json(run_dir / run_folder.METRICS, {**METRICS, **BASELINES})
    return run_dir


def recording_hub_calls(tmp_path: Path) -> tuple[dict, Path]:
    """The environment of a script whose Hub calls are recorded (with a token, online), and the record's path."""
    (tmp_path / "hooks").mkdir()
    (tmp_path / "hooks" / "sitecustomize.py").write_text(RECORD_HUB_CALLS)
    calls = tmp_path / "calls.jsonl"
    return {
        "PYTHONPATH": str(tmp_path / "hooks"),
        "HUB_CALLS": str(calls),
        "HF_TOKEN": "hf_test",
        "HF_HUB_OFFLINE": "0",
    }, calls


def test_train_uploads_its_export_after_the_run(tmp_path):
    env, calls = recording_hub_calls(tmp_path)
    run_dir = tmp_path / "run"
    result = run_script(
        "train.py",
        "encoder=tiny",
        "decoder=tiny",
        *SMOKE,
        "export.push_to_hub=me/tiny",
        f"hydra.run.dir={run_dir}",
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.rstrip().endswith("uploaded https://huggingface.co/me/tiny")
    upload = [json.loads(line) for line in calls.read_text().splitlines()][-1]
    assert upload["folder_path"] == str(run_dir / run_folder.HF_MODEL) and "README.md" in upload["files"]
    metrics = json.loads((run_dir / run_folder.METRICS).read_text())
    card = ModelCard.load(run_dir / run_folder.HF_MODEL / "README.md")
    assert (
        f"| test | {metrics['test/rouge1']:.2f} | {metrics['test/rouge2']:.2f} | {metrics['test/rougeL']:.2f} |"
        in card.text
        and "max_new_tokens=8" in card.text
        and card.data.datasets == ["sobamchan/aclsum"]
    )


def test_export_py_rewrites_the_runs_hf_model_and_uploads_it(finished_run, tmp_path):
    env, calls = recording_hub_calls(tmp_path)
    result = run_script("export.py", f"model_path={finished_run}", "push_to_hub=me/tiny", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    export = finished_run / run_folder.HF_MODEL
    assert f"exported {export}" in result.stdout and "uploaded https://huggingface.co/me/tiny" in result.stdout
    card = ModelCard.load(export / "README.md")
    assert card.data.datasets == ["sobamchan/aclsum"]
    assert "| lead-3 baseline (first three sentences) | 30.12" in card.text
    recorded = [json.loads(line) for line in calls.read_text().splitlines()]
    assert [call["call"] for call in recorded] == ["create_repo", "upload_folder"]
    assert recorded[1]["repo_id"] == "me/tiny" and recorded[1]["folder_path"] == str(export)
    assert {
        "README.md",
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "decoder_tokenizer/tokenizer.json",
    } <= set(recorded[1]["files"])
    assert len(AutoTokenizer.from_pretrained(export)) == 30522
    assert sorted(p.name for p in finished_run.iterdir()) == [".hydra", "hf_model", "metrics.json"]


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["format=tflite"], "format=tflite is not an export format: use format=hf or format=onnx"),
        (["model_path=/no/such/run"], "model_path=/no/such/run: no such file or folder"),
    ],
)
def test_export_py_bad_input_is_one_line(finished_run, arguments, message):
    result = run_script("export.py", f"model_path={finished_run}", *arguments)
    assert result.returncode == 2 and error_lines(result.stderr) == [f"encdec: error: {message}"]


def test_export_py_help_shows_usage_and_its_examples_compose():
    from encdec.arguments import checked_arguments

    result = run_script("export.py", "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("encdec export.py: ") and "Usage: python export.py" in result.stdout
    examples = [
        line.strip().split("  ")[0].split()[2:]
        for line in result.stdout.splitlines()
        if line.strip().startswith("python export.py ")
    ]
    assert len(examples) == 3
    for example in examples:
        checked_arguments(example, "export", ROOT / "conf")  # raises EncdecError on a bad example


def test_model_card_names_a_model_used_on_both_sides_once(tiny_model, tmp_path):
    card = card_of(
        model_card.render(tiny_model, compose_config("encoder=minilm", "decoder=minilm"), METRICS, remote_code=False),
        tmp_path,
    )  # MiniLM -> MiniLM
    assert card.data.base_model == ["sentence-transformers/all-MiniLM-L6-v2"]
