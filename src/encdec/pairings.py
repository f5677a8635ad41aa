"""Pairing kinds: how the decoder reads the encoder (`decoder.cross_attention.kind`). Each kind is one entry in `KINDS`
and one module of its own; the rest of encdec (config checks, model building, preparation before training, exports
and their remote code, reloading) reads this table and names no kind.

A kind's module defines its transformers classes, registers them with the Auto classes when imported (so saved
models reload), and has these functions:

- `pairing_problem(encoder_config, decoder_config, side) -> str | None`: why it cannot pair these two (`side` is the
  decoder's config group); `kind=auto` takes the first kind of `AUTO_ORDER` without one.
- `build(encoder, lm, side) -> (encoder, decoder, encoder_prefix, decoder_prefix, new_names)`: wrap the loaded
  encoder and causal LM. The prefixes are where the wrappers keep the loaded models (their checkpoint's missing keys
  move under them), `new_names` the parameters no checkpoint provides (they learn at `optimizer.new_params_lr`).
- optionally `prepare(model, encoder_tokenizer, decoder_tokenizer, texts, data) -> str`: learn what the kind needs from
  the training texts before training starts; returns the line to print.

The gated kind is the fallback every pair can take; its blocks are built inside `encdec.models.build_decoder`, since
a decoder with cross-attention of its own must be loaded with it switched on.

Stdlib only: `import encdec` and the exports' remote code import this module.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class PairingKind:
    """One way for a decoder to read its encoder."""

    name: str
    module: str  # defines and registers its classes; its `pairing_problem`, `build` and `prepare`
    model_types: tuple[str, ...]  # the config model types of its classes (an export carries their code)
    why: str  # what `kind=auto` says when it picks this kind
    freezes_encoder: bool = False  # model.freeze_encoder=null (auto) freezes the encoder
    frozen_decoder_share: float = 0.0  # model.freeze_decoder_layers=null (auto): this share of the decoder's layers
    # export.py format=onnx supports it (tested: ONNX Runtime gives generate's tokens); a decoder whose self-attention
    # cache starts with the source has a `source_cache` method for it (encdec.onnx_graphs)
    onnx: bool = False


KINDS: dict[str, PairingKind] = {}
# kind=auto: the first kind whose `pairing_problem` finds none, best first by what each measured (docs/decoders.md).
AUTO_ORDER: list[str] = []


def register(kind: PairingKind, *, auto_before: str | None = None) -> PairingKind:
    """Add `kind` (or replace the one of that name); with `auto_before`, `kind=auto` tries it before that kind."""
    KINDS[kind.name] = kind
    if kind.name in AUTO_ORDER:
        AUTO_ORDER.remove(kind.name)
    if auto_before is not None:
        AUTO_ORDER.insert(AUTO_ORDER.index(auto_before), kind.name)
    return kind


def names() -> tuple[str, ...]:
    return tuple(KINDS)


def module_of(name: str):
    return importlib.import_module(KINDS[name].module)


def kind_of_model_type(model_type: str | None) -> PairingKind | None:
    return next((kind for kind in KINDS.values() if model_type in kind.model_types), None)


# Training rows a kind's `prepare` reads (documents and summaries): enough for a projector's vocabulary.
PREPARE_ROWS = 2000


def prepare(model, encoder_tokenizer, decoder_tokenizer, train_split, data) -> str | None:
    """What the model's pairing kind learns from the training split before training (its module's `prepare`), and
    the line saying so; None for a kind with nothing to learn. A resumed run has it in its checkpoint already."""
    kind = kind_of_model_type(getattr(model.config.decoder, "model_type", None))
    learn = kind and getattr(module_of(kind.name), "prepare", None)
    if learn is None or getattr(model, "encdec_prepared", False):
        return None
    rows = train_split.select(range(min(len(train_split), PREPARE_ROWS)))
    said = learn(model, encoder_tokenizer, decoder_tokenizer, list(rows["document"]) + list(rows["summary"]), data)
    model.encdec_prepared = True  # once per model object: Seq2SeqModule.on_fit_start asks again
    return said


def import_all() -> None:
    """Import every kind's module: each registers its classes with transformers' Auto classes."""
    for kind in list(KINDS.values()):
        importlib.import_module(kind.module)


register(
    PairingKind(
        name="gated",
        module="encdec.cross_attention",
        model_types=("encdec_cross_attention_decoder",),
        why="cross-attention blocks (the decoder's own, or encdec's gated ones) that every pair can take",
        onnx=True,
    ),
    auto_before=None,
)
AUTO_ORDER.append("gated")
register(
    PairingKind(
        name="prefix",
        module="encdec.prefix_attention",
        model_types=("encdec_prefix_encoder", "encdec_prefix_decoder"),
        why=(
            "encoder and decoder are one decoder-only architecture: the decoder's self-attention reads the encoder's "
            "keys and values, layer by layer, with no new weights"
        ),
        freezes_encoder=True,
        frozen_decoder_share=1 / 3,
        onnx=True,
    ),
    auto_before="gated",
)
register(
    PairingKind(
        name="projector",
        module="encdec.projector_prefix",
        model_types=("encdec_projector_decoder",),
        why=(
            "the decoder is a pretrained decoder-only LM and the encoder another model: the encoder's states, "
            "projected onto the decoder's vocabulary, become a prefix its self-attention reads; new cross-attention "
            "learns far slower, docs/decoders.md"
        ),
        freezes_encoder=True,
        onnx=True,
    ),
    auto_before="gated",
)
register(
    PairingKind(
        name="prefix_states",
        module="encdec.prefix_states",
        model_types=("encdec_states_encoder", "encdec_states_decoder"),
        why=(
            "encoder and decoder are one decoder-only architecture: the decoder's own key and value projections "
            "read what enters each of the encoder's layers, so the source's keys learn with the summary's"
        ),
        freezes_encoder=True,
        onnx=True,
    ),
)
