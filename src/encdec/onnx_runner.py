"""Summarize with an encdec ONNX export, needing only onnxruntime, numpy and tokenizers (no torch, no transformers).

    python runner.py ONNX_FOLDER < documents.txt          # one document per line, one summary per line
    from runner import OnnxSummarizer; OnnxSummarizer("onnx").summarize(["..."])

The export holds `encoder.onnx` (input_ids, attention_mask -> encoder_hidden_states and each cross-attention layer's
keys/values, `cross.*`, or, for a decoder whose self-attention reads the source as a prefix, the source's keys/values
`past.*`), `decoder.onnx` (one new token per row, the self-attention cache `past.*` and `cross.*` -> the next token's
logits and the grown cache `present.*`), the tokenizers and generation_config.json. The cache starts with the
encoder's `past.*` where it gives them, else with one slot of zeros that the decoder graph masks out.
Greedy and beam search follow transformers' `generate` step for step (its beam search is ported below), so the
tokens equal PyTorch's; supported settings: num_beams, length_penalty, early_stopping, no_repeat_ngram_size,
min_new_tokens, max_new_tokens.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime
from tokenizers import Tokenizer

_UNSUPPORTED = {"do_sample": False, "repetition_penalty": 1.0, "num_return_sequences": 1}
_NEVER_FINISHED = -1.0e9  # transformers' score for beams that may not be chosen


class OnnxSummarizer:
    def __init__(self, folder: str | Path, providers: list[str] | None = None, threads: int | None = None):
        folder = Path(folder)
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only: its graph optimiser warns about nodes it cannot fold
        if threads:
            options.intra_op_num_threads = threads
        providers = providers or ["CPUExecutionProvider"]
        self.encoder = onnxruntime.InferenceSession(str(folder / "encoder.onnx"), options, providers=providers)
        self.decoder = onnxruntime.InferenceSession(str(folder / "decoder.onnx"), options, providers=providers)
        self.decoder_inputs = [value.name for value in self.decoder.get_inputs()]
        self.settings = json.loads((folder / "generation_config.json").read_text(encoding="utf-8"))
        self.export = json.loads((folder / "encdec_onnx.json").read_text(encoding="utf-8"))
        self.source_tokenizer = Tokenizer.from_file(str(folder / "encoder_tokenizer" / "tokenizer.json"))
        self.target_tokenizer = Tokenizer.from_file(str(folder / "decoder_tokenizer" / "tokenizer.json"))

    def tokenize(self, documents: list[str], max_source_length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """input_ids and attention_mask as the encoder's transformers tokenizer gives them, right-padded."""
        limit = max_source_length or self.export["max_source_length"]
        self.source_tokenizer.enable_truncation(max_length=limit)
        self.source_tokenizer.no_padding()  # a saved tokenizer.json may carry the padding of its last batch
        rows = [encoding.ids for encoding in self.source_tokenizer.encode_batch(documents)]
        width = max(len(row) for row in rows)
        input_ids = np.full((len(rows), width), self.export["encoder_pad_token_id"], dtype=np.int64)
        attention_mask = np.zeros((len(rows), width), dtype=np.int64)
        for index, row in enumerate(rows):
            input_ids[index, : len(row)] = row
            attention_mask[index, : len(row)] = 1
        return input_ids, attention_mask

    def summarize(self, documents: list[str], max_source_length: int | None = None, **overrides) -> list[str]:
        generated = self.generate(*self.tokenize(documents, max_source_length), **overrides)
        texts = self.target_tokenizer.decode_batch(generated.tolist(), skip_special_tokens=True)
        return [text.strip() for text in texts]

    def encode(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> dict[str, np.ndarray]:
        """What the encoder gives: the encoder states, their mask, every `cross.*` key/value, and the source's `past.*`
        where the decoder's cache starts with it (`start_cache`)."""
        outputs = self.encoder.run(None, {"input_ids": input_ids, "attention_mask": attention_mask})
        names = [output.name for output in self.encoder.get_outputs()]
        return {**dict(zip(names, outputs)), "encoder_attention_mask": attention_mask}

    def start_cache(self, encoded: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The self-attention cache before the first step: the source's keys/values where the encoder gives them, else
        the masked placeholder slot."""
        source = {name: value for name, value in encoded.items() if name.startswith("past.")}
        if source:
            return source
        rows = len(encoded["encoder_attention_mask"])
        return {
            cache.name: np.zeros((rows, cache.shape[1], 1, cache.shape[3]), dtype=np.float32)
            for cache in self.decoder.get_inputs()
            if cache.name.startswith("past.")
        }

    def step(self, last_tokens: np.ndarray, encoded: dict[str, np.ndarray], cache: dict[str, np.ndarray]):
        """The next token's logits `[rows, vocab]` for `last_tokens` `[rows, 1]`, and the cache grown by them."""
        given = {"input_ids": last_tokens, **encoded, **cache}
        outputs = self.decoder.run(None, {name: given[name] for name in self.decoder_inputs})
        names = [output.name for output in self.decoder.get_outputs()]
        grown = {name.replace("present.", "past."): value for name, value in zip(names[1:], outputs[1:])}
        return outputs[0].astype(np.float32), grown

    def generate(self, input_ids: np.ndarray, attention_mask: np.ndarray, **overrides) -> np.ndarray:
        """Token ids `[batch, 1 + generated]`, starting with the decoder start token, as `model.generate` returns."""
        settings = {**self.settings, **overrides}
        for key, default in _UNSUPPORTED.items():
            if settings.get(key) not in (None, default):
                raise ValueError(f"{key}={settings[key]} is not supported by the ONNX runner")
        encoded = self.encode(input_ids.astype(np.int64), attention_mask.astype(np.int64))
        if (settings.get("num_beams") or 1) > 1:
            return self._beam_search(encoded, input_ids.shape[0], settings)
        return self._greedy(encoded, input_ids.shape[0], settings)

    def _greedy(self, encoded, batch, settings) -> np.ndarray:
        eos, pad = _eos_ids(settings), settings.get("pad_token_id")
        pad = pad if pad is not None or not eos.size else int(eos[0])  # as generate pads finished rows
        tokens = np.full((batch, 1), settings["decoder_start_token_id"], dtype=np.int64)
        unfinished = np.ones(batch, dtype=bool)
        cache = self.start_cache(encoded)
        for _ in range(_max_new_tokens(settings)):
            logits, cache = self.step(tokens[:, -1:], encoded, cache)
            chosen = _processed(tokens, logits, settings, eos).argmax(axis=-1)
            if pad is not None:
                chosen = np.where(unfinished, chosen, pad)
            tokens = np.concatenate([tokens, chosen[:, None]], axis=1)
            unfinished &= ~np.isin(chosen, eos)
            if not unfinished.any():
                break
        return tokens

    def _beam_search(self, encoded, batch, settings) -> np.ndarray:
        """transformers' `_beam_search` (vectorised over documents and beams), in numpy."""
        beams = settings["num_beams"]
        eos, length_penalty = _eos_ids(settings), settings.get("length_penalty", 1.0)
        early_stopping = settings.get("early_stopping", False)
        max_length = 1 + _max_new_tokens(settings)
        keep = max(2, 1 + len(eos)) * beams
        among_best = np.arange(keep) < beams
        # As transformers: `pad_token_id or eos` there, so a pad id of 0 fills finished beams with eos too.
        fill = settings.get("pad_token_id") or (int(eos[0]) if eos.size else -1)
        running = np.full((batch, beams, max_length), fill, dtype=np.int64)
        running[:, :, 0] = settings["decoder_start_token_id"]
        finished_tokens = running.copy()
        running_scores = np.zeros((batch, beams), dtype=np.float32)
        running_scores[:, 1:] = _NEVER_FINISHED
        finished_scores = np.full((batch, beams), _NEVER_FINISHED, dtype=np.float32)
        is_finished = np.zeros((batch, beams), dtype=bool)
        may_improve = np.ones((batch, 1), dtype=bool)
        running_origins = np.full((batch, beams, max_length - 1), -1, dtype=np.int64)
        finished_origins = running_origins.copy()
        # Every beam of a document reads the same encoder output, so what the decoder reads of it is repeated once,
        # never reordered (the self-attention cache, the source's part included, follows its beams below).
        encoded = {
            name: np.repeat(value, beams, axis=0) for name, value in encoded.items() if name in self.decoder_inputs
        }
        cache = self.start_cache(encoded)
        length = 1
        while True:
            flat = running[:, :, :length].reshape(batch * beams, length)
            logits, cache = self.step(flat[:, -1:], encoded, cache)
            log_probs = _log_softmax(logits)
            log_probs = _processed(flat, log_probs, settings, eos)
            vocab = log_probs.shape[-1]
            log_probs = (log_probs.reshape(batch, beams, vocab) + running_scores[:, :, None]).reshape(batch, -1)
            top = _top_k(log_probs, keep)
            top_scores = np.take_along_axis(log_probs, top, axis=1)
            source_beam, token = top // vocab, top % vocab
            top_tokens = np.take_along_axis(running, source_beam[:, :, None], axis=1)
            top_tokens[:, :, length] = token
            top_origins = np.take_along_axis(running_origins, source_beam[:, :, None], axis=1)
            top_origins[:, :, length - 1] = source_beam + np.arange(batch)[:, None] * beams
            stops = np.isin(token, eos) | (length + 1 >= max_length)

            continuing = top_scores + stops.astype(np.float32) * _NEVER_FINISHED
            best = _top_k(continuing, beams)
            running = np.take_along_axis(top_tokens, best[:, :, None], axis=1)
            running_scores = np.take_along_axis(continuing, best, axis=1)
            running_origins = np.take_along_axis(top_origins, best[:, :, None], axis=1)
            # The self-attention cache follows its beams, as `generate`'s `_reorder_cache` does.
            rows = (np.take_along_axis(source_beam, best, axis=1) + np.arange(batch)[:, None] * beams).reshape(-1)
            cache = {name: value[rows] for name, value in cache.items()}

            just_finished = stops & among_best[None, :]
            candidates = top_scores / np.float32(length**length_penalty)  # the new token's length
            full = np.all(is_finished, axis=-1, keepdims=True) & (early_stopping is True)
            candidates = candidates + full.astype(np.float32) * _NEVER_FINISHED
            candidates = candidates + (~may_improve).astype(np.float32) * _NEVER_FINISHED
            candidates = candidates + (~just_finished).astype(np.float32) * _NEVER_FINISHED
            merged_scores = np.concatenate([finished_scores, candidates], axis=1)
            chosen = _top_k(merged_scores, beams)
            finished_tokens = np.take_along_axis(
                np.concatenate([finished_tokens, top_tokens], axis=1), chosen[:, :, None], axis=1
            )
            finished_scores = np.take_along_axis(merged_scores, chosen, axis=1)
            finished_origins = np.take_along_axis(
                np.concatenate([finished_origins, top_origins], axis=1), chosen[:, :, None], axis=1
            )
            is_finished = np.take_along_axis(np.concatenate([is_finished, just_finished], axis=1), chosen, axis=1)
            length += 1

            hypothetical = max_length - 1 if early_stopping == "never" and length_penalty > 0.0 else length - 1
            best_running = running_scores[:, :1] / np.float32(hypothetical**length_penalty)
            worst_finished = np.where(is_finished, finished_scores.min(axis=1, keepdims=True), _NEVER_FINISHED)
            may_improve = may_improve & np.any(best_running > worst_finished, axis=-1, keepdims=True)
            open_beam = not (is_finished.all() and early_stopping is True)
            if not (may_improve.any() and open_beam and not stops.all()):
                break
        generated = int(((finished_origins[:, 0, :] + 1) != 0).sum(axis=1).max())
        return finished_tokens[:, 0, : 1 + generated]


def _eos_ids(settings) -> np.ndarray:
    eos = settings.get("eos_token_id")
    return np.array([] if eos is None else eos if isinstance(eos, list) else [eos], dtype=np.int64)


def _max_new_tokens(settings) -> int:
    return settings.get("max_new_tokens") or settings.get("max_length", 20) - 1


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest per row, largest first; ties keep the lower index first, as torch.topk does on CPU.
    A full sort of beams x vocabulary scores took half of beam search's time: only the entries at or above each row's
    k-th largest value are sorted (all of them, so ties at the boundary are ordered as a full stable sort orders
    them)."""
    if scores.shape[-1] <= 4 * k:
        return np.argsort(-scores, axis=-1, kind="stable")[:, :k]
    kth = np.partition(scores, -k, axis=-1)[:, -k]
    top = np.empty((scores.shape[0], k), dtype=np.int64)
    for row, (values, threshold) in enumerate(zip(scores, kth)):
        candidates = np.flatnonzero(values >= threshold)
        top[row] = candidates[np.argsort(-values[candidates], kind="stable")[:k]]
    return top


def _processed(tokens: np.ndarray, scores: np.ndarray, settings, eos: np.ndarray) -> np.ndarray:
    """transformers' logits processors for the supported settings: no repeated n-grams, no eos before min_new_tokens."""
    scores = scores.copy()
    size = settings.get("no_repeat_ngram_size") or 0
    length = tokens.shape[1]
    if size and length + 1 >= size:
        for row, sequence in enumerate(tokens.tolist()):
            prefix = tuple(sequence[length + 1 - size :])
            banned = [
                sequence[i + size - 1] for i in range(length - size + 1) if tuple(sequence[i : i + size - 1]) == prefix
            ]
            scores[row, banned] = -np.inf
    if length - 1 < (settings.get("min_new_tokens") or 0) and eos.size:
        scores[:, eos] = -np.inf
    return scores


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python runner.py ONNX_FOLDER < documents.txt")
    lines = sys.stdin.read().splitlines()
    summaries = iter(
        OnnxSummarizer(sys.argv[1]).summarize([line for line in lines if line.strip()])
        if any(line.strip() for line in lines)
        else []
    )
    for line in lines:
        print(next(summaries) if line.strip() else "", flush=True)
