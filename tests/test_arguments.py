"""The command line before Hydra: pass-through keys without `+`, and every composition mistake as one line."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from conftest import CONF, SMOKE, error_lines, run_script
from encdec.arguments import checked_arguments
from encdec.cli import check_sweep_job
from encdec.errors import EncdecError


def check(*args: str, config_name: str = "train"):
    return checked_arguments(list(args), config_name, CONF)


@pytest.mark.parametrize(
    "arg, key, value",
    [
        ("encoder.overrides.hidden_dropout_prob=0.2", ("encoder", "overrides", "hidden_dropout_prob"), 0.2),
        (
            "decoder.overrides.attention_probs_dropout_prob=0.0",
            ("decoder", "overrides", "attention_probs_dropout_prob"),
            0.0,
        ),
        ("trainer.fast_dev_run=1", ("trainer", "fast_dev_run"), 1),
        ("optimizer.amsgrad=true", ("optimizer", "amsgrad"), True),
        ("generation.length_penalty=2.0", ("generation", "length_penalty"), 2.0),
    ],
)
def test_pass_through_keys_need_no_plus(arg, key, value):
    args, cfg = check(arg)
    assert args == ["++" + arg]
    node = cfg
    for part in key:
        node = node[part]
    assert node == value


def test_preset_keys_are_left_alone():
    # A key the preset already lists (tiny's hidden_size) is a plain override, not an addition.
    args, cfg = check("encoder=tiny", "encoder.overrides.hidden_size=16", "trainer.max_steps=3")
    assert args == ["encoder=tiny", "encoder.overrides.hidden_size=16", "trainer.max_steps=3"]
    assert cfg.encoder.overrides.hidden_size == 16 and cfg.trainer.max_steps == 3


def test_pass_through_follows_the_chosen_target():
    # Adafactor takes clip_threshold, AdamW does not: the check reads the optimizer the command line picks.
    args, cfg = check("optimizer=adafactor", "optimizer.clip_threshold=2.0")
    assert cfg.optimizer.clip_threshold == 2.0
    with pytest.raises(EncdecError, match=r"^optimizer.clip_threshold is not a setting of optimizer"):
        check("optimizer.clip_threshold=2.0")


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["encoder=bret"],
            "encoder=bret: no such encoder option (did you mean encoder=bert?); choose from auto, bert, "
            "minilm, roberta, smollm2, tiny",
        ),
        (
            ["data.batchsize=4"],
            "data.batchsize is not a setting of data (did you mean data.batch_size=4?); to add a new "
            "key on purpose write +data.batchsize=4",
        ),
        (
            ["trainer.max_step=3"],
            "trainer.max_step is not a setting of trainer (did you mean trainer.max_steps=3?); to add "
            "a new key on purpose write +trainer.max_step=3",
        ),
        (
            ["optimizer=adam", "optimizer.amsgrad=true", "optimizer.amsgradd=1"],
            "optimizer.amsgradd is not a setting of optimizer (did you mean optimizer.amsgrad=1?); to add a new key on purpose "
            "write +optimizer.amsgradd=1",
        ),
        (
            ["generation.lenght_penalty=2"],
            "generation.lenght_penalty is not a setting of generation (did you mean "
            "generation.length_penalty=2?); to add a new key on purpose write "
            "+generation.lenght_penalty=2",
        ),
        (
            ["data.pad_to_multiple_of=8"],
            "data.pad_to_multiple_of is not in this data preset: write +data.pad_to_multiple_of=8 to set it",
        ),
        (
            ["data.pad_to_multipl=8"],
            "data.pad_to_multipl is not a setting of data (did you mean +data.pad_to_multiple_of=8?)",
        ),
        (
            ["decoder.cross_attention.num_head=2"],
            "decoder.cross_attention.num_head is not a setting of "
            "decoder.cross_attention (did you mean decoder.cross_attention.num_heads=2?)",
        ),
        (["+data.batch_size=3"], "data.batch_size already exists: drop the leading + (write data.batch_size=VALUE)"),
        (
            ["optimizer.lr=1e-3,1e-4"],
            "optimizer.lr=1e-3,1e-4 lists several values: add --multirun to sweep them, or write KEY=[a,b] for a list",
        ),
        (
            ["data.batch_size=[1"],
            "data.batch_size=[1: not a valid override (no viable alternative at input '[1'); write "
            "KEY=VALUE and quote values with spaces or brackets",
        ),
        (
            ["-m", "optimizer.lr=1e-4,1e-3", "data.batchsiz=1,2"],
            "data.batchsiz is not a setting of data (did you mean data.batch_size=1,2?)",
        ),
    ],
)
def test_mistakes_are_one_line_with_the_closest_name(args, message):
    with pytest.raises(EncdecError) as caught:
        check(*args)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_multirun_checks_one_job_and_keeps_the_sweep():
    args, cfg = check("-m", "optimizer.lr=1e-4,1e-3", "trainer.fast_dev_run=1")
    assert args == ["-m", "optimizer.lr=1e-4,1e-3", "++trainer.fast_dev_run=1"] and cfg is None


@pytest.mark.parametrize(
    "sweep, message",
    [
        ("optimizer.lr=1e-4,3e-4,-1", "optimizer.lr=-1: Invalid learning rate: -1"),
        ("encoder=tiny,bret", "encoder=bret: no such encoder option (did you mean encoder=bert?)"),
        ("data.batch_size=4,0", "data.batch_size=0 must be a positive integer"),
        ("+data.batch_size=4,2", "data.batch_size already exists: drop the leading +"),
    ],
)
def test_multirun_checks_every_sweep_value_before_any_job(sweep, message):
    # Hydra's grid sweeper stops at the first failing job: a bad last value must be caught before the first runs.
    with pytest.raises(EncdecError) as caught:
        checked_arguments(
            ["-m", "encoder=tiny", "decoder=tiny", "seed=1,2", sweep], "train", CONF, check_job=check_sweep_job
        )
    assert str(caught.value).startswith(message)


def test_multirun_check_job_sees_each_value_once():
    seen = []
    args, cfg = checked_arguments(
        ["-m", "encoder=tiny", "decoder=tiny", "optimizer.lr=1e-4,3e-4", "seed=1,2,3"],
        "train",
        CONF,
        check_job=lambda job: seen.append((job.optimizer.lr, job.seed)),
    )
    assert seen == [(1e-4, 1), (3e-4, 1), (1e-4, 2), (1e-4, 3)] and cfg is None


def test_hydra_flags_are_left_to_hydra():
    assert check("--help", "data.batchsize=4") == (["--help", "data.batchsize=4"], None)
    args, cfg = check("--cfg", "job", "trainer.fast_dev_run=1")
    assert args == ["--cfg", "job", "++trainer.fast_dev_run=1"]


def test_eval_and_predict_take_generation_keys():
    args, cfg = check("model_path=x", "generation.num_beams=3", config_name="eval")
    assert args == ["model_path=x", "++generation.num_beams=3"] and cfg.generation.num_beams == 3
    args, cfg = check("model_path=x", "input=-", "generation=beam", config_name="predict")
    assert cfg.generation.num_beams == 4


def test_through_the_script_exit_2_and_no_run_folder(tmp_path):
    run_dir = tmp_path / "run"
    result = run_script("train.py", "encoder=tiny", "decoder=tiny", "data.batchsize=4", f"hydra.run.dir={run_dir}")
    assert result.returncode == 2
    assert error_lines(result.stderr) == [
        "encdec: error: data.batchsize is not a setting of data (did you mean data.batch_size=4?); to add a new key on "
        "purpose write +data.batchsize=4"
    ]
    assert len(result.stderr.strip().splitlines()) == 1
    assert not run_dir.exists()


def test_through_the_script_a_bad_late_sweep_value_runs_no_job(tmp_path):
    sweep = tmp_path / "grid"
    result = run_script(
        "train.py", "-m", "encoder=tiny", "decoder=tiny", "optimizer.lr=1e-4,-1", *SMOKE, f"hydra.sweep.dir={sweep}"
    )
    assert result.returncode == 2
    assert error_lines(result.stderr) == ["encdec: error: optimizer.lr=-1: Invalid learning rate: -1"]
    assert not sweep.exists()


def test_through_the_script_pass_through_reaches_the_trainer(tmp_path):
    # fast_dev_run is a Trainer argument the config does not list: it must arrive (1 batch, no checkpoints).
    run_dir = tmp_path / "run"
    result = run_script(
        "train.py",
        "encoder=tiny",
        "decoder=tiny",
        *SMOKE,
        "trainer.fast_dev_run=1",
        "encoder.overrides.hidden_dropout_prob=0.0",
        f"hydra.run.dir={run_dir}",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    saved = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    assert saved.trainer.fast_dev_run == 1 and saved.encoder.overrides.hidden_dropout_prob == 0.0
    assert json.loads((run_dir / "metrics.json").read_text())["train/steps"] == 1  # SMOKE alone trains 2
