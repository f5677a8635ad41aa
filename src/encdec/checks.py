"""Settings checked before the model loads, so a typo costs a second rather than a first validation pass.

Where each kind of rule about a key lives:
- its default: YAML, once (conf/_data.yaml, conf/_side.yaml, conf/_decoder.yaml for what every preset shares; a
  preset in conf/<group>/NAME.yaml for what it changes);
- its type, range and help line: its field in encdec.schema (checked by `check_against`);
- rules that tie keys together or need more than the value (another key, the Hub, an installed package, the
  optimizer built on a stand-in): here, in `validate`, before anything loads;
- rules that need the model's config or the built model (sizes, positions, one forward pass): here too, run while
  encdec.models builds it (`check_model_config`, `check_generation_length`) and by train.py after
  (`check_forward_pass`).
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from encdec import schema
from encdec.boundary import settings_named, user_settings
from encdec.errors import EncdecError


def validate(cfg: DictConfig, command: str = "train") -> None:
    """Every setting encdec owns checked against its schema (encdec.schema), and the rules that tie keys together."""
    check_against(schema.COMMANDS[command], cfg)
    for role in ("encoder", "decoder"):
        if isinstance(cfg.get(role), DictConfig):
            check_model_overrides(cfg[role].get("overrides"), role)
    if "data" in cfg:
        check_data_rules(cfg.data)
        if command == "train":
            check_streaming(cfg.data, cfg.get("trainer"))
    if cfg.get("generation") is not None:
        _check_sampling(cfg.generation)
    if command == "train":
        check_push_target(
            OmegaConf.select(cfg, "export.push_to_hub"), "export.push_to_hub"
        )  # not after hours of training
        _check_optimizer(cfg)
        _check_xla(cfg)


def check_push_target(repo_id, key: str) -> None:
    """A Hub repository to upload to is checked before any work: its name, and that a token is there to upload
    with (HF_TOKEN or `hf auth login`). Nothing to check when `repo_id` is empty."""
    if not repo_id:
        return
    from huggingface_hub import get_token
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(str(repo_id))
    except HFValidationError as error:
        raise EncdecError(
            f"{key}={repo_id} is not a Hub repository name ({str(error).splitlines()[0]}): use ORG/NAME"
        ) from None
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise EncdecError(f"{key}={repo_id} needs the Hub, but HF_HUB_OFFLINE is set: unset it, or drop {key}")
    if get_token() is None:
        raise EncdecError(
            f"{key}={repo_id} needs a Hugging Face token with write access: run `hf auth login` or "
            f"set HF_TOKEN, or drop {key}"
        )


def check_run_settings(cfg: DictConfig) -> None:
    validate(cfg, "train")


def check_data(data: DictConfig) -> None:
    """data.* given without a command line (encdec.datamodule): its schema and its rules."""
    check_against(schema.Data, data, "data.")
    check_data_rules(data)
    check_streaming(data)


# What a streamed training split (encdec.data.streaming) cannot serve, each with why, named in its one-line refusal.
STREAMING_CANNOT_SERVE = (
    "data.num_workers>0 (the stream is read in the training process, which saves its position)",
    "data.empty_rows=error (a bad row would be found hours into training: skip counts them)",
    "trainer.max_steps=-1 (a stream has no length to plan the schedule by)",
    "a fractional trainer.val_check_interval or trainer.limit_train_batches (fractions of an unknown length)",
)


def check_streaming(data: DictConfig, trainer: DictConfig | None = None) -> None:
    """data.streaming=true with a setting it cannot serve: one line naming each such setting and its fix, then
    everything a stream cannot serve."""
    if not data.get("streaming"):
        return
    found = []
    if int(data.get("num_workers") or 0) > 0:
        found.append((f"data.num_workers={data.num_workers}", "data.num_workers=0"))
    if data.get("empty_rows") == "error":
        found.append(("data.empty_rows=error", "data.empty_rows=skip"))
    if trainer is not None:
        max_steps = trainer.get("max_steps")
        if max_steps is None or int(max_steps) <= 0:
            found.append((f"trainer.max_steps={max_steps}", "trainer.max_steps=N"))
        for key in ("val_check_interval", "limit_train_batches"):
            value = trainer.get(key)
            if isinstance(value, float) and value != 1.0:
                found.append((f"trainer.{key}={value}", f"trainer.{key}=N batches"))
    if found:
        raise EncdecError(
            f"data.streaming=true cannot serve {', '.join(name for name, _ in found)}: set "
            f"{', '.join(fix for _, fix in found)}, or data.streaming=false (a stream cannot serve "
            f"{'; '.join(STREAMING_CANNOT_SERVE)})"
        )


def check_data_rules(data: DictConfig) -> None:
    # data.max_tokens_per_batch, when set, replaces group_by_length (auto by default): no rule between the two.
    if data.get("text_column") is not None and data.get("text_column") == data.get("summary_column"):
        raise EncdecError(
            f"data.text_column and data.summary_column are both {data.text_column}: name two different columns"
        )


def check_generation(generation) -> None:
    """Decoding settings given without a command line (encdec.build_model, a saved run's overrides): a dict."""
    check_against(schema.Generation, generation, "generation.")
    _check_sampling(generation)


def _check_sampling(generation) -> None:
    top_p, temperature = (1.0 if generation.get(k) is None else generation.get(k) for k in ("top_p", "temperature"))
    if generation.get("do_sample") and not (0 < top_p <= 1 and temperature > 0):
        raise EncdecError("generation: sampling needs 0 < top_p <= 1 and temperature > 0")


def runs_on_xla(trainer_cfg) -> bool:
    """The trainer config names Lightning's XLA accelerator (trainer=tpu, or accelerator=xla)."""
    return trainer_cfg is not None and str(trainer_cfg.get("accelerator")) in ("tpu", "xla")


def _check_xla(cfg: DictConfig) -> None:
    """trainer=tpu without torch_xla would fail only when the Trainer is built, after the model has loaded."""
    import importlib.util

    if runs_on_xla(cfg.get("trainer")) and importlib.util.find_spec("torch_xla") is None:
        raise EncdecError(
            f"trainer.accelerator={cfg.trainer.accelerator} needs torch_xla, which is not installed: on a TPU VM install the "
            f'torch and torch_xla pair README "TPU" names (this torch is {torch.__version__})'
        )


# A model config's sizes and counts (widths, layers, heads, key/value heads, head size, vocabulary, positions,
# feed-forward sizes), by name across the families' spellings: each must be a positive integer. A family builds a
# model from 0 or -1 of them without a word (num_hidden_layers=-1: an encoder with no layers that trains and exports).
SIZE_KEYS = re.compile(
    r"^(num|n)_"  # num_hidden_layers, num_key_value_heads, n_head, n_embd, n_positions, n_inner, ...
    r"|_(size|dim|layers|heads|positions)$|position_embeddings$"  # hidden_size, head_dim, max_position_embeddings
    r"|^(d_model|d_ff|d_kv|n_ctx)$"
)
# Names the pattern matches whose 0 means something: Qwen2's layers before sliding windows start.
SIZE_KEYS_ZERO_ALLOWED = frozenset({"max_window_layers", "num_labels", "n_shared_experts", "num_shared_experts"})


def is_size_key(key: str) -> bool:
    return bool(SIZE_KEYS.search(key)) and key not in SIZE_KEYS_ZERO_ALLOWED


def check_model_overrides(overrides, role: str) -> None:
    """`encoder/decoder.overrides.*` that set a size or count of the model (SIZE_KEYS): a positive integer (or null,
    which a family reads as its default), before anything loads. Lists (per-layer sizes) are checked element-wise."""
    if not overrides:
        return
    items = OmegaConf.to_container(overrides, resolve=False) if OmegaConf.is_config(overrides) else dict(overrides)
    for key, value in items.items():
        if not is_size_key(str(key)) or value is None:
            continue
        values = value if isinstance(value, list) else [value]
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
            shown = _show(value)
            raise EncdecError(
                f"{role}.overrides.{key}={shown} must be a positive integer (a size or count of the {role}): "
                f"set {role}.overrides.{key} to 1 or more, or leave it out for the pretrained config's value"
            )


# (width, heads) attribute pairs; a family with its own head_dim (Llama, Gemma, Mistral) may have heads x head_dim
# differ from the width, so for those only the key/value heads are checked.
_WIDTH_HEADS = (("hidden_size", "num_attention_heads"), ("d_model", "decoder_attention_heads"))


def check_model_config(config, role: str, overrides: dict) -> None:
    """The rules between sizes that a family checks only when its model is built or first runs, or never (Qwen2 with
    5 heads on a width of 64 builds 12-wide heads and a 60-wide attention without a word): checked on the config with
    `overrides` applied, before weights load. The line names the override that broke the rule, and the fix."""

    prefix = f"{role}.overrides."
    commanded = {t.split("=", 1)[0][len(prefix) :] for t in settings_named((role,)).split() if t.startswith(prefix)}

    def spelled(key: str) -> str:  # the override's own name for `key` (GPT-2's n_head for num_attention_heads)
        return next((k for k in (key, config.attribute_map.get(key)) if k in overrides), key)

    def culprit(*keys: str) -> str:  # the key the command line set, else the preset's override, else the first
        names = [spelled(k) for k in keys]
        return next((k for k in names if k in commanded), next((k for k in names if k in overrides), names[0]))

    head_dim = getattr(config, "head_dim", None)
    for width_key, heads_key in _WIDTH_HEADS:
        width, heads = getattr(config, width_key, None), getattr(config, heads_key, None)
        if head_dim is None and _positive_ints(width, heads) and width % heads:
            key = culprit(heads_key, width_key)
            fixes = [f"{spelled(heads_key)} to a divisor of {width}", f"{spelled(width_key)} to a multiple of {heads}"]
            if key == spelled(width_key):
                fixes.reverse()
            raise EncdecError(
                f"{prefix}{key}={getattr(config, key)}: the {role}'s width {width} is not a multiple of its {heads} "
                f"attention heads: set {prefix}{fixes[0]} (or {fixes[1]})"
            )
    heads, kv_heads = getattr(config, "num_attention_heads", None), getattr(config, "num_key_value_heads", None)
    if _positive_ints(heads, kv_heads) and heads % kv_heads:
        key = culprit("num_key_value_heads", "num_attention_heads")
        raise EncdecError(
            f"{prefix}{key}={getattr(config, key)}: the {role}'s {heads} attention heads are not a multiple of its "
            f"{kv_heads} key/value heads: set {prefix}{spelled('num_key_value_heads')} to a divisor of {heads}"
        )


def _positive_ints(*values) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values)


