"""How the parts a warm start adds to the pretrained weights begin: cross-attention, gates, a missing LM head.

A warm-started encoder-decoder (Rothe, Narayan & Severyn, TACL 2020) takes every weight it can from two pretrained
checkpoints; what no checkpoint holds (cross-attention, encdec's gates, the LM head of an encoder-only checkpoint) is
"new". This module finds the new parameters (they get their own learning rate: `optimizer.new_params_lr`) and
optionally starts cross-attention as a copy of the same layer's self-attention (`decoder.cross_attention.init=
self_attention`, as T5Gemma does when it turns a decoder-only LLM into an encoder-decoder), so the decoder's own
query/key geometry, induction heads among it, reads the source from step 0 instead of random projections.
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from transformers import PreTrainedModel

log = logging.getLogger(__name__)

CROSS_ATTENTION_INITS = ("random", "self_attention")
# (self-attention child, its cross-attention twin) of one decoder layer, for families whose twins share a layout.
_SAME_LAYOUT_TWINS = (
    ("attention", "crossattention"),  # BERT, RoBERTa, ELECTRA, XLM-R, BertGeneration
    ("self_attn", "encoder_attn"),  # BART, mBART, Marian, Pegasus, Blenderbot
    ("self_attn_layer_norm", "encoder_attn_layer_norm"),
    ("ln_1", "ln_cross_attn"),  # GPT-2
)


def new_parameter_names(model: nn.Module, missing_keys: dict[str, list[str]]) -> set[str]:
    """Names (as in `model.named_parameters()`) of parameters that no pretrained checkpoint provided.

    `missing_keys` maps a prefix ("encoder.", "decoder.") to the keys `from_pretrained` reported missing on that side;
    encdec's added cross-attention blocks and `EncoderDecoderModel`'s `enc_to_dec_proj` are new by construction.
    """
    missing = {prefix + key for prefix, keys in missing_keys.items() for key in keys}
    return {
        name
        for name, _ in model.named_parameters()
        if name in missing or "cross_attention_blocks." in name or name.startswith("enc_to_dec_proj.")
    }


@torch.no_grad()
def cross_attention_from_self_attention(decoder: PreTrainedModel, encoder_hidden_size: int) -> int:
    """Copy each decoder layer's self-attention into its cross-attention; returns how many tensors were copied.

    Native cross-attention (BERT, BART, GPT-2 families) has the same shapes as the self-attention it sits beside.
    encdec's added blocks (Llama, Qwen2, Mistral, ... with separate q/k/v/o projections) get the queries and output
    projection always, and the keys/values when the encoder is as wide as the decoder (grouped key/value heads are
    repeated to the block's heads); with another width the keys/values read a space the decoder never saw, so they
    stay random.
    """
    from encdec.cross_attention import CrossAttentionDecoderForCausalLM

    if isinstance(decoder, CrossAttentionDecoderForCausalLM):
        return _into_added_blocks(decoder, encoder_hidden_size)
    copied = 0
    for module in decoder.modules():
        for self_name, cross_name in _SAME_LAYOUT_TWINS:
            source, target = getattr(module, self_name, None), getattr(module, cross_name, None)
            if isinstance(source, nn.Module) and isinstance(target, nn.Module):
                copied += _copy_matching(source, target)
        if hasattr(module, "attn") and hasattr(module, "crossattention") and hasattr(module.crossattention, "q_attn"):
            copied += _gpt2_attention(module.attn, module.crossattention)
    return copied


def _copy_matching(source: nn.Module, target: nn.Module) -> int:
    source_state = source.state_dict()
    copied = 0
    for name, tensor in target.state_dict().items():
        if name in source_state and source_state[name].shape == tensor.shape:
            tensor.copy_(source_state[name])
            copied += 1
    return copied


def _gpt2_attention(source: nn.Module, target: nn.Module) -> int:
    # GPT-2 fuses q, k, v into one Conv1D (weight [width, 3 x width]); its cross-attention keeps q apart.
    width = source.c_attn.weight.shape[0]
    target.q_attn.weight.copy_(source.c_attn.weight[:, :width])
    target.q_attn.bias.copy_(source.c_attn.bias[:width])
    target.c_attn.weight.copy_(source.c_attn.weight[:, width:])
    target.c_attn.bias.copy_(source.c_attn.bias[width:])
    target.c_proj.load_state_dict(source.c_proj.state_dict())
    return 6


def _into_added_blocks(decoder, encoder_hidden_size: int) -> int:
    copied = 0
    for layer_index, layer in decoder._hooked_decoder_layers:
        block = decoder.cross_attention_blocks[str(layer_index)]
        attention = next((getattr(layer, n) for n in ("self_attn", "attention", "attn") if hasattr(layer, n)), None)
        projections = [getattr(attention, n, None) for n in ("q_proj", "k_proj", "v_proj", "o_proj")]
        if attention is None or any(not isinstance(p, nn.Linear) for p in projections):
            log.warning(
                "decoder.cross_attention.init=self_attention: %s has no separate q/k/v/o projections; "
                "its cross-attention starts random",
                type(layer).__name__,
            )
            return copied
        q, k, v, o = projections
        if q.weight.shape != block.q_proj.weight.shape or o.weight.shape != block.o_proj.weight.shape:
            log.warning(
                "decoder.cross_attention.init=self_attention: the blocks' heads differ from the decoder's "
                "(decoder.cross_attention.num_heads); they start random"
            )
            return copied
        block.q_proj.weight.copy_(q.weight)
        block.o_proj.weight.copy_(o.weight)
        copied += 2
        norm = getattr(layer, "input_layernorm", None)
        if (
            norm is not None
            and getattr(norm, "weight", None) is not None
            and norm.weight.shape == block.norm.weight.shape
        ):
            block.norm.weight.copy_(norm.weight)
            copied += 1
        if encoder_hidden_size == q.weight.shape[1]:
            repeat = block.k_proj.weight.shape[0] // k.weight.shape[0]
            block.k_proj.weight.copy_(_repeat_heads(k.weight, block.head_dim, repeat))
            block.v_proj.weight.copy_(_repeat_heads(v.weight, block.head_dim, repeat))
            copied += 2
    return copied


def _repeat_heads(weight: torch.Tensor, head_dim: int, repeat: int) -> torch.Tensor:
    """[kv_heads x head_dim, width] -> [kv_heads x repeat x head_dim, width], each key/value head for its query group."""
    heads = weight.shape[0] // head_dim
    return weight.view(heads, head_dim, -1).repeat_interleave(repeat, dim=0).reshape(heads * repeat * head_dim, -1)


def open_gates(decoder: nn.Module, value: float) -> None:
    """Start encdec's cross-attention gates at `value` (tanh(value) of the block's output joins the residual)."""
    with torch.no_grad():
        for name, parameter in decoder.named_parameters():
            if name.endswith("attn_gate"):
                parameter.fill_(value)


def missing_lm_head(decoder: PreTrainedModel, missing: list[str]) -> list[str]:
    """The output-head tensors the decoder's checkpoint lacks (a sentence-embedding or encoder-only checkpoint):
    missing keys outside the base model (BERT's `cls.predictions.*`, a causal LM's untied `lm_head.*`)."""
    base = decoder.base_model_prefix + "."
    return [key for key in missing if not key.startswith(base)]


@torch.no_grad()
def identity_head_transform(decoder: PreTrainedModel) -> bool:
    """BERT-style heads put a dense + LayerNorm transform before the tied embeddings. Without a checkpoint for it,
    start the dense as the identity, so logits are the last hidden states against the (pretrained, tied) embeddings,
    which is what the head's design ties them for, instead of a random rotation."""
    transform = getattr(getattr(getattr(decoder, "cls", None), "predictions", None), "transform", None)
    dense = getattr(transform, "dense", None)
    if not isinstance(dense, nn.Linear) or dense.weight.shape[0] != dense.weight.shape[1]:
        return False
    dense.weight.copy_(torch.eye(dense.weight.shape[0], dtype=dense.weight.dtype))
    dense.bias.zero_()
    return True
