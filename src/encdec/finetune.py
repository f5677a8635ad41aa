"""What trains: freeze the encoder and/or the pretrained decoder (keeping cross-attention), optional LoRA via peft."""

from __future__ import annotations

import copy

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import EncoderDecoderModel

from encdec.errors import EncdecError

# Parameter-name fragments of cross-attention in decoders that have it natively (BERT/RoBERTa, GPT-2, BART...).
NATIVE_CROSS_ATTENTION = ("crossattention", "ln_cross_attn", "encoder_attn")


def is_cross_attention(name: str) -> bool:
    return "cross_attention_blocks" in name or any(fragment in name for fragment in NATIVE_CROSS_ATTENTION)


def apply(
    model: EncoderDecoderModel,
    model_cfg: DictConfig,
    freeze_encoder: bool | None = None,
    freeze_decoder_layers: int | None = None,
) -> None:
    """`freeze_encoder`, `freeze_decoder_layers`: model.freeze_encoder and model.freeze_decoder_layers with their null
    (auto) already resolved by the caller."""
    if model_cfg.get("freeze_encoder") if freeze_encoder is None else freeze_encoder:
        # A decoder's own reading of the source (a projector) belongs to the source side: fixed with the encoder.
        source_side = getattr(model.decoder, "source_parameters", lambda: [])()
        for param in [*model.encoder.parameters(), *source_side]:
            param.requires_grad_(False)
    if model_cfg.get("freeze_decoder", False):
        # The pretrained decoder stays as it is; its (new) cross-attention and the projection still learn.
        for name, param in model.decoder.named_parameters():
            if not is_cross_attention(name):
                param.requires_grad_(False)
    lora = model_cfg.get("lora")
    if lora and lora.get("r", 0):
        add_lora(model, lora)
    if freeze_decoder_layers is None:
        freeze_decoder_layers = model_cfg.get("freeze_decoder_layers") or 0
    if freeze_decoder_layers:
        freeze_lower_layers(model.decoder, int(freeze_decoder_layers))


def freeze_lower_layers(decoder: torch.nn.Module, count: int) -> None:
    """model.freeze_decoder_layers: the decoder's embeddings (with them a tied LM head) and its first `count` layers
    stay as pretrained, so backward stops above them: the step is cheaper and the optimizer holds less. Cross-attention
    (native or encdec's) in those layers still learns."""
    layers = decoder_layers(decoder)
    if count > len(layers):
        raise EncdecError(
            f"model.freeze_decoder_layers={count}: the decoder has {len(layers)} layers; use 0 to {len(layers)}"
        )
    frozen = [*(module for module in decoder.modules() if isinstance(module, torch.nn.Embedding)), *layers[:count]]
    for module in frozen:
        for name, param in module.named_parameters():
            if not is_cross_attention(name):
                param.requires_grad_(False)


def decoder_layers(decoder: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder's stack of transformer layers: its longest ModuleList of `num_hidden_layers` layers."""
    config = getattr(decoder.config, "base_config", decoder.config)
    count = getattr(config, "num_hidden_layers", None)
    stacks = [m for m in decoder.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == count]
    if not stacks:
        raise EncdecError(
            f"model.freeze_decoder_layers: no stack of {count} layers found in the {type(decoder).__name__} "
            "decoder; leave it at 0"
        )
    return stacks[0]


def add_lora(model: EncoderDecoderModel, lora: DictConfig) -> None:
    from peft import LoraConfig, inject_adapter_in_model

    settings = OmegaConf.to_container(lora, resolve=True)
    targets = settings.pop("target_modules")
    side = settings.pop("side", "decoder")
    config = LoraConfig(target_modules=list(targets), **settings)
    parts = {"decoder": [model.decoder], "encoder": [model.encoder], "both": [model.encoder, model.decoder]}
    for part in parts[side]:
        try:
            inject_adapter_in_model(config, part)
        except ValueError as error:
            names = _layer_names(part)
            raise EncdecError(
                f"model.lora.target_modules={list(targets)}: {str(error).splitlines()[0]} The {side}'s linear layers are "
                f"named {', '.join(names)}: e.g. model.lora.target_modules=[{','.join(_query_value(names))}]"
            ) from error
        # LoRA trains adapters instead of the pretrained weights they wrap. peft has frozen everything else, but the
        # cross-attention is new (randomly initialised, its gates at zero): frozen, the decoder would never read the
        # source, so it trains in full.
        for name, param in part.named_parameters():
            param.requires_grad_("lora_" in name or is_cross_attention(name))


def _layer_names(part: torch.nn.Module) -> list[str]:
    """The distinct last names of the layers LoRA can wrap (Linear; GPT-2's Conv1D), cross-attention left out."""
    from transformers.pytorch_utils import Conv1D

    names = {
        name.rpartition(".")[2]
        for name, module in part.named_modules()
        if isinstance(module, (torch.nn.Linear, Conv1D)) and not is_cross_attention(name)
    }
    return sorted(names)


def _query_value(names: list[str]) -> list[str]:
    """The attention query/value projections among `names`, the usual LoRA targets."""
    for pair in (["q_proj", "v_proj"], ["query", "value"], ["c_attn"], ["query_key_value"], ["qkv_proj"], ["Wqkv"]):
        if set(pair) <= set(names):
            return pair
    return names[:2]


def merged_copy(model: EncoderDecoderModel) -> EncoderDecoderModel:
    """A copy with LoRA adapters merged into their base weights: what plain transformers can load."""
    from peft.tuners.lora import LoraLayer

    if not any(isinstance(m, LoraLayer) for m in model.modules()):
        return model
    merged = copy.deepcopy(model)
    for name, module in list(merged.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(merged.get_submodule(parent_name), child, module.get_base_layer())
    return merged


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    params = {id(p): p for p in model.parameters()}.values()
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def frozen_decoder_layers(model_cfg: DictConfig, kind: str, decoder, say) -> int:
    """model.freeze_decoder_layers; null (auto) keeps the share of the decoder's lower layers the pairing kind measured
    best fixed (`PairingKind.frozen_decoder_share`; a third for a prefix pair: docs/decoders.md)."""
    from encdec import pairings

    count = model_cfg.get("freeze_decoder_layers")
    if count is None:
        share = pairings.KINDS[kind].frozen_decoder_share
        count = round(share * len(decoder_layers(decoder))) if share else 0
        if count:
            say(
                f"model.freeze_decoder_layers=null: the decoder's embeddings and first {count} of "
                f"{len(decoder_layers(decoder))} layers stay fixed (decoder.cross_attention.kind={kind})"
            )
    return int(count)