# encdec's own optimizer settings, taken out before the rest goes to the optimizer class.
OWN_OPTIMIZER_KEYS = ("new_params_lr",)


def optimizer_class_settings(cfg: DictConfig) -> DictConfig:
    """`cfg.optimizer` without encdec's own keys: what the optimizer class takes."""
    return OmegaConf.create({k: v for k, v in cfg.optimizer.items() if k not in OWN_OPTIMIZER_KEYS})


@user_settings("optimizer")
def _check_optimizer(cfg: DictConfig) -> None:
    """The optimizer built on a stand-in parameter: torch's own range checks (lr, betas, eps, weight decay) run now,
    after the schema's (numbers; new_params_lr positive)."""
    settings = optimizer_class_settings(cfg)
    # fused is left out: whether it applies depends on the device and precision (train.fused_optimizer_allowed).
    factory = hydra.utils.instantiate(settings, **({"fused": None} if "fused" in settings else {}))
    try:
        factory([torch.nn.Parameter(torch.zeros(1))])
    except (TypeError, ValueError, RuntimeError) as error:
        message = " ".join(str(error).split())[:200]
        # torch names the quantity, not the argument: map its wording back to the key the user set.
        words = {
            "learning rate": "lr",
            "weight_decay": "weight_decay",
            "beta": "betas",
            "epsilon": "eps",
            "momentum": "momentum",
        }
        key = next((k for word, k in words.items() if word in message.lower() and k in cfg.optimizer), None)
        culprit = f"optimizer.{key}={_show(cfg.optimizer[key])}" if key else "optimizer"
        raise EncdecError(f"{culprit}: {message}") from None
    # torch takes lr=0, which trains nothing.
    if cfg.optimizer.get("lr", 1) <= 0:
        raise EncdecError(f"optimizer.lr={cfg.optimizer.lr} must be positive")


