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


# ------------------------------------------------------------------------- sizes and counts of the model's config

SIZE_FIX = "must be a positive integer (a size or count of the {role}): set {role}.overrides.{key} to 1 or more"


@pytest.mark.parametrize(
    "role, key, value",
    [
        ("encoder", "num_hidden_layers", "-1"),  # issue 28: built an encoder with no layers, trained and exported
        ("encoder", "num_hidden_layers", "0"),
        ("decoder", "num_hidden_layers", "0"),
        ("encoder", "hidden_size", "-64"),
        ("decoder", "num_attention_heads", "0"),
        ("decoder", "intermediate_size", "-1"),
        ("encoder", "vocab_size", "0"),
        ("decoder", "max_position_embeddings", "0"),
        ("encoder", "type_vocab_size", "0"),
        ("decoder", "hidden_size", "1.5"),
        ("decoder", "num_hidden_layers", "true"),
        ("encoder", "hidden_size", "abc"),
        ("decoder", "num_key_value_heads", "-2"),  # keys the family does not declare are refused later by name
        ("decoder", "head_dim", "0"),
        ("encoder", "n_layer", "-3"),  # GPT-2's spelling
        ("decoder", "d_model", "0"),  # BART's
    ],
)
def test_a_size_or_count_below_one_is_named_before_anything_loads(role, key, value):
    with pytest.raises(EncdecError) as caught:
        check_run_settings(compose_config("encoder=tiny", "decoder=tiny", f"++{role}.overrides.{key}={value}"))
    shown = {"true": "True"}.get(value, value)
    assert str(caught.value).startswith(f"{role}.overrides.{key}={shown} " + SIZE_FIX.format(role=role, key=key))


@pytest.mark.parametrize(
    "override",
    [
        "encoder.overrides.num_hidden_layers=1",
        "decoder.overrides.hidden_size=8",
        "+decoder.overrides.n_inner=null",  # GPT-2's "4 x the width"
        "+decoder.overrides.max_window_layers=0",  # Qwen2: 0 layers before sliding windows is a choice
        "+encoder.overrides.tie_word_embeddings=true",  # not a size, though its name ends like one
        "+encoder.overrides.hidden_dropout_prob=0.0",
        "+decoder.overrides.layer_norm_eps=1e-5",
    ],
)
def test_sizes_that_mean_something_pass(override):
    check_run_settings(compose_config("encoder=tiny", "decoder=tiny", override))


def test_every_size_and_count_of_the_families_is_recognised():
    # The families encdec presets: each config's sizes are positive and recognised by name, nothing else is.
    from encdec.checks import is_size_key
    from encdec.tiny_configs import tiny_causal_lm_config

    expected = {
        "llama": {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"}
        | {"num_key_value_heads", "head_dim", "max_position_embeddings"},
        "gpt2": {"vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_inner"},
        "bart": {"vocab_size", "max_position_embeddings", "d_model", "encoder_layers", "decoder_layers"}
        | {"encoder_ffn_dim", "decoder_ffn_dim", "encoder_attention_heads", "decoder_attention_heads"},
        "opt": {"vocab_size", "hidden_size", "num_hidden_layers", "ffn_dim", "max_position_embeddings"}
        | {"word_embed_proj_dim", "num_attention_heads"},
    }
    for model_type, sizes in expected.items():
        found = {key for key in tiny_causal_lm_config(model_type).to_dict() if is_size_key(key)}
        assert found == sizes, model_type


def family_config(model_type: str, **overrides):
    from encdec.tiny_configs import tiny_causal_lm_config

    config = tiny_causal_lm_config(model_type)  # hidden 32, 4 heads, 2 key/value heads
    for key, value in overrides.items():
        setattr(config, key, value)  # as models.side_config applies encoder/decoder.overrides
    return config


@pytest.mark.parametrize(
    "model_type, overrides, line",
    [
        # Qwen2 derives its head size (32 // 5 = 6) and would build 30-wide attention on a 32-wide model silently.
        (
            "qwen2",
            {"num_attention_heads": 5},
            "decoder.overrides.num_attention_heads=5: the decoder's width 32 is not a multiple of its 5 attention "
            "heads: set decoder.overrides.num_attention_heads to a divisor of 32 (or hidden_size to a multiple of 5)",
        ),
        (
            "qwen2",
            {"hidden_size": 30},
            "decoder.overrides.hidden_size=30: the decoder's width 30 is not a multiple of its 4 attention heads",
        ),
        (
            "gpt2",
            {"n_head": 3},
            "decoder.overrides.n_head=3: the decoder's width 32 is not a multiple of its 3 attention heads",
        ),
        (
            "bart",
            {"decoder_attention_heads": 3},
            "decoder.overrides.decoder_attention_heads=3: the decoder's width 32 is not a multiple of its 3",
        ),
        # Llama repeats each key/value head heads // kv_heads times: 4 // 3 = 1 failed in the first forward pass.
        (
            "llama",
            {"num_key_value_heads": 3},
            "decoder.overrides.num_key_value_heads=3: the decoder's 4 attention heads are not a multiple of its 3 "
            "key/value heads: set decoder.overrides.num_key_value_heads to a divisor of 4",
        ),
        (
            "mistral",
            {"num_attention_heads": 3},
            "decoder.overrides.num_attention_heads=3: the decoder's 3 attention heads are not a multiple of its 2",
        ),
    ],
)
def test_sizes_a_family_refuses_late_or_never_are_named(model_type, overrides, line):
    from encdec.checks import check_model_config

    with pytest.raises(EncdecError) as caught:
        check_model_config(family_config(model_type, **overrides), "decoder", overrides)
    assert str(caught.value).startswith(line)


@pytest.mark.parametrize(
    "model_type, overrides",
    [
        ("qwen2", {"num_attention_heads": 8, "num_key_value_heads": 4}),
        ("gpt2", {"n_head": 8}),
        ("llama", {"num_attention_heads": 6}),  # Llama's own head_dim: 6 x 8 need not be the width (Gemma's 7B)
        ("gemma", {"num_key_value_heads": 1}),
        ("gpt_neox", {}),  # no key/value heads of its own
    ],
)
def test_consistent_family_sizes_pass(model_type, overrides):
    from encdec.checks import check_model_config

    check_model_config(family_config(model_type, **overrides), "decoder", overrides)


@pytest.mark.parametrize(
    "override, line",
    [
        (
            "encoder.overrides.num_hidden_layers=-1",
            "encoder.overrides.num_hidden_layers=-1 " + SIZE_FIX.format(role="encoder", key="num_hidden_layers"),
        ),
        (
            "decoder.overrides.num_attention_heads=3",
            "decoder.overrides.num_attention_heads=3: the decoder's width 64 is not a multiple of its 3 attention "
            "heads: set decoder.overrides.num_attention_heads to a divisor of 64 (or hidden_size to a multiple of 3)",
        ),
    ],
)
def test_model_sizes_through_the_script(tmp_path, override, line):
    run_dir = tmp_path / "run"
    result = run_script("train.py", "encoder=tiny", "decoder=tiny", override, f"hydra.run.dir={run_dir}")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    [error] = error_lines(result.stderr)
    assert error.startswith(f"encdec: error: {line}")
    assert "model:" not in result.stdout  # refused before the model was built
    assert not run_dir.exists()
