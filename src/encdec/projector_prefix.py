"""Projector prefix: any encoder, any causal LM. The encoder's states are mapped into the decoder's own token-embedding
space and the decoder's self-attention reads them as a prefix, as LLaVA joins an image encoder to an LLM.

A plain learned map (linear or MLP) onto the embedding space lands off it: its outputs shrink toward the mean of the
embeddings, which the LM has never seen as input, and with a hundred training documents it learns a generic cue, not
the document (issue 26's probe: a least-squares map was worse than no document at all). So the projector here ends
on the decoder's vocabulary: an MLP gives, per source state, logits over the decoder's tokens, and the prefix vector
is the expected input embedding under their softmax, a point on the simplex of real token embeddings. Before
training, `fit_projector` teaches it to name, for each encoder token of the training texts, the decoder token that
covers the same characters (the two tokenizers aligned by character offsets): a few seconds of a classifier on
frozen encoder states, after which the decoder reads the source nearly as it reads text, and copies from it through
the induction heads it already has. Training then moves everything together, from the source's meaning to the
decoder's words.

Like the prefix pair (`prefix_attention`), the decoder continues from the position after its source, and generation
fills its self-attention cache with the source once per `generate` call. Registered with transformers' Auto classes
when imported, so a saved model reloads with `EncoderDecoderModel.from_pretrained(folder)`.
"""

from __future__ import annotations

import copy
import time

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel
from transformers.cache_utils import Cache
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_FOR_MASKED_LM_MAPPING

from encdec.cross_attention import CrossAttentionDecoderConfig
from encdec.prefix_attention import PrefixDecoderForCausalLM

DECODER_TYPE = "encdec_projector_decoder"


class ProjectorDecoderConfig(CrossAttentionDecoderConfig):
    """Config of a causal LM that reads an encoder's states, projected onto its vocabulary, as a prefix.

    - `cross_attention_hidden_size`: the encoder's width (also tells `EncoderDecoderModel` to add no projection).
    - `projector_hidden_size`: the MLP's inner width.
    - `projector_temperature`: divides the logits before the softmax; below 1 the prefix vectors sit nearer single
      tokens (issue 26's probe, frozen SmolLM2 reading MiniLM: summary loss 4.54 at 1.0, 3.97 at 0.5; 4.72 with no
      document, 3.54 with the text itself).
    - `projector_top_k`: the tokens each prefix vector mixes (`VocabularyProjector`).
    """

    model_type = DECODER_TYPE

    projector_hidden_size: int = 1024
    projector_temperature: float = 0.5
    projector_top_k: int = 16


