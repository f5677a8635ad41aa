"""Weights a TensorFlow or Flax model wrote (transformers 4.x), found before transformers 5 loads them.

transformers 5 has no TensorFlow or Flax classes. Given `tf_model.h5` or `flax_model.msgpack` alone it fails with a
message about missing files; given the `model.safetensors` that TF/Flax `save_pretrained(safe_serialization=True)`
writes (TF or Flax parameter names, `format` tf/flax in the file's metadata) it matches none of the names, initialises
every weight at random and only logs it: a model that summarizes garbage without an error. Both stop here, in one line
that says how to convert (`scripts/tf_flax_to_encdec.py`, in the transformers 4.57 venv of `scripts/check_tf_flax.sh`).
"""

from __future__ import annotations

from pathlib import Path

from encdec.errors import EncdecError

CONVERT = (
    "convert it with transformers 4.57 first: python scripts/tf_flax_to_encdec.py {folder} EXPORT OUT "
    "(EXPORT: the encdec export it was fine-tuned from, for its tokenizers), then use OUT"
)


def check_pytorch_weights(folder: Path, given: Path) -> None:
    """Refuse `folder` when its weights were written by TensorFlow or Flax (`given`: the model_path as typed)."""
    from safetensors import SafetensorError, safe_open

    for file in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="np") as weights:
                written_by = (weights.metadata() or {}).get("format")
        except (SafetensorError, OSError):
            return  # damaged: the load itself reports it, with the checkpoint to use instead
        if written_by in ("tf", "flax"):
            raise EncdecError(
                f"model_path={given}: {file.name} was written by {_framework(written_by)} (its weight "
                "names are not PyTorch's; transformers 5 would load a random model without an error): "
                + CONVERT.format(folder=folder)
            )
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("pytorch_model*.bin")):
        for name, framework in (("tf_model.h5", "tf"), ("flax_model.msgpack", "flax")):
            if (folder / name).is_file():
                raise EncdecError(
                    f"model_path={given}: {folder} holds {_framework(framework)} weights ({name}) only, "
                    "which transformers 5 cannot read: " + CONVERT.format(folder=folder)
                )


def _framework(written_by: str) -> str:
    return {"tf": "TensorFlow", "flax": "Flax"}[written_by]
