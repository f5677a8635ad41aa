"""Data, with no Lightning in it: raw splits (`loading`), tokens and padded batches (`tokenize`: how labels are
masked), and the order of batches (`sampling`: one resumable sampler, three batching strategies).

Names are imported on first use, so `import encdec.data.sampling` does not load `datasets`.
"""

import importlib

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


def __getattr__(name: str):
    if name not in _NAMES:
        raise AttributeError(f"module 'encdec.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"encdec.data.{_NAMES[name]}"), name)
    globals()[name] = value
    return value
