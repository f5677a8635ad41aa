"""Building blocks of the gated cross-attention that encdec adds to decoders without one.

The public entry points live in `encdec.cross_attention`; this module holds the block itself, the per-call context
the decoder-layer hooks read, and the generic search for a causal LM's decoder layers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


class GatedCrossAttentionBlock(nn.Module):
    """Flamingo-style residual cross-attention: `h + tanh(attn_gate) * CrossAttn(LayerNorm(h), encoder)`.

    Both gates start at zero, so a freshly added block leaves the pretrained decoder's computation bit for bit
    unchanged. Keys and values are projected straight from the encoder's width (`encoder_hidden_size`), which makes
    a separate encoder-to-decoder projection unnecessary. `ffn_mult > 0` adds Flamingo's gated feed-forward after
    the attention, with its own zero-initialised gate.
    """

    def __init__(
        self,
        hidden_size: int,
        encoder_hidden_size: int,
        num_heads: int,
        dropout: float = 0.0,
        ffn_mult: int = 0,
        norm_eps: float = 1e-5,
    ):
        super().__init__()
        if hidden_size % num_heads != 0:
            raise ValueError(f"cross-attention: hidden size {hidden_size} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.dropout = dropout
        self.norm = nn.LayerNorm(hidden_size, eps=norm_eps)
        self.q_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.k_proj = nn.Linear(encoder_hidden_size, hidden_size, bias=False)
        self.v_proj = nn.Linear(encoder_hidden_size, hidden_size, bias=False)
        self.o_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.attn_gate = nn.Parameter(torch.zeros(1))
        if ffn_mult > 0:
            self.ffn_norm = nn.LayerNorm(hidden_size, eps=norm_eps)
            self.ffn = nn.Sequential(
                nn.Linear(hidden_size, ffn_mult * hidden_size),
                nn.GELU(),
                nn.Linear(ffn_mult * hidden_size, hidden_size),
            )
            self.ffn_gate = nn.Parameter(torch.zeros(1))
        else:
            self.ffn_norm = self.ffn = self.ffn_gate = None

    def _split_heads(self, states: torch.Tensor) -> torch.Tensor:
        batch, length, _ = states.shape
        return states.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    def project_encoder(self, encoder_hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values, `[batch, heads, source_length, head_dim]`; computed once per generate call."""
        encoder_hidden_states = encoder_hidden_states.to(self.k_proj.weight.dtype)
        return (
            self._split_heads(self.k_proj(encoder_hidden_states)),
            self._split_heads(self.v_proj(encoder_hidden_states)),
        )

    def forward(
        self,
        hidden_states: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        encoder_keep_mask: torch.Tensor | None = None,
        record_weights: list | None = None,
    ) -> torch.Tensor:
        """`record_weights`: a list to append this block's attention probabilities to, `[batch, heads, target,
        source]` (for `output_attentions`; computed beside SDPA, which does not return them)."""
        batch, length, width = hidden_states.shape
        query = self._split_heads(self.q_proj(self.norm(hidden_states.to(self.q_proj.weight.dtype))))
        additive_mask = keep_mask_to_additive(encoder_keep_mask, query.dtype)
        if record_weights is not None:
            scores = query @ key.to(query.dtype).transpose(-1, -2) / self.head_dim**0.5
            record_weights.append(torch.softmax(scores if additive_mask is None else scores + additive_mask, dim=-1))
        attended = F.scaled_dot_product_attention(
            query,
            key.to(query.dtype),
            value.to(query.dtype),
            attn_mask=additive_mask,
            dropout_p=self.dropout if self.training else 0.0,
        )
        attended = self.o_proj(attended.transpose(1, 2).reshape(batch, length, width))
        hidden_states = hidden_states + (torch.tanh(self.attn_gate) * attended).to(hidden_states.dtype)
        if self.ffn is not None:
            update = self.ffn(self.ffn_norm(hidden_states.to(self.q_proj.weight.dtype)))
            hidden_states = hidden_states + (torch.tanh(self.ffn_gate) * update).to(hidden_states.dtype)
        return hidden_states


def encoder_keep_mask(encoder_attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """`[batch, source]` 1/0 padding mask -> `[batch, 1, 1, source]` booleans, True where a query may attend."""
    if encoder_attention_mask is None:
        return None
    if encoder_attention_mask.dim() != 2:
        raise ValueError(
            f"encoder_attention_mask must be [batch, source_length], got shape {tuple(encoder_attention_mask.shape)}"
        )
    return encoder_attention_mask[:, None, None, :].to(torch.bool)


def keep_mask_to_additive(keep: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """Additive SDPA mask in the query's dtype (so fp16 autocast gets fp16's minimum, not -inf).

    The dtype's minimum instead of -inf keeps a fully padded source row finite (uniform attention), so a zero gate
    still multiplies a finite number and the output stays exact.
    """
    if keep is None:
        return None
    return torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill(~keep, torch.finfo(dtype).min)


@dataclass
class CrossAttentionContext:
    """What the decoder-layer hooks read during one forward of the wrapped LM: K/V per layer index and the mask."""

    keys_values: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    encoder_keep_mask: torch.Tensor | None = None
    # One entry per block in layer order when the caller asked for output_attentions; None records nothing.
    cross_attentions: list[torch.Tensor] | None = None


def find_decoder_layers(lm: nn.Module) -> nn.ModuleList:
    """The `nn.ModuleList` of decoder layers of a causal LM, wherever the family keeps it.

    Paths differ per family (`model.layers`, `gpt_neox.layers`, `model.decoder.layers`, `transformer.h`), but every
    family names its layer class in `_no_split_modules`; the longest module list made only of those classes wins.
    Configs without that attribute fall back to the module list whose length is `num_hidden_layers`.
    """
    layer_class_names = set(getattr(lm, "_no_split_modules", None) or ())
    module_lists = [module for module in lm.modules() if isinstance(module, nn.ModuleList) and len(module) > 0]
    candidates = [
        module for module in module_lists if all(type(layer).__name__ in layer_class_names for layer in module)
    ]
    if not candidates:
        num_layers = getattr(lm.config, "num_hidden_layers", None)
        candidates = [module for module in module_lists if len(module) == num_layers]
    if not candidates:
        raise ValueError(f"could not find the decoder layers of {type(lm).__name__}")
    return max(candidates, key=len)
