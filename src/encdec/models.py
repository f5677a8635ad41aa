"""Build the encoder-decoder: each side pretrained or random, cross-attention on the decoder, ids for generation.

The result is always a plain `transformers.EncoderDecoderModel` (docs/architecture.md, decision 1). Decoders whose architecture has
no cross-attention get encdec's gated blocks (`encdec.cross_attention`, decision 2).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    EncoderDecoderModel,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from encdec import finetune, pairings, sources, warm_start
from encdec.boundary import for_role, user_settings
from encdec.checks import check_generation, check_generation_length, check_model_config
from encdec.errors import EncdecError

log = logging.getLogger(__name__)

# Families whose position ids are derived from `input_ids != padding_idx`: a start token equal to pad breaks them.
PADDING_IDX_POSITIONS = {"roberta", "xlm-roberta", "camembert", "xlm-roberta-xl", "data2vec-text"}


def as_dict(node) -> dict:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node or {})


def side_config(side: DictConfig, role: str) -> tuple[str, PretrainedConfig]:
    """Resolve the side's source and load its config with `overrides` applied (like `encoder_`-prefixed kwargs)."""
    resolved = sources.resolve(side.pretrained, f"{role}.pretrained")
    config = sources.load_from_hub_or_cache(
        AutoConfig.from_pretrained,
        resolved,
        f"{role}.pretrained",
        trust_remote_code=bool(side.get("trust_remote_code")),
    )
    overrides = as_dict(side.get("overrides"))
    known = set(config.to_dict())
    for key, value in overrides.items():
        if key not in known:
            raise EncdecError(
                f"{role}.overrides.{key} is not a field of {type(config).__name__}; "
                f"use one of its fields, e.g. {', '.join(sorted(k for k in known if not k.startswith('_'))[:8])}"
            )
        setattr(config, key, value)
    check_model_config(config, role, overrides)  # heads dividing the width, ... before weights load
    return resolved, config


@for_role
def load_tokenizer(side: DictConfig, role: str) -> PreTrainedTokenizerBase:
    source = side.get("tokenizer") or side.pretrained
    resolved = sources.resolve(source, f"{role}.tokenizer" if side.get("tokenizer") else f"{role}.pretrained")
    return sources.load_from_hub_or_cache(
        AutoTokenizer.from_pretrained,
        resolved,
        f"{role}.pretrained",
        trust_remote_code=bool(side.get("trust_remote_code")),
    )


def _model_class(auto_class, config: PretrainedConfig, role: str):
    try:
        return auto_class._model_mapping[type(config)]
    except KeyError:
        raise EncdecError(
            f"{role}: transformers has no {auto_class.__name__} for model_type '{config.model_type}'; "
            f"choose a {'text encoder' if role == 'encoder' else 'causal language model'}"
        ) from None


@user_settings("encoder")
def build_encoder(side: DictConfig) -> tuple[PreTrainedModel, list[str]]:
    """The encoder and the keys its checkpoint lacked (none for a random init)."""
    resolved, config = side_config(side, "encoder")
    if getattr(config, "is_encoder_decoder", False):
        raise EncdecError(
            f"encoder.pretrained={side.pretrained} is a full encoder-decoder ({config.model_type}); "
            "encdec pairs an encoder-only model (BERT, RoBERTa, MiniLM, ...) with a decoder"
        )
    model_class = _model_class(AutoModel, config, "encoder")
    kwargs: dict[str, Any] = {}
    # The pooler is unused in seq2seq; left in, DDP fails on parameters without gradients.
    if "add_pooling_layer" in inspect.signature(model_class.__init__).parameters:
        kwargs["add_pooling_layer"] = False
    if side.init == "random":
        return model_class(config, **kwargs), []
    encoder, loading = sources.load_from_hub_or_cache(
        model_class.from_pretrained, resolved, "encoder.pretrained", config=config, output_loading_info=True, **kwargs
    )
    return encoder, loading["missing_keys"]


def has_native_cross_attention(config: PretrainedConfig) -> bool:
    from encdec.cross_attention import has_native_cross_attention as native

    return native(config)