def _show(value) -> str:
    value = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
    return str(value).replace(" ", "")


def check_generation_length(model) -> None:
    """Decoding may not run the decoder past its learned positions: it would fail deep inside the forward pass
    (a tensor size or index error) at the first validation, after the data and model are built."""
    config = model.generation_config
    steps = config.max_new_tokens if config.max_new_tokens is not None else config.max_length
    positions = getattr(model.decoder.config, "max_position_embeddings", None)
    if isinstance(steps, int) and isinstance(positions, int) and steps > positions:
        key = "max_new_tokens" if config.max_new_tokens is not None else "max_length"
        raise EncdecError(
            f"generation.{key}={steps} runs past the decoder's {positions} positions: set generation.{key}<={positions}"
        )


def check_forward_pass(model, encoder_tokenizer, decoder_tokenizer, cfg: DictConfig) -> None:
    """The built model run once on two tokens, each tokenizer's highest id among them: settings that only fail when
    the model runs (embeddings smaller than the tokenizer, ...) fail here, in the
    model's build step, not in the first validation. Evaluation mode and no gradients: no randomness is drawn."""
    embeddings = model.encoder.get_input_embeddings().num_embeddings
    if len(encoder_tokenizer) > embeddings:
        size = cfg.encoder.get("overrides", {}).get("vocab_size")
        culprit = (
            f"encoder.overrides.vocab_size={size}"
            if size is not None
            else f"encoder.tokenizer={encoder_tokenizer.name_or_path}"
        )
        raise EncdecError(
            f"{culprit}: the encoder embeds {embeddings} tokens but its tokenizer has "
            f"{len(encoder_tokenizer)}: give the encoder at least as many (or its own tokenizer)"
        )
    source = torch.tensor([[encoder_tokenizer.pad_token_id or 0, len(encoder_tokenizer) - 1]])
    target = torch.tensor([[model.config.decoder_start_token_id, len(decoder_tokenizer) - 1]])
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(input_ids=source, attention_mask=torch.ones_like(source), decoder_input_ids=target, use_cache=False)
    finally:
        model.train(training)


