"""train.py / eval.py / predict.py end to end as a user runs them, and bad input as one clear line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from transformers import AutoTokenizer, GenerationConfig

from conftest import ROOT, SMOKE, assert_sane_metrics, error_lines, run_script, script_environment, spy_on_generate


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """One short tiny -> tiny run on the packaged aclsum, shared by the tests that inspect its run folder."""
    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    result = run_script("train.py", "encoder=tiny", "decoder=tiny", *SMOKE, "logger=csv", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir, result


def test_run_folder_contract(trained_run):
    run_dir, result = trained_run
    assert "validation ROUGE before training" in result.stdout
    assert "validation ROUGE after training" in result.stdout
    assert f"run folder: {run_dir}" in result.stdout
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
    assert list((run_dir / "checkpoints").glob("best-*.ckpt"))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert_sane_metrics(metrics, ("val/rouge1", "val/rouge2", "val/rougeL", "val/rougeLsum", "val/loss", "test/rouge2"))
    assert metrics["train/steps"] == 2
    rows = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and set(rows[0]) == {"document", "reference", "prediction"}
    # The lead baselines of the same test rows, scored the same way, beside the model's.
    from encdec.metrics import lead_baselines

    assert {k: v for k, v in metrics.items() if k.startswith("baseline/")} == lead_baselines(
        [r["document"] for r in rows], [r["reference"] for r in rows]
    )
    assert "lead-1" in result.stdout and "lead-3" in result.stdout and "above lead-1 in all three" in result.stdout


def test_export_opens_in_plain_transformers(trained_run):
    run_dir, _ = trained_run
    script = f"""
from transformers import AutoTokenizer, EncoderDecoderModel, GenerationConfig
path = {str(run_dir / "hf_model")!r}
model = EncoderDecoderModel.from_pretrained(path)
source = AutoTokenizer.from_pretrained(path + "/encoder_tokenizer")
target = AutoTokenizer.from_pretrained(path + "/decoder_tokenizer")
ids = model.generate(**source(["a paper about parsing"], return_tensors="pt"), max_new_tokens=5)
assert ids[0, 0].item() == model.generation_config.decoder_start_token_id == target.cls_token_id
print("ok", target.decode(ids[0], skip_special_tokens=True))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("ok")


@pytest.mark.parametrize("target", ["run", "hf_model", "ckpt"])
def test_eval_on_run_folder_export_and_checkpoint(trained_run, target, tmp_path):
    run_dir, _ = trained_run
    path = {"run": run_dir, "hf_model": run_dir / "hf_model", "ckpt": run_dir / "checkpoints" / "last.ckpt"}[target]
    out = tmp_path / "eval"
    result = run_script(
        "eval.py", f"model_path={path}", "data.max_test_samples=2", "data.max_source_length=32", f"hydra.run.dir={out}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(k for k in metrics if k.startswith("test/")) == {
        "test/rouge1",
        "test/rouge2",
        "test/rougeL",
        "test/rougeLsum",
    }
    assert json.loads(result.stdout)["test/rouge1"] == metrics["test/rouge1"]
    assert {k for k in metrics if k.startswith("baseline/lead1/")} == {
        f"baseline/lead1/{n}" for n in ("rouge1", "rouge2", "rougeL", "rougeLsum")
    }
    assert metrics["baseline/lead3/rouge1"] >= metrics["baseline/lead1/rouge1"] > 0


def test_predict_one_summary_per_line(trained_run, tmp_path):
    run_dir, _ = trained_run
    result = run_script("predict.py", f"model_path={run_dir}", "input=-", stdin="first document here\n\nsecond one\n")
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(result.stdout.splitlines()) == 3
    assert result.stdout.splitlines()[1] == ""


def test_summarize_under_a_token_budget_matches_one_at_a_time(trained_run):
    """Budget batches (several rows each, padded) give the summaries of unpadded one-document batches."""
    from encdec.inference import load_trained, summarize

    run_dir, _ = trained_run
    model, encoder_tokenizer, decoder_tokenizer = load_trained(run_dir)
    model.generation_config.max_new_tokens = 6
    words = "parsing models of language with trees and graphs for many tasks".split()
    documents = [" ".join(words[: 2 + (i * 5) % 11]) for i in range(12)]
    calls = []
    generate = model.generate

    def counting(*args, **kwargs):
        calls.append(kwargs["input_ids"].shape)
        return generate(*args, **kwargs)

    model.generate = counting
    one_at_a_time = summarize(model, encoder_tokenizer, decoder_tokenizer, documents, batch_size=1, progress=False)
    calls.clear()
    budgeted = summarize(
        model, encoder_tokenizer, decoder_tokenizer, documents, batch_size=1, max_tokens=60, progress=False
    )
    assert budgeted == one_at_a_time
    # rows * (longest source + 6 new tokens) <= 60 in every batch: longest sources (13 tokens) 3 a batch, shortest more
    assert all(rows * (width + 6) <= 60 for rows, width in calls), calls
    assert sum(rows for rows, _ in calls) == 12 and len(calls) < 12 and max(rows for rows, _ in calls) > 3


