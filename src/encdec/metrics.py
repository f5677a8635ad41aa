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


def stage_scores(results: list[dict[str, float]], stage: str) -> dict[str, float]:
    """The loss and ROUGE of a `stage` (val, test) from what Lightning's validate/test return."""
    merged = {k: float(v) for part in results for k, v in part.items()}
    return {k: merged[k] for k in [f"{stage}/loss", *(f"{stage}/{r}" for r in ROUGE_TYPES)] if k in merged}


def beside_baselines(test: dict[str, float], baselines: dict[str, float]) -> str:
    """One line a reader checks first: does the model beat copying the document's first sentences?"""
    names = ("rouge1", "rouge2", "rougeL")
    model = "/".join(f"{test.get(f'test/{n}', float('nan')):.2f}" for n in names)
    leads = "   ".join(
        f"lead-{k} " + "/".join(f"{baselines[f'baseline/lead{k}/{n}']:.2f}" for n in names) for k in LEAD_SENTENCES
    )
    lead1 = all(test.get(f"test/{n}", float("-inf")) > baselines[f"baseline/lead1/{n}"] for n in names)
    return f"test ROUGE-1/2/L: model {model}   {leads}   ({'above' if lead1 else 'NOT above'} lead-1 in all three)"


def format_scores(metrics: dict[str, float]) -> str:
    """`loss 4.30  rouge1 15.02 ...`: the run's one-line report of a stage."""
    return "  ".join(f"{name.split('/')[-1]} {value:.2f}" for name, value in metrics.items())