@user_settings("decoder")
def cross_attention_kind(side: DictConfig, encoder_config: PretrainedConfig) -> str:
    """`decoder.cross_attention.kind`, with auto resolved to the first kind of `pairings.AUTO_ORDER` that can pair
    these two (prefix for one decoder-only architecture on both sides, projector for a pretrained decoder-only LM,
    else gated), said in one log line with why."""
    kind = (side.get("cross_attention") or {}).get("kind", "gated")
    if kind not in pairings.KINDS and kind != "auto":
        raise EncdecError(
            f"decoder.cross_attention.kind={kind} is not a pairing kind: use auto, {', '.join(pairings.names())}"
        )
    if kind == "auto":
        decoder_config = side_config(side, "decoder")[1]
        for name in pairings.AUTO_ORDER:
            module = pairings.module_of(name)
            if (
                not hasattr(module, "pairing_problem")
                or module.pairing_problem(encoder_config, decoder_config, side) is None
            ):
                kind = name
                break
        _say_once(f"decoder.cross_attention.kind=auto: {kind} ({pairings.KINDS[kind].why})")
    return kind


def _say_once(message: str) -> None:
    """Logged by the first process only: every rank builds the model, and each would start a log file of its own."""
    from encdec.errors import global_rank

    if global_rank() == 0:
        log.info(message)


@user_settings("decoder")
def build_decoder(side: DictConfig, encoder_hidden_size: int, kind: str = "gated") -> tuple[PreTrainedModel, list[str]]:
    """The decoder with cross-attention, started as `decoder.cross_attention` says, and the keys its checkpoint lacked.
    With any kind but gated it is the plain causal LM, for the kind's `build` to wrap (encdec.pairings)."""
    resolved, config = side_config(side, "decoder")
    if getattr(config, "is_encoder_decoder", False):
        # BART-like checkpoints: AutoModelForCausalLM maps them to their decoder-only *ForCausalLM class.
        config.is_encoder_decoder = False
    native = kind == "gated" and has_native_cross_attention(config)
    if native:
        config.is_decoder = True
        config.add_cross_attention = True
    model_class = _model_class(AutoModelForCausalLM, config, "decoder")
    missing: list[str] = []
    if side.init == "random":
        lm = model_class(config)
    else:
        lm, loading = sources.load_from_hub_or_cache(
            model_class.from_pretrained, resolved, "decoder.pretrained", config=config, output_loading_info=True
        )
        missing = loading["missing_keys"]
        _start_missing_lm_head(lm, missing, side)
    xattn = as_dict(side.get("cross_attention"))
    init, gate_init = xattn.pop("init", "random"), xattn.pop("gate_init", 0.0)
    xattn.pop("kind", None)
    if kind != "gated":
        return lm, missing  # build_model wraps it with its kind's `build` (encdec.pairings)
    if native:
        decoder = lm
    else:
        from encdec.cross_attention import add_cross_attention

        decoder = add_cross_attention(lm, encoder_hidden_size=encoder_hidden_size, **xattn)
        warm_start.open_gates(decoder, float(gate_init))
    if init == "self_attention" and side.init != "random":
        copied = warm_start.cross_attention_from_self_attention(decoder, encoder_hidden_size)
        log.info("decoder.cross_attention.init=self_attention: %d tensors copied from self-attention", copied)
    return decoder, missing


def _start_missing_lm_head(lm: PreTrainedModel, missing: list[str], side: DictConfig) -> None:
    """Say so when the decoder checkpoint has no LM head (a sentence-embedding or encoder-only model): its output
    transform is new, so the decoder starts as no language model. `decoder.lm_head_init=identity` starts a BERT-style
    transform as the identity in front of the tied, pretrained embeddings."""
    head = warm_start.missing_lm_head(lm, missing)
    if not head:
        return
    how = side.get("lm_head_init", "random")
    started = how == "identity" and warm_start.identity_head_transform(lm)
    log.warning(
        "decoder.pretrained=%s has no LM head in its checkpoint (%s): the decoder starts as no language model; "
        "its head %s",
        side.pretrained,
        ", ".join(sorted({k.rsplit(".", 1)[0] for k in head})),
        "transform starts as the identity before the tied embeddings" if started else "starts random",
    )


