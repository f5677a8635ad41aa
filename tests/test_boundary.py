"""The boundary: a library's error while encdec builds from the user's settings is one line naming those settings;
a bug in encdec keeps its traceback."""

from __future__ import annotations

import errno

import pytest
import torch

import in_process
from conftest import SMOKE
from encdec.boundary import lightning_settings, user_settings
from encdec.errors import EncdecError

# SMOKE stopped after the first step, with one row to validate on: a run that builds takes about two seconds.
FAST = (*SMOKE, "data.max_eval_samples=1", "data.max_test_samples=1")


def train(tmp_path, *args: str) -> in_process.Outcome:
    return in_process.run("train.py", *FAST, *args, cwd=tmp_path, stop_after_first_step=True)


def test_library_error_while_building_is_one_line_naming_the_overrides(tmp_path):
    # (hidden_size=7 with 12 heads was the example here; encdec now checks sizes itself: tests/test_checks.py)
    outcome = train(tmp_path, "encoder=minilm", "decoder=tiny", "+encoder.overrides.hidden_act=swishy")
    assert outcome.code == 2, outcome.stderr[-3000:]
    assert outcome.errors == ["encdec: error: encoder.overrides.hidden_act=swishy: KeyError 'swishy'"]
    assert "Traceback" not in outcome.stderr
    assert in_process.files_under(tmp_path) == set()  # no half-made run folder


def test_only_the_side_being_built_is_named(tmp_path):
    outcome = train(
        tmp_path,
        "encoder=tiny",
        "decoder=tiny",
        "encoder.overrides.hidden_dropout_prob=0.2",
        "+decoder.overrides.hidden_act=swishy",
    )
    assert outcome.code == 2, outcome.stderr[-3000:]
    assert outcome.errors == ["encdec: error: decoder.overrides.hidden_act=swishy: KeyError 'swishy'"]


def test_lightning_checks_at_fit_are_named_as_trainer_settings(tmp_path):
    # Found by the fuzzer: Lightning checks val_check_interval against the batches only when fit sets up the loop.
    outcome = train(tmp_path, "encoder=tiny", "decoder=tiny", "trainer.val_check_interval=1000")
    assert outcome.code == 2, outcome.stderr[-3000:]
    [line] = outcome.errors
    assert line.startswith(
        "encdec: error: trainer.max_steps=2 trainer.max_epochs=1 trainer.log_every_n_steps=1 "
        "trainer.val_check_interval=1000: `val_check_interval` (1000) must be less than or equal "
        "to the number of the training batches (2)."
    )
    # The validation before training drew a heatmap; still no half-made run folder is left.
    assert in_process.files_under(tmp_path) == set()


@pytest.mark.parametrize("new_tokens, code", [(512, 0), (513, 2)])
def test_decoding_stops_at_the_decoder_positions(tmp_path, new_tokens, code):
    # Found by the fuzzer: generation.max_new_tokens=100000 failed in BERT's embeddings at the first validation.
    outcome = train(
        tmp_path,
        "encoder=tiny",
        "decoder=tiny",
        f"generation.max_new_tokens={new_tokens}",
        "data.max_eval_samples=1",
        "callbacks=none",
    )
    assert outcome.code == code, outcome.stderr[-3000:]
    if code:
        assert outcome.errors == [
            "encdec: error: generation.max_new_tokens=513 runs past the decoder's 512 positions: "
            "set generation.max_new_tokens<=512"
        ]


