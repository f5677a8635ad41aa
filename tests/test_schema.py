"""The config schema: every key encdec owns declared once with its type, range and help line, checked once."""

from __future__ import annotations

import dataclasses
import hashlib
from functools import partial

import pytest
from omegaconf import OmegaConf

from conftest import CONF, compose_config, error_lines, run_script
from encdec import pairings, schema, schema_help
from encdec.arguments import checked_arguments
from encdec.checks import check_data, check_generation, validate
from encdec.cli import check_sweep_job
from encdec.errors import EncdecError

# sha256 (first 16 hex digits) of OmegaConf.to_yaml of the composed config, taken before the schema existed: checking
# against the schema must leave what Hydra composes (key order, ints and floats, nulls) exactly as it was.
COMPOSED = [
    ("train", (), "afe4ea6a434a6281"),
    ("train", ("experiment=warm_start",), "8c76e8ec880e4d45"),
    ("train", ("experiment=quickstart",), "afe4ea6a434a6281"),
    ("train", ("encoder=minilm", "decoder=tiny"), "cbb818c2e76f635a"),
    ("train", ("experiment=bert2gpt_cnn_dailymail",), "40958a7865462729"),
    ("train", ("hparams_search=tiny_optuna",), "6deba2f8f792c4fe"),
    (
        "train",
        (
            "data=files",
            "data.train_file=a",
            "data.validation_file=b",
            "generation=beam",
            "optimizer=adafactor",
            "scheduler=none",
        ),
        "e96792e342b4c028",
    ),
    ("eval", ("model_path=x",), "aaceb071af7edba6"),
    ("eval", ("model_path=x", "generation=sampling", "data=xsum"), "2cca620bb8befae3"),
    ("predict", ("model_path=x", "input=-"), "a5721b59cce469b0"),
    ("predict", ("model_path=x", "input=-", "generation=beam"), "305b85950555e330"),
    ("export", ("model_path=x",), "ef71b00d3b449232"),
]


def digest(cfg) -> str:
    return hashlib.sha256(OmegaConf.to_yaml(cfg).encode()).hexdigest()[:16]


@pytest.mark.parametrize("command, overrides, expected", COMPOSED)
def test_composed_config_is_unchanged_and_validation_leaves_it_so(command, overrides, expected):
    cfg = compose_config(*overrides, config_name=command)
    assert digest(cfg) == expected
    validate(cfg, command)
    assert digest(cfg) == expected


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group", ["data", "encoder", "decoder", "model", "generation", "checkpoint"])
def test_every_shipped_key_is_declared(group):
    # A key a preset ships but the schema does not declare would go unchecked and missing from --help.
    declared = schema.DecoderSide if group == "decoder" else schema.GROUPS[group]
    extra = {"auto": [f"{group}.pretrained=/some/folder"], "files": ["data.train_file=a", "data.validation_file=b"]}
    for option in options(group):
        node = compose_config(f"{group}={option}", *extra.get(option, []))[group]  # with its base (conf/_*.yaml)
        missing = _undeclared(declared, node, f"{group}.")
        assert not missing, f"{group}={option}: {missing}"


def _undeclared(declared: type, node, prefix: str) -> list[str]:
    fields = {spec.name: spec for spec in dataclasses.fields(declared)}
    hints = __import__("typing").get_type_hints(declared)
    missing = []
    for key in node:
        if key not in fields:
            missing.append(prefix + key)
        elif dataclasses.is_dataclass(hints[key]):
            missing += _undeclared(hints[key], node[key], f"{prefix}{key}.")
    return missing


@pytest.mark.parametrize(
    "group,option", [(g, o) for g in ("data", "encoder", "decoder", "generation", "experiment") for o in options(g)]
)
def test_every_shipped_option_passes(group, option):
    extra = {"auto": [f"{group}.pretrained=/some/folder"], "files": ["data.train_file=a", "data.validation_file=b"]}
    validate(compose_config(f"{group}={option}", *extra.get(option, [])))


