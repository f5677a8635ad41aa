"""Settings checked before the model loads: one line naming the key and what it takes."""

from __future__ import annotations

import pytest

from conftest import compose_config, error_lines, run_script
from encdec.checks import check_run_settings
from encdec.errors import EncdecError


@pytest.mark.parametrize(
    "override, message",
    [
        ("optimizer.lr=abc", "optimizer.lr=abc must be a number"),
        ("optimizer.lr=-1", "optimizer.lr=-1: Invalid learning rate: -1"),
        ("optimizer.weight_decay=-1", "optimizer.weight_decay=-1: Invalid weight_decay value: -1"),
        ("optimizer.betas=[2,0.9]", "optimizer.betas=[2,0.9]: Invalid beta parameter at index 0: 2"),
        ("optimizer.eps=-1", "optimizer.eps=-1: Invalid epsilon value: -1"),
        ("seed=abc", "seed=abc must be an integer from 0 to 4294967295"),
        ("seed=-1", "seed=-1 must be an integer from 0 to 4294967295"),
        (
            "data.max_train_samples=abc",
            "data.max_train_samples=abc must be a positive integer, or null for the whole split",
        ),
        ("data.max_test_samples=0", "data.max_test_samples=0 must be a positive integer"),
        ("data.empty_rows=eror", "data.empty_rows=eror: use skip or error"),
        ("checkpoint.every_n_steps=-1", "checkpoint.every_n_steps=-1 must be an integer >= 1 or null"),
        ("checkpoint.save_top_k=-2", "checkpoint.save_top_k=-2 must be an integer >= -1"),
        ("checkpoint.mode=maximum", "checkpoint.mode=maximum: use min (for val/loss) or max (for ROUGE)"),
        (
            "checkpoint.monitor=val/rouge3",
            "checkpoint.monitor=val/rouge3 is not a logged metric: use one of val/loss, "
            "val/rouge1, val/rouge2, val/rougeL, val/rougeLsum",
        ),
        ("model.lora.r=-1", "model.lora.r=-1 must be an integer >= 0 (0 turns LoRA off)"),
        ("scheduler.num_warmup_steps=-1", "scheduler.num_warmup_steps=-1 must be an integer >= 0"),
    ],
)
def test_bad_setting_is_named(override, message):
    with pytest.raises(EncdecError) as caught:
        check_run_settings(compose_config(override))
    assert str(caught.value).startswith(message)


def test_same_column_twice_is_named():
    cfg = compose_config("data=files", "data.text_column=summary")
    with pytest.raises(EncdecError, match="data.text_column and data.summary_column are both summary"):
        check_run_settings(cfg)


@pytest.mark.parametrize(
    "overrides",
    [
        (),
        ("optimizer=adafactor",),
        ("optimizer=adam", "optimizer.fused=true"),
        ("scheduler=none", "checkpoint.monitor=val/loss", "checkpoint.mode=min"),
    ],
)
def test_shipped_settings_pass(overrides):
    check_run_settings(compose_config(*overrides))


def test_through_the_script_before_the_model_loads(tmp_path):
    run_dir = tmp_path / "run"
    result = run_script(
        "train.py", "encoder=tiny", "decoder=tiny", "checkpoint.monitor=val/rouge3", f"hydra.run.dir={run_dir}"
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert error_lines(result.stderr)[0].startswith(
        "encdec: error: checkpoint.monitor=val/rouge3 is not a logged metric"
    )
    assert "model:" not in result.stdout  # refused before the model was built
    assert not run_dir.exists()