@pytest.mark.parametrize(
    "run_dir, reason",
    [("/proc/encdec-run", " (No such file or directory at /proc/encdec-run);"), ("{file}/run", ": {file} is a file;")],
)
def test_a_run_folder_that_cannot_be_made_is_one_line(tmp_path, run_dir, reason):
    # Found by the fuzzer: Hydra makes the run folder before encdec runs, and failed there with a traceback.
    file = tmp_path / "notes.txt"
    file.write_text("mine")
    run_dir, reason = run_dir.format(file=file), reason.format(file=file)
    outcome = train(tmp_path, "encoder=tiny", "decoder=tiny", f"hydra.run.dir={run_dir}")
    assert outcome.code == 2
    assert outcome.errors == [
        f"encdec: error: hydra.run.dir={run_dir} cannot be made{reason} choose a folder you can write to"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"] and file.read_text() == "mine"


@pytest.mark.parametrize(
    "override, line",
    [
        (
            "encoder.overrides.vocab_size=7",
            "encoder.overrides.vocab_size=7: the encoder embeds 7 tokens but its tokenizer "
            "has 30522: give the encoder at least as many (or its own tokenizer)",
        ),
        # decoder.overrides.type_vocab_size=0 was here; it is refused before anything loads now (test_checks.py)
    ],
)
def test_settings_that_fail_only_when_the_model_runs_fail_while_it_is_built(tmp_path, override, line):
    # Found by the fuzzer: these built, then failed with an IndexError traceback in the first validation.
    outcome = train(tmp_path, "encoder=tiny", "decoder=tiny", override)
    assert (outcome.code, outcome.errors) == (2, [f"encdec: error: {line}"])
    assert "Traceback" not in outcome.stderr


def test_the_check_forward_pass_leaves_the_model_as_it_was():
    from conftest import compose_config
    from encdec.checks import check_forward_pass
    from encdec.models import build_model

    cfg = compose_config("encoder=tiny", "decoder=tiny")
    model, encoder_tokenizer, decoder_tokenizer = build_model(cfg)
    weights = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    random_state = torch.get_rng_state()
    check_forward_pass(model, encoder_tokenizer, decoder_tokenizer, cfg)
    assert model.training and torch.equal(torch.get_rng_state(), random_state)
    assert all(torch.equal(tensor, weights[name]) for name, tensor in model.state_dict().items())


def test_model_switches_take_only_booleans(tmp_path):
    # Found by the fuzzer: model.compile=1.5 was read as true and compiled the model (minutes of g++ on a CPU).
    outcome = train(tmp_path, "encoder=tiny", "decoder=tiny", "model.compile=1.5")
    assert (outcome.code, outcome.errors) == (2, ["encdec: error: model.compile=1.5: use true or false"])


def test_a_bug_in_encdec_inside_a_build_step_keeps_its_traceback(tmp_path, monkeypatch):
    from transformers import BertLMHeadModel

    # check_vocab (encdec code, inside the model's build step) then reads an attribute the object lacks: a bug.
    monkeypatch.setattr(BertLMHeadModel, "get_input_embeddings", lambda self: object())
    outcome = train(tmp_path, "encoder=tiny", "decoder=tiny")
    assert outcome.code == 1
    assert outcome.errors == []
    assert (
        "Traceback" in outcome.stderr
        and "AttributeError: 'object' object has no attribute 'num_embeddings'" in outcome.stderr
    )


def test_an_error_outside_the_build_steps_keeps_its_traceback(tmp_path, monkeypatch):
    import encdec.train

    def failing_say(message):
        if message.startswith("validation ROUGE before training"):
            raise ValueError("a bug after the build steps")

    monkeypatch.setattr(encdec.train, "say", failing_say)
    outcome = train(tmp_path, "encoder=tiny", "decoder=tiny")
    assert outcome.code == 1
    assert outcome.errors == [] and "ValueError: a bug after the build steps" in outcome.stderr


def test_user_and_library_errors_become_one_line():
    with pytest.raises(EncdecError, match=r"^encoder: KeyError 'hidden'$"):
        with user_settings("encoder"):
            {}["hidden"]
    with pytest.raises(EncdecError, match=r"^model: 'Linear' object has no attribute 'weigth'$"):
        with user_settings("model"):
            torch.nn.Linear(2, 2).weigth  # noqa: B018 - raised inside torch: a library's AttributeError is the user's input's
    with pytest.raises(EncdecError, match=r"^optimizer: first line only$"):
        with user_settings("optimizer"):
            raise ValueError("first line only\nsecond line")


def test_hydra_instantiation_errors_give_their_cause():
    import hydra

    with pytest.raises(EncdecError) as caught:
        with user_settings("optimizer"):
            hydra.utils.instantiate(
                {"_target_": "torch.optim.AdamW", "params": [torch.zeros(1, requires_grad=True)], "lr": -1.0}
            )
    assert str(caught.value) == "optimizer: Invalid learning rate: -1.0"


@pytest.mark.parametrize(
    "error",
    [
        AssertionError("invariant"),
        NameError("name 'x' is not defined"),
        AttributeError("no attribute"),
        NotImplementedError("todo"),
    ],
)
def test_programming_errors_raised_in_encdec_pass_through(error):
    with pytest.raises(type(error)):
        with user_settings("encoder"):
            _raise_in_encdec(error)


def _raise_in_encdec(error: BaseException) -> None:
    """Raise `error` from a frame whose file is encdec's source, as a bug in encdec would."""
    from encdec import boundary

    code = compile("raise error", boundary.__file__, "exec")
    exec(code, {"error": error})


@pytest.mark.parametrize(
    "error", [OSError(errno.ENOSPC, "No space left on device"), MemoryError(), KeyboardInterrupt()]
)
def test_a_full_disk_memory_and_interrupts_pass_through(error):
    with pytest.raises(type(error)):
        with user_settings("data"):
            raise error


def test_lightning_settings_convert_only_what_lightning_raises():
    from lightning.pytorch.trainer.setup import _determine_batch_limits

    with pytest.raises(ValueError, match="not lightning"):
        with lightning_settings():
            raise ValueError("not lightning")
    with pytest.raises(EncdecError, match=r"^trainer: You have passed invalid value -1 for limit_train_batches"):
        with lightning_settings():
            _determine_batch_limits(-1, "limit_train_batches")
