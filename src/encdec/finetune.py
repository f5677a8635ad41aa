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


def apply(model: EncoderDecoderModel, model_cfg: DictConfig) -> None:
    if model_cfg.get("freeze_encoder", False):
        for param in model.encoder.parameters():
            param.requires_grad_(False)
    if model_cfg.get("freeze_decoder", False):
        # The pretrained decoder stays as it is; its (new) cross-attention and the projection still learn.
        for name, param in model.decoder.named_parameters():
            if not is_cross_attention(name):
                param.requires_grad_(False)
    lora = model_cfg.get("lora")
    if lora and lora.get("r", 0):
        add_lora(model, lora)


def add_lora(model: EncoderDecoderModel, lora: DictConfig) -> None:
    from peft import LoraConfig, inject_adapter_in_model

    settings = OmegaConf.to_container(lora, resolve=True)
    targets = settings.pop("target_modules")
    side = settings.pop("side", "decoder")
    config = LoraConfig(target_modules=list(targets), **settings)
    parts = {"decoder": [model.decoder], "encoder": [model.encoder], "both": [model.encoder, model.decoder]}
    if side not in parts:
        raise EncdecError(f"model.lora.side={side} is unknown: use decoder, encoder or both")
    for part in parts[side]:
        try:
            inject_adapter_in_model(config, part)
        except ValueError as error:
            raise EncdecError(f"model.lora.target_modules={targets}: {str(error).splitlines()[0]}") from error
        # LoRA trains adapters instead of the weights they wrap (the cross-attention stays trainable).
        for name, param in part.named_parameters():
            if "lora_" not in name and not is_cross_attention(name):
                param.requires_grad_(False)


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
