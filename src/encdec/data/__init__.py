"""Data, with no Lightning in it: raw splits (`loading`), tokens and padded batches (`tokenize`: how labels are
masked), and the order of batches (`sampling`: one resumable sampler, three batching strategies).

Names are imported on first use, so `import encdec.data.sampling` does not load `datasets`.
"""

from encdec.lazy import lazy_names

_NAMES = {
    "SPLITS": "loading",
    "load_splits": "loading",
    "with_lead_copies": "loading",
    "IGNORE_INDEX": "tokenize",
    "Seq2SeqCollator": "tokenize",
    "tokenize_split": "tokenize",
    "ResumableBatchSampler": "sampling",
    "EvalBatchSampler": "sampling",
    "FixedSize": "sampling",
    "GroupedByLength": "sampling",
    "TokenBudget": "sampling",
    "training_order": "sampling",
}
__all__ = sorted(_NAMES)


__getattr__, __dir__ = lazy_names(__name__, {name: f"{__name__}.{module}" for name, module in _NAMES.items()})