def check_against(declared: type, node, prefix: str = "") -> None:
    """Each key of `node` (a DictConfig or dict) that the dataclass `declared` declares, checked for its type and range; nested
    groups recursively. Keys it does not declare are left alone unless it is in schema.CLOSED; a `???` value is left to
    the step that reads it (cli.guarded says it is required)."""
    hints = typing.get_type_hints(declared)
    for spec in dataclasses.fields(declared):
        if spec.name not in node or (isinstance(node, DictConfig) and OmegaConf.is_missing(node, spec.name)):
            continue
        try:
            value, kind = node[spec.name], hints[spec.name]
        except OmegaConfBaseException as error:  # an interpolation that does not resolve
            given = OmegaConf.to_container(node, resolve=False)[spec.name]
            raise EncdecError(f"{prefix}{spec.name}={given}: {str(error).splitlines()[0]}") from None
        # `X | None` and `Optional[X]` alike (the formatter's pyupgrade writes the first).
        nullable = typing.get_origin(kind) in (typing.Union, types.UnionType) and type(None) in typing.get_args(kind)
        if nullable:
            kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
        if value is None and nullable:
            continue
        if dataclasses.is_dataclass(kind):
            if not isinstance(value, (DictConfig, dict)):
                raise EncdecError(f"{prefix}{spec.name}={value}: give a group of settings ({prefix}{spec.name}.KEY=V)")
            check_against(kind, value, f"{prefix}{spec.name}.")
        else:
            _check_value(f"{prefix}{spec.name}", value, kind, spec.metadata)
    if declared in schema.CLOSED:
        unknown = sorted(str(key) for key in node if key not in {spec.name for spec in dataclasses.fields(declared)})
        if unknown:
            known = sorted(spec.name for spec in dataclasses.fields(declared) if spec.name != "name")
            raise EncdecError(f"{prefix}{unknown[0]} is not a decoding setting; known: {', '.join(known)}")


def _check_value(key: str, value, kind, meta) -> None:
    if meta["choices"]:
        # By type too: 1 is not true, nor 0 false (`1 in (True,)` holds in Python).
        if not any(type(value) is type(choice) and value == choice for choice in meta["choices"]):
            raise EncdecError(f"{key}={value}{meta['says'] or ': use ' + ' or '.join(meta['choices'])}")
    elif kind is bool:
        if not isinstance(value, bool):
            raise EncdecError(f"{key}={value}: use true or false")
    elif kind is int:
        low, high = meta["low"], meta["high"]
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or (low is not None and value < low)
            or (high is not None and value > high)
        ):
            must = meta["must"] or (
                "a positive integer"
                if low == 1 and high is None
                else f"an integer from {low} to {high}"
                if high is not None
                else f"an integer >= {low}"
                if low is not None
                else "an integer"
            )
            raise EncdecError(f"{key}={value} must be {must}{meta['note']}")
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise EncdecError(f"{key}={value} must be a number")
        if meta["positive"] and value <= 0:
            raise EncdecError(f"{key}={value} must be positive{meta['note']}")
        if meta["low"] is not None and value < meta["low"]:
            must = meta["must"] or f"a number >= {meta['low']}"
            raise EncdecError(f"{key}={value} must be {must}{meta['note']}")