def generation_ids(decoder_config: PretrainedConfig, tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """Special ids for the decoder side, taken from the decoder tokenizer (docs/architecture.md, decision 3)."""
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    if eos is None:
        raise EncdecError(
            f"decoder tokenizer {tokenizer.name_or_path} has neither an eos nor a sep token: "
            "set decoder.tokenizer to one that marks the end of a sequence"
        )
    if tokenizer.pad_token_id is None:
        # GPT-2 style: padding is masked out of the loss, so reusing eos is safe.
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.sep_token
    pad = tokenizer.pad_token_id
    start = getattr(decoder_config, "decoder_start_token_id", None)
    for candidate in (start, tokenizer.bos_token_id, tokenizer.cls_token_id, eos):
        if candidate is not None:
            start = candidate
            break
    if start == pad and getattr(decoder_config, "model_type", "") in PADDING_IDX_POSITIONS:
        raise EncdecError(
            f"decoder start token {start} equals the pad token of {decoder_config.model_type}, whose position ids "
            "skip padding: use a tokenizer with a distinct bos/cls token"
        )
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else start
    return {"decoder_start_token_id": start, "bos_token_id": bos, "eos_token_id": eos, "pad_token_id": pad}


def share_encoder_decoder_weights(model: EncoderDecoderModel) -> int:
    """BERTShare / RoBERTaShare: the decoder reuses every encoder parameter with the same name and shape."""
    encoder, decoder = model.encoder, model.decoder
    families = [getattr(side.config, "base_config", side.config).model_type for side in (encoder, decoder)]
    if families[0] != families[1]:
        raise EncdecError(
            f"model.share_weights=true needs the same architecture on both sides, got encoder "
            f"'{families[0]}' and decoder '{families[1]}': pick matching presets"
        )
    decoder_base = decoder.base_model
    decoder_params = dict(decoder_base.named_parameters())
    shared = 0
    for name, param in encoder.named_parameters():
        target = decoder_params.get(name)
        if target is None:
            continue
        if target.shape != param.shape:
            raise EncdecError(
                f"model.share_weights=true: {name} has shape {tuple(param.shape)} in the encoder but "
                f"{tuple(target.shape)} in the decoder; give both sides the same sizes"
            )
        module_path, _, attr = name.rpartition(".")
        setattr(decoder_base.get_submodule(module_path), attr, param)
        shared += 1
    decoder.tie_weights()
    return shared


def build_model(cfg: DictConfig) -> tuple[EncoderDecoderModel, PreTrainedTokenizerBase, PreTrainedTokenizerBase]:
    """The whole model of a config: `EncoderDecoderModel` plus the encoder and decoder tokenizers."""
    encoder_tokenizer = load_tokenizer(cfg.encoder, "encoder")
    if encoder_tokenizer.pad_token_id is None:
        # Padding is masked out of the encoder, so any existing token serves; GPT-style tokenizers have none.
        fallback = encoder_tokenizer.eos_token or encoder_tokenizer.sep_token or encoder_tokenizer.unk_token
        if fallback is None:
            raise EncdecError(
                f"encoder tokenizer {encoder_tokenizer.name_or_path} has no pad, eos, sep or unk token to pad with: "
                "set encoder.tokenizer to one that has"
            )
        encoder_tokenizer.pad_token = fallback
    decoder_tokenizer = load_tokenizer(cfg.decoder, "decoder")
    encoder, encoder_missing = build_encoder(cfg.encoder)
    kind = cross_attention_kind(cfg.decoder, encoder.config)
    decoder, decoder_missing = build_decoder(cfg.decoder, encoder_hidden_size=encoder.config.hidden_size, kind=kind)
    added: set[str] = set()
    if kind != "gated":
        module = pairings.module_of(kind)
        problem = getattr(module, "pairing_problem", lambda *_: None)(encoder.config, decoder.config)
        if problem:
            raise EncdecError(f"decoder.cross_attention.kind={kind}: {problem}; use decoder.cross_attention.kind=auto")
        try:
            encoder, decoder, encoder_prefix, decoder_prefix, added = module.build(encoder, decoder, cfg.decoder)
        except ValueError as error:
            raise EncdecError(str(error)) from None
        encoder_missing = [f"{encoder_prefix}{key}" for key in encoder_missing]
        decoder_missing = [f"{decoder_prefix}{key}" for key in decoder_missing]
    check_vocab(decoder, decoder_tokenizer)
    model = EncoderDecoderModel(encoder=encoder, decoder=decoder)
    new = warm_start.new_parameter_names(model, {"encoder.": encoder_missing, "decoder.": decoder_missing}) | added
    for name, parameter in model.named_parameters():
        # Marked on the tensor itself, so the mark survives LoRA's wrapping and the optimizer can find the new ones.
        parameter.encdec_new = name in new
    if cfg.model.get("share_weights", False):
        shared = share_encoder_decoder_weights(model)
        log.info("share_weights: decoder reuses %d encoder tensors", shared)
    configure_generation(model, decoder_tokenizer, cfg.get("generation"))
    frozen_layers = finetune.frozen_decoder_layers(cfg.model, kind, model.decoder, _say_once)
    finetune.apply(model, cfg.model, encoder_frozen(cfg.model, kind), frozen_layers)
    apply_speed_switches(model, cfg.model)
    # from_pretrained leaves modules in eval mode and Lightning keeps submodule modes: dropout would silently be off.
    model.train()
    return model, encoder_tokenizer, decoder_tokenizer


def encoder_frozen(model_cfg: DictConfig, kind: str) -> bool:
    """model.freeze_encoder; null (auto) freezes the encoder of a prefix pair: it is the pretrained LM whose keys and
    values the decoder already reads, and training it doubles the step time for little (aclsum with lead copies, 25
    steps: test ROUGE-2 12.87 frozen, 13.44 trained; README, "Warm-start levers")."""
    frozen = model_cfg.get("freeze_encoder")
    if frozen is None:
        frozen = pairings.KINDS[kind].freezes_encoder
        if frozen:
            _say_once(f"model.freeze_encoder=null: the encoder is frozen (decoder.cross_attention.kind={kind})")
    return bool(frozen)


def apply_speed_switches(model: EncoderDecoderModel, model_cfg: DictConfig) -> None:
    """model.attn_implementation and model.gradient_checkpointing (model.compile is applied by the training module)."""
    implementation = model_cfg.get("attn_implementation")
    if implementation:
        try:
            model.set_attn_implementation(implementation)
        except (ImportError, ValueError) as error:
            raise EncdecError(
                f"model.attn_implementation={implementation}: {' '.join(str(error).split())[:200]} "
                "(null keeps transformers' default)"
            ) from error
    if model_cfg.get("gradient_checkpointing"):
        # Non-reentrant: works with frozen inputs (freeze_encoder, LoRA) and keeps the RNG for dropout exact.
        kwargs = {"use_reentrant": False}
        try:
            if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x names it so
                model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        except ValueError as error:  # "X does not support activation checkpointing."
            raise EncdecError(
                f"model.gradient_checkpointing=true: {' '.join(str(error).split())[:200]} Set it to false"
            ) from error


# OVERRIDEABLE (backends registered by other devices) arrived in torch 2.5; the floor is 2.4.
_SDPA_WITHOUT_CUDNN = [
    backend
    for name in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "MATH", "OVERRIDEABLE")
    if (backend := getattr(SDPBackend, name, None)) is not None
]