@pytest.mark.parametrize(
    "command, args",
    [
        ("eval", ["model_path=x"]),
        ("eval", ["model_path=x", "generation=beam"]),
        ("predict", ["model_path=x", "input=-"]),
        ("export", ["model_path=x"]),
    ],
)
def test_other_commands_pass(command, args):
    validate(compose_config(*args, config_name=command), command)


def test_every_field_has_a_help_line():
    for declared in {*schema.COMMANDS.values(), *schema.GROUPS.values(), schema.Lora, schema.CrossAttention}:
        for spec in dataclasses.fields(declared):
            assert spec.metadata["help"].strip(), f"{declared.__name__}.{spec.name}"


@pytest.mark.parametrize(
    "command, override, message",
    [
        ("train", "data.batch_size=abc", "data.batch_size=abc must be a positive integer"),
        ("train", "data.max_source_length=0", "data.max_source_length=0 must be a positive integer"),
        (
            "train",
            "data.max_tokens_per_batch=0",
            "data.max_tokens_per_batch=0 must be a positive integer or null (batches of a fixed size)",
        ),
        (
            "train",
            "+data.pad_to_multiple_of=0",
            "data.pad_to_multiple_of=0 must be a positive integer, or null for no rounding",
        ),
        ("train", "data.group_by_length=1", "data.group_by_length=1: use auto, true or false"),
        ("train", "data.source=web", "data.source=web is unknown: use aclsum, files or hub"),
        (
            "train",
            "data.lead_copy_sentences=-2",
            "data.lead_copy_sentences=-2 must be an integer >= 0 (0 adds no lead copies)",
        ),
        ("train", "seed=4294967296", "seed=4294967296 must be an integer from 0 to 4294967295"),
        ("train", "model.compile=1.5", "model.compile=1.5: use true or false"),
        ("train", "model.lora.side=left", "model.lora.side=left is unknown: use decoder, encoder or both"),
        ("train", "encoder.init=rnd", "encoder.init=rnd: use pretrained or random"),
        (
            "train",
            "decoder.cross_attention.kind=cross",
            f"decoder.cross_attention.kind=cross: use {' or '.join(('auto', *pairings.names()))}",
        ),
        ("train", "decoder.lm_head_init=zero", "decoder.lm_head_init=zero: use identity or random"),
        (
            "train",
            "decoder.cross_attention.every_n_layers=0",
            "decoder.cross_attention.every_n_layers=0 must be a positive integer",
        ),
        ("train", "generation.num_beams=0", "generation.num_beams=0 must be an integer >= 1"),
        ("train", "generation.no_repeat_ngram_size=-1", "generation.no_repeat_ngram_size=-1 must be an integer >= 0"),
        ("train", "+generation.temperature=hot", "generation.temperature=hot must be a number"),
        (
            "train",
            "+generation.cache_implementation=paged",
            "generation.cache_implementation=paged: use dynamic (default) or static",
        ),
        ("train", "+generation.beams=2", "generation.beams is not a decoding setting; known: cache_implementation, "),
        ("train", "optimizer.lr=0", "optimizer.lr=0 must be positive"),
        ("train", "optimizer.new_params_lr=0", "optimizer.new_params_lr=0 must be positive, or null for optimizer.lr"),
        ("train", "checkpoint.keep_steps=0", "checkpoint.keep_steps=0 must be an integer >= 1 or null"),
        ("eval", "split=dev", "split=dev is unknown: use train, validation or test"),
        (
            "eval",
            "data.eval_max_tokens_per_batch=-5",
            "data.eval_max_tokens_per_batch=-5 must be a positive integer or null",
        ),
        ("predict", "batch_size=0", "batch_size=0 must be a positive integer"),
        (
            "predict",
            "max_tokens_per_batch=x",
            "max_tokens_per_batch=x must be a positive integer or null (batches of a fixed size)",
        ),
        (
            "predict",
            "max_source_length=0",
            "max_source_length=0 must be a positive integer or null (the training run's data.max_source_length)",
        ),
        ("export", "format=zip", "format=zip is not an export format: use format=hf or format=onnx"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_key(command, override, message):
    required = {"eval": ["model_path=x"], "predict": ["model_path=x", "input=-"], "export": ["model_path=x"]}
    cfg = compose_config(*required.get(command, []), override, config_name=command)
    with pytest.raises(EncdecError) as caught:
        validate(cfg, command)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_sampling_needs_a_probability_and_a_temperature():
    with pytest.raises(EncdecError, match=r"^generation: sampling needs 0 < top_p <= 1 and temperature > 0$"):
        validate(compose_config("generation=sampling", "generation.top_p=1.5"))
    check_generation({"do_sample": True, "top_p": None, "temperature": 0.7, "num_beams": 1})


def test_data_settings_alone_are_checked_as_on_the_command_line():
    data = compose_config().data
    check_data(data)
    for override, message in (
        (dict(eval_batch_size=0), "data.eval_batch_size=0 must be a positive integer"),
        (dict(length_jitter=-1), "data.length_jitter=-1 must be a number >= 0"),
    ):
        with pytest.raises(EncdecError) as caught:
            check_data(OmegaConf.merge(data, override))
        assert str(caught.value).startswith(message)


def test_an_interpolation_that_does_not_resolve_names_its_key():
    with pytest.raises(EncdecError, match=r"^data.batch_size=\$\{oops\}: Interpolation key 'oops' not found$"):
        validate(compose_config("data.batch_size=${oops}"))


def test_a_required_value_is_left_to_the_step_that_reads_it():
    validate(compose_config("encoder=auto"))  # encoder.pretrained=??? : cli.guarded names it when the model builds


def test_the_command_line_checks_a_single_run_before_anything_loads():
    with pytest.raises(EncdecError, match=r"^data.batch_size=abc must be a positive integer$"):
        checked_arguments(["data.batch_size=abc"], "train", CONF, check_job=check_sweep_job)
    with pytest.raises(EncdecError, match=r"^split=dev is unknown"):
        checked_arguments(
            ["model_path=x", "split=dev"], "eval", CONF, check_job=partial(check_sweep_job, command="eval")
        )
    # --cfg prints the config as composed: it checks nothing
    args, cfg = checked_arguments(["--cfg", "job", "data.batch_size=abc"], "train", CONF, check_job=check_sweep_job)
    assert cfg.data.batch_size == "abc"


def test_help_lists_every_setting_with_its_help_line():
    listing = schema_help.settings_help("train").splitlines()
    keys = [line.split()[0] for line in listing]
    assert len(keys) == len(set(keys)) and {
        "seed",
        "data.batch_size",
        "decoder.cross_attention.kind",
        "optimizer.new_params_lr",
        "export.push_to_hub",
    } <= set(keys)
    assert "data.max_train_samples" in keys and "task_name" not in keys
    row = next(line for line in listing if line.startswith("data.empty_rows "))
    assert row.split(None, 1)[1] == "rows with an empty text or summary: skip (and count) or error [skip | error]"
    result = run_script("train.py", "--help")
    assert result.returncode == 0, result.stderr
    assert all(line in result.stdout for line in listing)
    assert (
        result.stdout.index("== Groups")
        < result.stdout.index("data.batch_size ")
        < result.stdout.index("== Composed config")
    )
    for command in ("eval", "predict", "export"):
        assert "model_path" in schema_help.settings_help(command)


def test_through_the_script_a_bad_eval_setting_fails_before_the_model_loads(tmp_path):
    result = run_script("eval.py", f"model_path={tmp_path}", "data.batch_size=0", f"hydra.run.dir={tmp_path / 'ev'}")
    assert result.returncode == 2
    assert error_lines(result.stderr) == ["encdec: error: data.batch_size=0 must be a positive integer"]
    assert not (tmp_path / "ev").exists()
