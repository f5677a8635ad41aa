"""Every experiment preset composes and sets what its name says: encoder, decoder, init, sharing, lengths, decoding."""

from __future__ import annotations

import re

import pytest
from omegaconf import OmegaConf

from conftest import CONF, compose_config

# model name -> (encoder group, encoder init, decoder group, decoder init, share_weights), per Rothe et al. (2020)
MODELS = {
    "rnd2rnd": ("bert", "random", "bert", "random", False),
    "bert2rnd": ("bert", "pretrained", "bert", "random", False),
    "rnd2bert": ("bert", "random", "bert", "pretrained", False),
    "bert2bert": ("bert", "pretrained", "bert", "pretrained", False),
    "bertshare": ("bert", "pretrained", "bert", "pretrained", True),
    "robertashare": ("roberta", "pretrained", "roberta", "pretrained", True),
    "bert2gpt": ("bert", "pretrained", "gpt2", "pretrained", False),
    "roberta2gpt": ("roberta", "pretrained", "gpt2", "pretrained", False),
}
# data name -> (data.name, hub path, max source, max target tokens, global batch, max steps), per Rothe et al. (2020)
DATA = {
    "cnn_dailymail": ("cnn_dailymail", "abisee/cnn_dailymail", 512, 128, 128, 300_000),
    "xsum": ("xsum", "EdinburghNLP/xsum", 512, 64, 128, 200_000),
    "gigaword": ("gigaword", "Harvard/gigaword", 128, 32, 256, 500_000),
}
PRETRAINED = {
    "bert": "google-bert/bert-base-cased",
    "roberta": "FacebookAI/roberta-base",
    "gpt2": "openai-community/gpt2",
}
PAPER = [(model, data) for model in MODELS for data in DATA]


def test_every_paper_preset_exists_and_nothing_else_is_unaccounted_for():
    names = {p.stem for p in (CONF / "experiment").glob("*.yaml")}
    expected = {f"{model}_{data}" for model, data in PAPER} | {
        "quickstart",
        "warm_start",
        "warm_start_gated",
        "prefix_trained_encoder",
        "bert2bert_cnn_dailymail_blog",
    }
    assert names == expected


def test_prefix_trained_encoder_is_the_quickstart_with_its_encoder_trained():
    quickstart, trained = compose_config("experiment=quickstart"), compose_config("experiment=prefix_trained_encoder")
    assert trained.model.freeze_encoder is False and quickstart.model.freeze_encoder is None
    trained.model.freeze_encoder = None
    assert trained == quickstart  # nothing else differs


@pytest.mark.parametrize("model,data", PAPER, ids=[f"{m}_{d}" for m, d in PAPER])
def test_rothe_preset(model, data):
    name = f"{model}_{data}"
    cfg = compose_config(f"experiment={name}")
    encoder, encoder_init, decoder, decoder_init, share = MODELS[model]
    data_name, path, source_length, target_length, global_batch, steps = DATA[data]

    assert cfg.encoder.name == encoder and cfg.encoder.init == encoder_init
    assert cfg.decoder.name == decoder and cfg.decoder.init == decoder_init
    assert cfg.model.share_weights is share
    if share:  # one model both sides
        assert cfg.encoder.pretrained == cfg.decoder.pretrained and cfg.encoder.name == cfg.decoder.name
    # the checkpoints: cased as in the paper, uncased BERT for lowercased Gigaword
    for side, group in (("encoder", encoder), ("decoder", decoder)):
        expected = PRETRAINED[group]
        if data == "gigaword" and group == "bert":
            expected = "google-bert/bert-base-uncased"
        assert cfg[side].pretrained == expected, side

    assert cfg.data.name == data_name and cfg.data.path == path and cfg.data.source == "hub"
    assert (cfg.data.max_source_length, cfg.data.max_target_length) == (source_length, target_length)
    assert cfg.data.batch_size * cfg.trainer.accumulate_grad_batches == global_batch
    assert cfg.trainer.max_steps == steps and cfg.trainer.max_epochs == -1

    generation = OmegaConf.to_container(cfg.generation, resolve=True)
    assert generation["num_beams"] == 4 and generation["length_penalty"] == 0.6
    assert generation["max_new_tokens"] == target_length
    assert generation["no_repeat_ngram_size"] == 0 and generation["min_new_tokens"] == 0

    assert cfg.optimizer._target_ == "torch.optim.Adam"
    assert cfg.scheduler._target_ == "transformers.get_inverse_sqrt_schedule"
    assert cfg.scheduler.num_warmup_steps == 40_000


@pytest.mark.parametrize("model,data", PAPER, ids=[f"{m}_{d}" for m, d in PAPER])
def test_preset_names_its_source_and_score(model, data):
    text = (CONF / "experiment" / f"{model}_{data}.yaml").read_text()
    assert text.startswith("# @package _global_\n")
    assert "Rothe" in text and "Table 5" in text
    assert re.search(r"approximately \d+\.\d\d", text), "the score the preset should reach"
    for group in ("encoder", "decoder", "data", "generation"):
        assert f"  - override /{group}: " in text


def test_blog_bert2bert_recipe():
    cfg = compose_config("experiment=bert2bert_cnn_dailymail_blog")
    assert (cfg.encoder.name, cfg.decoder.name) == ("bert", "bert")
    assert cfg.encoder.init == cfg.decoder.init == "pretrained"
    assert cfg.encoder.pretrained == cfg.decoder.pretrained == "google-bert/bert-base-uncased"
    assert cfg.model.share_weights is False
    assert cfg.data.name == "cnn_dailymail"
    assert (cfg.data.max_source_length, cfg.data.max_target_length, cfg.data.batch_size) == (512, 128, 16)
    generation = OmegaConf.to_container(cfg.generation, resolve=True)
    assert generation["num_beams"] == 4
    assert generation["max_new_tokens"] == 142 and generation["min_new_tokens"] == 56
    assert generation["no_repeat_ngram_size"] == 3 and generation["length_penalty"] == 2.0
    text = (CONF / "experiment" / "bert2bert_cnn_dailymail_blog.yaml").read_text()
    assert text.startswith("# @package _global_\n") and "18.22" in text


def test_command_line_still_wins_over_a_preset():
    cfg = compose_config("experiment=bert2bert_xsum", "decoder=gpt2", "data.batch_size=4", "generation.num_beams=2")
    assert cfg.decoder.name == "gpt2" and cfg.data.batch_size == 4 and cfg.generation.num_beams == 2
