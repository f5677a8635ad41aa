"""ROUGE with Google's `rouge-score` (the package behind HF `evaluate`'s rouge, without needing the Hub)."""

from __future__ import annotations

import re

from rouge_score import rouge_scorer

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _sentences_on_lines(text: str) -> str:
    # rougeLsum treats newlines as sentence boundaries; a regex split avoids nltk's punkt download.
    return "\n".join(s for s in _SENTENCE_END.split(text.strip()) if s)


def rouge(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean F1 of each ROUGE type, in percent, stemmed as in the papers."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        return {name: 0.0 for name in ROUGE_TYPES}
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for prediction, reference in zip(predictions, references):
        scores = scorer.score(_sentences_on_lines(reference), _sentences_on_lines(prediction))
        for name in ROUGE_TYPES:
            totals[name] += scores[name].fmeasure
    return {name: 100.0 * total / len(predictions) for name, total in totals.items()}


LEAD_SENTENCES = (1, 3)


def lead(document: str, sentences: int) -> str:
    """The document's first `sentences` sentences, split as rougeLsum splits them."""
    return " ".join([s for s in _SENTENCE_END.split(document.strip()) if s][:sentences])


def lead_baselines(documents: list[str], references: list[str]) -> dict[str, float]:
    """ROUGE of copying each document's first 1 and 3 sentences (`baseline/lead1/rouge2`, ...), scored exactly as
    the model's predictions are. A model that does not beat these has not learned to summarize yet."""
    scores = {}
    for k in LEAD_SENTENCES:
        copied = [lead(document, k) for document in documents]
        scores.update({f"baseline/lead{k}/{name}": value for name, value in rouge(copied, references).items()})
    return scores