class VocabularyProjector(nn.Module):
    """Encoder states -> logits over the decoder's vocabulary -> the expected token embedding (`forward`).

    The expectation runs over each state's `top_k` most likely tokens, found without gradients in chunks: the full
    softmax over SmolLM2's 49k tokens, with its backward, cost ~20x the step time of the rest on CPU, and at
    temperature 0.5 the other tokens carry next to no weight."""

    def __init__(
        self, in_features: int, hidden_features: int, out_features: int, temperature: float = 1.0, top_k: int = 16
    ):
        super().__init__()
        self.temperature = temperature
        self.top_k = top_k
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.fc2 = nn.Linear(hidden_features, out_features)

    def queries(self, states: torch.Tensor) -> torch.Tensor:
        return self.fc2(nn.functional.gelu(self.fc1(states)))

    def logits(self, states: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        return self.queries(states) @ embeddings.T

    def forward(self, states: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        queries = self.queries(states).to(embeddings.dtype)
        flat = queries.detach().reshape(-1, queries.shape[-1])
        with torch.no_grad():
            candidates = torch.cat(
                [
                    (part @ embeddings.T).topk(min(self.top_k, len(embeddings)), dim=-1).indices
                    for part in flat.split(2048)
                ]
            ).view(*queries.shape[:-1], -1)
        chosen = embeddings[candidates]  # [..., top_k, width]
        weights = ((chosen @ queries.unsqueeze(-1)).squeeze(-1) / self.temperature).softmax(dim=-1)
        return (weights.unsqueeze(-1) * chosen).sum(dim=-2)


class ProjectorDecoderForCausalLM(PrefixDecoderForCausalLM):
    """A pretrained causal LM (`self.lm`) whose self-attention cache starts with its own pass over the projected
    encoder states (`self.projector`)."""

    config_class = ProjectorDecoderConfig
    config: ProjectorDecoderConfig

    def _add_modules(self, lm: PreTrainedModel) -> None:
        config = self.config
        self.projector = VocabularyProjector(
            config.cross_attention_hidden_size or config.hidden_size,
            config.projector_hidden_size,
            config.hidden_size,
            config.projector_temperature,
            config.projector_top_k,
        )

    def source_parameters(self) -> list[nn.Parameter]:
        """The parameters that read the source: `model.freeze_encoder` fixes them with the encoder."""
        return list(self.projector.parameters())

    def _fill_cache(self, cache: Cache, encoder_hidden_states: torch.Tensor, source_mask: torch.Tensor) -> None:
        embeddings = self.lm.get_input_embeddings().weight
        # With the source side fixed (encoder and projector frozen), the source's keys and values are read as the
        # prefix pair reads its frozen encoder's: without gradients, so a step trains the LM on the summary tokens
        # only, at a third of the cost of back-propagating through the source too.
        trains_source = encoder_hidden_states.requires_grad or any(p.requires_grad for p in self.source_parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and trains_source):
            prefix = self.projector(encoder_hidden_states.to(embeddings.dtype), embeddings)
            self.lm.base_model(
                inputs_embeds=prefix,
                attention_mask=source_mask,
                use_cache=True,
                **{self._cache_argument: cache},
            )


def pairing_problem(encoder_config, decoder_config, side=None) -> str | None:
    """Why the decoder cannot read a projected prefix, or None: it must be a pretrained decoder-only LM (its vocabulary
    is what the projector aims at; BERT-style decoders read both ways and keep their own cross-attention)."""
    if type(decoder_config) in MODEL_FOR_MASKED_LM_MAPPING or type(decoder_config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        return f"it needs a decoder-only LM as the decoder (Llama, Qwen2, SmolLM2, GPT-2, ...), not '{decoder_config.model_type}'"
    if side is not None and side.get("init") == "random":
        return "it needs a pretrained decoder (decoder.init=random has no vocabulary to project onto)"
    return None


def build(encoder: PreTrainedModel, lm: PreTrainedModel, side=None):
    """The pairing kind's entry (`encdec.pairings`): the encoder as it is, the LM wrapped with a new projector."""
    decoder = pair(lm, encoder.config.hidden_size)
    return (
        encoder,
        decoder,
        "",
        "lm.",
        {f"decoder.{name}" for name, _ in decoder.projector.named_parameters("projector")},
    )


def prepare(model, encoder_tokenizer, decoder_tokenizer, texts, data) -> str:
    """Before training: the projector learns the decoder's token under each encoder token of the training texts."""
    fitted = fit_projector(model, encoder_tokenizer, decoder_tokenizer, texts, max_length=data.max_source_length)
    return (
        f"projector fitted to the decoder's vocabulary on {int(fitted['tokens'])} aligned tokens of the training texts "
        f"in {fitted['seconds']:.0f} s: it names the decoder's token under {fitted['held_out_accuracy']:.0%} of "
        "held-out encoder tokens"
    )


def pair(lm: PreTrainedModel, encoder_hidden_size: int, projector_hidden_size: int = 1024):
    """Wrap a loaded causal LM (weights kept, not copied) to read an encoder of `encoder_hidden_size` through a new
    projector."""
    config = ProjectorDecoderConfig(
        base_config=copy.deepcopy(lm.config),
        cross_attention_hidden_size=encoder_hidden_size,
        projector_hidden_size=projector_hidden_size,
    )
    return ProjectorDecoderForCausalLM(config, lm)


def aligned_targets(texts, encoder_tokenizer, decoder_tokenizer, max_length: int) -> tuple[dict, torch.Tensor]:
    """The encoder's batch of `texts` and, per encoder token, the id of the decoder token covering its first
    character (-100 for special and padding tokens): both tokenizers must be fast (character offsets)."""
    encoded = encoder_tokenizer(
        list(texts),
        truncation=True,
        max_length=max_length,
        padding=True,
        return_offsets_mapping=True,
        return_tensors="pt",
    )
    offsets = encoded.pop("offset_mapping").tolist()
    special = encoded.pop("special_tokens_mask", None)
    targets = torch.full(encoded["input_ids"].shape, -100, dtype=torch.long)
    for row, text in enumerate(texts):
        decoded = decoder_tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ends = [end for _, end in decoded["offset_mapping"]]
        ids = decoded["input_ids"]
        index = 0
        for position, (start, end) in enumerate(offsets[row]):
            if end <= start or not ids:
                continue  # special or padding token
            while index < len(ends) - 1 and ends[index] <= start:
                index += 1
            targets[row, position] = ids[index]
    del special
    return dict(encoded), targets


@torch.no_grad()
def _encoder_states(encoder, batch: dict) -> torch.Tensor:
    return encoder(**batch).last_hidden_state


def fit_projector(
    model,
    encoder_tokenizer,
    decoder_tokenizer,
    texts,
    *,
    max_length: int = 512,
    steps: int = 200,
    lr: float = 3e-3,
    tokens_per_step: int = 512,
    seed: int = 0,
    progress=None,
) -> dict[str, float]:
    """Teach the projector of `model` (an `EncoderDecoderModel` whose decoder is a `ProjectorDecoderForCausalLM`) the
    decoder token under each encoder token of `texts`, on frozen encoder states. Returns what it measured: aligned
    tokens, the last loss, accuracy on a held-out tenth and seconds."""
    started = time.perf_counter()
    decoder = model.decoder
    if not (encoder_tokenizer.is_fast and decoder_tokenizer.is_fast):
        raise ValueError("fitting the projector needs fast tokenizers on both sides (character offsets)")
    was_training = model.encoder.training
    model.encoder.eval()
    states, targets = [], []
    for start in range(0, len(texts), 16):
        batch, aligned = aligned_targets(texts[start : start + 16], encoder_tokenizer, decoder_tokenizer, max_length)
        batch = {key: value.to(model.device) for key, value in batch.items()}
        hidden = _encoder_states(model.encoder, batch)
        keep = aligned != -100
        states.append(hidden[keep.to(hidden.device)].float())
        targets.append(aligned[keep].to(hidden.device))
        if progress is not None:
            progress(min(start + 16, len(texts)), len(texts))
    model.encoder.train(was_training)
    states, targets = torch.cat(states), torch.cat(targets)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(targets), generator=generator).to(targets.device)
    held_out = order[: max(1, len(order) // 10)]
    fit = order[len(held_out) :]
    # The softmax over the tokens the texts contain, not the whole vocabulary: ~10x less work per step, and the
    # projector's directions carry over to the other tokens' embeddings.
    vocabulary, targets = torch.unique(targets, return_inverse=True)
    embeddings = decoder.lm.get_input_embeddings().weight.detach().float()[vocabulary]
    projector = decoder.projector
    trainable = [p.requires_grad for p in projector.parameters()]
    projector.requires_grad_(True)  # fitted here even where training keeps it fixed (model.freeze_encoder)
    optimizer = torch.optim.AdamW(projector.parameters(), lr=lr, weight_decay=0.0)
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        pick = fit[torch.randint(0, len(fit), (tokens_per_step,), generator=generator).to(fit.device)]
        logits = projector.logits(states[pick], embeddings)
        loss = nn.functional.cross_entropy(logits, targets[pick])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        predicted = torch.cat([projector.logits(states[part], embeddings).argmax(-1) for part in held_out.split(4096)])
        accuracy = (predicted == targets[held_out]).float().mean().item()
    for parameter, was_trainable in zip(projector.parameters(), trainable):
        parameter.requires_grad_(was_trainable)
    return {
        "tokens": float(len(targets)),
        "loss": float(loss.item()),
        "held_out_accuracy": accuracy,
        "seconds": time.perf_counter() - started,
    }


AutoConfig.register(DECODER_TYPE, ProjectorDecoderConfig, exist_ok=True)
AutoModelForCausalLM.register(ProjectorDecoderConfig, ProjectorDecoderForCausalLM, exist_ok=True)