def attention_kernels(cudnn: bool = False):
    """A context for forwards (and so their backwards) that leaves cuDNN out of torch's SDPA kernel choice unless asked.

    cuDNN's attention builds an execution plan per new tensor shape (tens to hundreds of ms, PyTorch PR #155958);
    with dynamic padding nearly every training batch and every decoding step has a new shape, so on H100/H200, where
    torch ranks cuDNN first, the plans cost more than the kernels save. Flash and memory-efficient need no plan.
    """
    if cudnn:
        return contextlib.nullcontext()
    return sdpa_kernel(_SDPA_WITHOUT_CUDNN)


def check_vocab(decoder: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    embeddings = decoder.get_input_embeddings().num_embeddings
    if len(tokenizer) > embeddings:
        raise EncdecError(
            f"decoder tokenizer {tokenizer.name_or_path} has {len(tokenizer)} tokens but the decoder embeds only "
            f"{embeddings}: use the decoder's own tokenizer (decoder.tokenizer)"
        )


# Decoders whose position embeddings are computed from the 2D attention mask: a static cache hands them a 4D mask.
NO_STATIC_CACHE = {"opt"}


def configure_generation(model: EncoderDecoderModel, decoder_tokenizer, generation: DictConfig | None) -> None:
    """Ids on `config` and `generation_config` (transformers 5 reads the latter), then the decoding settings."""
    ids = generation_ids(model.decoder.config, decoder_tokenizer)
    for key, value in ids.items():
        setattr(model.config, key, value)
        setattr(model.generation_config, key, value)
    model.config.vocab_size = model.decoder.config.vocab_size
    settings = as_dict(generation)
    settings.pop("name", None)
    check_generation(settings)
    cache = settings.get("cache_implementation")
    family = getattr(getattr(model.decoder.config, "base_config", model.decoder.config), "model_type", None)
    if cache == "static" and family in NO_STATIC_CACHE:
        raise EncdecError(
            f"generation.cache_implementation=static does not work with the {family} decoder "
            "(its positions come from the attention mask): use dynamic"
        )
    model.generation_config.update(**{k: v for k, v in settings.items() if v is not None})
    if not settings.get("do_sample"):
        for key in ("top_k", "top_p", "temperature"):
            setattr(model.generation_config, key, None)
    try:
        model.generation_config.validate(strict=True)
    except ValueError as error:
        raise EncdecError(f"generation: {' '.join(str(error).split())[:300]}") from error
    check_generation_length(model)