@pytest.mark.parametrize(
    "script,override", [("eval.py", "data.eval_max_tokens_per_batch=-1"), ("predict.py", "max_tokens_per_batch=0")]
)
def test_bad_generation_budget_is_one_line(trained_run, tmp_path, script, override):
    run_dir, _ = trained_run
    extra = ["input=-"] if script == "predict.py" else [f"hydra.run.dir={tmp_path / 'out'}"]
    result = run_script(script, f"model_path={run_dir}", override, *extra, stdin="a document\n")
    assert result.returncode == 2, result.stderr[-2000:]
    name, value = override.split("=")
    assert error_lines(result.stderr) == [
        f"encdec: error: {name}={value} must be a positive integer or null (batches of a fixed size)"
    ]
    assert not (tmp_path / "out").exists()


def test_files_data_and_tiny_run(tiny_files, tmp_path):
    run_dir = tmp_path / "run"
    result = run_script(
        "train.py",
        "encoder=tiny",
        "decoder=tiny",
        "data=files",
        *SMOKE,
        f"data.train_file={tiny_files['train']}",
        f"data.validation_file={tiny_files['validation']}",
        f"data.test_file={tiny_files['test']}",
        "generation=beam",
        "data.max_tokens_per_batch=48",
        f"hydra.run.dir={run_dir}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run_dir / "hf_model" / "model.safetensors").is_file()
    # 4 rows of ~12 source + 4 target tokens under a 48-token budget: 2 per batch, so max_steps=2 is reached
    assert json.loads((run_dir / "metrics.json").read_text())["train/steps"] == 2


def test_rerun_into_existing_run_is_refused(trained_run):
    run_dir, _ = trained_run
    saved = {
        name: (run_dir / name).read_bytes() for name in ("metrics.json", ".hydra/config.yaml", ".hydra/overrides.yaml")
    }
    result = run_script("train.py", "encoder=tiny", "decoder=tiny", *SMOKE, "seed=7", f"hydra.run.dir={run_dir}")
    assert result.returncode == 2
    assert error_lines(result.stderr) == [
        f"encdec: error: run folder {run_dir} already holds results (checkpoints, "
        "hf_model, metrics.json, predictions.jsonl): choose another hydra.run.dir"
    ]
    # Refused before Hydra writes .hydra/: the run's saved config still says how it was trained.
    assert {name: (run_dir / name).read_bytes() for name in saved} == saved


def test_eval_into_a_run_folder_is_refused(trained_run):
    run_dir, _ = trained_run
    saved = {
        name: (run_dir / name).read_bytes() for name in ("metrics.json", "predictions.jsonl", ".hydra/config.yaml")
    }
    result = run_script("eval.py", f"model_path={run_dir}", f"hydra.run.dir={run_dir}")
    assert result.returncode == 2
    assert "already holds results" in error_lines(result.stderr)[0]
    assert {name: (run_dir / name).read_bytes() for name in saved} == saved


def bad(tmp_path, *args):
    run_dir = tmp_path / "outputs" / "2026-11-26" / "bad-run"  # Hydra makes all three folders
    result = run_script("train.py", "encoder=tiny", "decoder=tiny", *SMOKE, *args, f"hydra.run.dir={run_dir}")
    return result, run_dir


@pytest.mark.parametrize(
    "args,culprit",
    [
        (("decoder=bert",), "decoder.pretrained=google-bert/bert-base-cased"),
        (("data=cnn_dailymail",), "abisee/cnn_dailymail"),
        (("encoder=auto", "encoder.pretrained=/nonexistent/model"), "encoder.pretrained=/nonexistent/model"),
        (("data.max_source_length=0",), "data.max_source_length=0"),
        (("data.max_source_length=100000",), "data.max_source_length=100000 exceeds"),
        (("data.batch_size=0",), "data.batch_size=0"),
        (("data.max_tokens_per_batch=-5",), "data.max_tokens_per_batch=-5"),
        (("data.eval_max_tokens_per_batch=0",), "data.eval_max_tokens_per_batch=0"),
        (("optimizer.lr=-1",), "optimizer.lr=-1"),
        (
            ("checkpoint.every_n_steps=1", "checkpoint.keep_steps=0"),
            "checkpoint.keep_steps=0 must be an integer >= 1 or null",
        ),
        (
            ("data=files", "data.train_file=/nope/train.jsonl", "data.validation_file=/nope/val.jsonl"),
            "data.train_file=/nope/train.jsonl: no such file",
        ),
        (("data=files", "data.train_file=/", "data.validation_file=/"), "data.train_file=/ is a folder: give one file"),
        # the data loads before the model: a typo in a file name fails before gigabytes of weights download
        (
            (
                "data=files",
                "data.train_file=/nope/train.jsonl",
                "data.validation_file=/nope/val.jsonl",
                "encoder=auto",
                "encoder.pretrained=/nonexistent/model",
            ),
            "data.train_file=/nope/train.jsonl: no such file",
        ),
        (("encoder.overrides.not_a_field=1",), "encoder.overrides.not_a_field"),
        (("+encoder.overrides.not_a_field=1",), "encoder.overrides.not_a_field"),
        (("generation.num_beams=0",), "generation"),
        # tiny's size overrides on the packaged MiniLM weights (what experiment presets + encoder=tiny ask for)
        (
            ("encoder.init=pretrained",),
            "do not fit the model that encoder.overrides describe (layer sizes differ): "
            "drop the size overrides to warm-start from these weights, or set encoder.init=random",
        ),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, args, culprit):
    result, run_dir = bad(tmp_path, *args)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and culprit in lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "outputs").exists() and tmp_path.is_dir()  # what Hydra made goes, nothing above it


def test_local_folder_that_is_not_a_model(tmp_path):
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    result, run_dir = bad(tmp_path, "decoder=auto", f"decoder.pretrained={folder}")
    assert result.returncode == 2
    assert "not a model folder" in error_lines(result.stderr)[0]


@pytest.mark.parametrize(
    "content,culprit",
    [
        (b"", "is empty"),
        (b'{"text": "a", "summary": "b"}\n', "data.text_column=document is not a column"),
        (b'{"document": "", "summary": "b"}\n{"document": null, "summary": "c"}\n', "no rows with both"),
        (b'{"document": "caf\xe9 ol\xe9", "summary": "b"}\n', "not UTF-8"),
    ],
)
def test_bad_data_files(tmp_path, tiny_files, content, culprit):
    train = tmp_path / "broken.jsonl"
    train.write_bytes(content)
    result, run_dir = bad(
        tmp_path, "data=files", f"data.train_file={train}", f"data.validation_file={tiny_files['validation']}"
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert culprit in error_lines(result.stderr)[0], result.stderr[-2000:]
    assert not (tmp_path / "outputs").exists() and tmp_path.is_dir()


def test_wrong_extension(tmp_path, tiny_files):
    train = tmp_path / "train.txt"
    train.write_text("hello\n")
    result, _ = bad(
        tmp_path, "data=files", f"data.train_file={train}", f"data.validation_file={tiny_files['validation']}"
    )
    assert "unsupported extension '.txt'" in error_lines(result.stderr)[0]


def test_missing_required_value(tmp_path):
    result, run_dir = bad(tmp_path, "decoder=auto")
    assert result.returncode == 2
    assert "decoder.pretrained is required" in error_lines(result.stderr)[0]


def test_eval_on_folder_that_is_not_a_run(tmp_path):
    result = run_script("eval.py", f"model_path={tmp_path}", f"hydra.run.dir={tmp_path / 'out'}")
    assert result.returncode == 2
    assert "is not a run folder" in error_lines(result.stderr)[0]


def test_eval_scores_on_the_data_the_run_trained_with(trained_run, tmp_path):
    # The run trained on aclsum with max_test_samples=2 (SMOKE): eval.py, given no data=, scores those 2 rows,
    # not eval.yaml's default (all 100); a single data.KEY=V still applies on top.
    run_dir, _ = trained_run
    for extra, rows in (([], 2), (["data.max_test_samples=1"], 1)):
        out = tmp_path / f"eval{rows}"
        result = run_script("eval.py", f"model_path={run_dir / 'hf_model'}", *extra, f"hydra.run.dir={out}")
        assert result.returncode == 0, result.stderr[-2000:]
        assert "data: aclsum, as the model was trained" in result.stderr
        assert len((out / "predictions.jsonl").read_text().splitlines()) == rows


def test_eval_names_a_corrupt_saved_config_of_the_run(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text("data: [1,\n")
    result = run_script("eval.py", f"model_path={run_dir}", f"hydra.run.dir={tmp_path / 'out'}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert error_lines(result.stderr) == [
        f"encdec: error: model_path={run_dir}: its run folder {run_dir}: .hydra/config.yaml is not readable YAML "
        "(ParserError): restore it from a copy of the run"
    ]


def test_predict_with_a_generation_preset(trained_run):
    # The presets read data.max_target_length, which predict.py has not: the model's saved length is kept.
    run_dir, _ = trained_run
    result = run_script("predict.py", f"model_path={run_dir}", "input=-", "generation=beam", stdin="a document\n")
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(result.stdout.splitlines()) == 1


@pytest.mark.parametrize("preset, beams", [(None, 1), ("beam", 4)])
def test_predict_generates_with_the_saved_length_and_the_presets_beams(
    trained_run, monkeypatch, tmp_path, preset, beams
):
    # The run saved its summary length (data.max_target_length=8 in SMOKE); a preset brings its beams, and its
    # max_new_tokens (null without data) keeps the saved length.
    import in_process

    run_dir, _ = trained_run
    saved = json.loads((run_dir / "hf_model" / "generation_config.json").read_text())
    assert saved["max_new_tokens"] == 8 and saved.get("num_beams", 1) == 1
    calls = spy_on_generate(monkeypatch)
    args = [f"model_path={run_dir}", "input=-", *([f"generation={preset}"] if preset else [])]
    outcome = in_process.run("predict.py", *args, cwd=tmp_path, stdin=b"a document\nanother document\n")
    assert outcome.code == 0, outcome.stderr[-2000:]
    assert calls == [{"num_beams": beams, "max_new_tokens": 8, "max_length": calls[0]["max_length"]}]


def test_predict_stdin_that_is_not_utf8(trained_run):
    run_dir, _ = trained_run
    result = subprocess.run(
        [sys.executable, str(ROOT / "predict.py"), f"model_path={run_dir}", "input=-"],
        input=b"\xff\xfe\xfa broken\n",
        capture_output=True,
        env=script_environment(),
        cwd=ROOT,
    )
    stderr = result.stderr.decode()
    assert result.returncode == 2 and "Traceback" not in stderr
    assert error_lines(stderr) == [
        "encdec: error: input=- received text that is not UTF-8: convert it first (iconv -t UTF-8)"
    ]


def test_predict_empty_input(trained_run):
    run_dir, _ = trained_run
    result = run_script("predict.py", f"model_path={run_dir}", "input=-", stdin="\n\n")
    assert result.returncode == 2
    assert "is empty" in error_lines(result.stderr)[0]


@pytest.mark.slow
@pytest.mark.parametrize("pair", [("minilm", "minilm"), ("minilm", "smollm2"), ("tiny", "minilm")])
def test_short_run_for_packaged_families(tmp_path, pair):
    encoder, decoder = pair
    run_dir = tmp_path / "run"
    result = run_script(
        "train.py",
        f"encoder={encoder}",
        f"decoder={decoder}",
        *SMOKE,
        f"hydra.run.dir={run_dir}",
        "checkpoint.save_top_k=0",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["train/steps"] == 2 and metrics["val/loss"] > 0
    assert (run_dir / "hf_model" / "model.safetensors").is_file()


def test_more_devices_than_exist(tmp_path):
    result, run_dir = bad(tmp_path, "trainer.accelerator=gpu", "trainer.devices=2")  # this machine has no GPU
    assert result.returncode == 2, result.stderr[-2000:]
    assert error_lines(result.stderr)[0].startswith("encdec: error: trainer:")
    assert not run_dir.exists()


def test_non_finite_loss_stops_and_keeps_checkpoints(tmp_path):
    run_dir = tmp_path / "nan-run"
    result = run_script(
        "train.py",
        "encoder=tiny",
        "decoder=tiny",
        *SMOKE,
        "trainer.max_steps=6",
        "trainer.max_epochs=3",
        "checkpoint.every_n_steps=1",
        "optimizer.lr=1e30",
        "trainer.gradient_clip_val=null",
        f"hydra.run.dir={run_dir}",
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "training loss became" in error_lines(result.stderr)[0]
    assert list((run_dir / "checkpoints").glob("step*.ckpt"))
    assert not (run_dir / "metrics.json").exists() and not (run_dir / "hf_model").exists()


def test_truncated_checkpoint_is_refused(trained_run, tmp_path):
    run_dir, _ = trained_run
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes((run_dir / "checkpoints" / "last.ckpt").read_bytes()[:5000])
    result = run_script("eval.py", f"model_path={broken}", f"hydra.run.dir={tmp_path / 'out'}")
    assert result.returncode == 2
    assert "not a readable checkpoint" in error_lines(result.stderr)[0]


def test_resume_refuses_a_truncated_newest_checkpoint(tmp_path):
    import torch

    from conftest import run_folder_with_a_checkpoint
    from encdec.errors import EncdecError
    from encdec.lit.resume import resume_point

    run_dir, whole = run_folder_with_a_checkpoint(tmp_path, {"state_dict": {"w": torch.zeros(1000)}})
    assert resume_point(run_dir)[1] == whole
    cut = run_dir / "checkpoints" / "last.ckpt"
    cut.write_bytes(whole.read_bytes()[:3000])  # written after step2.ckpt: the newest
    with pytest.raises(EncdecError, match=r"checkpoints/last.ckpt is truncated or corrupt .*move it aside"):
        resume_point(run_dir)
    cut.unlink()
    assert resume_point(run_dir)[1] == whole


def test_summarize_returns_summaries_in_input_order():
    """Batches are cut from length-sorted documents; the summaries must still come back in input order."""
    import torch

    from conftest import compose_config
    from encdec.inference import summarize
    from encdec.sources import resolve

    class SourceLengthModel:  # "summarizes" a document as its number of source tokens
        generation_config = GenerationConfig()

        def to(self, device):
            return self

        def eval(self):
            return self

        def generate(self, input_ids, attention_mask, **kwargs):
            return attention_mask.sum(1, keepdim=True)

    class NumberTokenizer:
        def batch_decode(self, generated, **kwargs):
            return [f" {int(row[0])} " for row in generated]

    encoder_tokenizer = AutoTokenizer.from_pretrained(
        resolve(compose_config("encoder=minilm").encoder.pretrained, "encoder.pretrained")
    )
    documents = ["alpha beta", "alpha beta gamma delta epsilon", "alpha", "alpha beta gamma"]
    expected = [str(len(encoder_tokenizer(d)["input_ids"])) for d in documents]
    assert expected == ["4", "7", "3", "5"]
    summaries = summarize(
        SourceLengthModel(),
        encoder_tokenizer,
        NumberTokenizer(),
        documents,
        batch_size=2,
        device=torch.device("cpu"),
        progress=False,
    )
    assert summaries == expected


@pytest.mark.parametrize("script", ["train.py", "eval.py", "predict.py"])
def test_help_shows_usage_and_its_examples_compose(script):
    from encdec.arguments import checked_arguments

    result = run_script(script, "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith(f"encdec {script}: ")
    assert "Usage: python " + script in result.stdout
    generation_options = sorted(path.stem for path in (ROOT / "conf" / "generation").glob("*.yaml"))
    if script == "train.py":
        assert "generation: " + ", ".join(generation_options) in result.stdout  # Hydra's own listing
    else:
        assert ", ".join(generation_options[:-1]) + " or " + generation_options[-1] in result.stdout
    examples = [
        line.strip().split("  ")[0].split()[2:]
        for line in result.stdout.splitlines()
        if line.strip().startswith(f"python {script} ") and "resume=" not in line and "DATE" not in line
    ]
    assert script != "train.py" or len([example for example in examples if example]) >= 4
    for example in examples:
        checked_arguments(example, script.removesuffix(".py"), ROOT / "conf")  # raises EncdecError on a bad example


def test_keep_steps_keeps_the_newest_step_checkpoints(tmp_path, tiny_files):
    run_dir = tmp_path / "run"
    result = run_script(
        "train.py",
        "encoder=tiny",
        "decoder=tiny",
        *SMOKE,
        "data=files",
        f"data.train_file={tiny_files['train']}",
        f"data.validation_file={tiny_files['validation']}",
        f"data.test_file={tiny_files['test']}",
        "trainer.max_steps=5",
        "trainer.max_epochs=5",
        "checkpoint.every_n_steps=1",
        "checkpoint.keep_steps=2",
        f"hydra.run.dir={run_dir}",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    steps = sorted(path.name for path in (run_dir / "checkpoints").glob("step*.ckpt"))
    assert steps == ["step4.ckpt", "step5.ckpt"]
