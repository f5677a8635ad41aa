"""Bring a model fine-tuned and saved in TensorFlow or Flax (transformers 4.57) back into encdec.

    python scripts/tf_flax_to_encdec.py SAVED EXPORT OUT

Run it in the transformers 4.57 venv of scripts/check_tf_flax.sh (it holds torch 2.13 for this): the TF or Flax
class loads what it saved (`model.safetensors` of either, `tf_model.h5`, `flax_model.msgpack`), and transformers
4.57's own TF->PyTorch / Flax->PyTorch weight loaders rename and transpose every weight into a PyTorch
`EncoderDecoderModel`, whose `save_pretrained` writes the model.safetensors that transformers 5 and encdec load.
(Not `EncoderDecoderModel.from_pretrained(SAVED)`: for a TF-written safetensors file, 4.57 matches no encoder weight
("newly initialized") and then fails to save the meta tensors it left.) SAVED: the folder TF/Flax saved; EXPORT: the encdec export it started from, whose tokenizers,
generation_config.json and model card are copied along; OUT: a new folder for eval.py/predict.py model_path=OUT.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from transformers import EncoderDecoderConfig, EncoderDecoderModel


def convert(saved: Path, export: Path, out: Path) -> None:
    if out.exists():
        sys.exit(f"tf_flax_to_encdec: {out} exists: give a new folder")
    model = EncoderDecoderModel(config=EncoderDecoderConfig.from_pretrained(saved))
    if _written_by(saved) == "flax":
        from transformers import FlaxEncoderDecoderModel
        from transformers.modeling_flax_pytorch_utils import load_flax_weights_in_pytorch_model

        model = load_flax_weights_in_pytorch_model(model, FlaxEncoderDecoderModel.from_pretrained(saved).params)
    else:
        model = _tf_weights_into(model, saved)
    model.save_pretrained(out, safe_serialization=True)
    for item in export.iterdir():
        if item.is_dir() and item.name.endswith("_tokenizer"):
            shutil.copytree(item, out / item.name)
        elif item.suffix in (".json", ".txt", ".md", ".model") and item.name != "config.json":
            # generation_config.json too: 4.57's save_pretrained writes one from the config's defaults
            # (max_length 20), not the export's settings.
            shutil.copyfile(item, out / item.name)
    print(f"converted {saved} -> {out}")


def _tf_weights_into(model, saved: Path):
    """TF's weights by name into the PyTorch model. transformers 4.57's TF->PyTorch loaders cannot do it for an
    EncoderDecoderModel: they drop the first level of every name ("encoder/", "decoder/") as if it were the model's
    scope, and a BERT encoder's TF names hold a "bert/" level its PyTorch BertModel lacks. So each name is converted
    by 4.57's own rules (kernel -> weight transposed, gamma/beta, `_._` lists, `___` aliases) after a scope is put
    in front, and the one candidate that exists in the PyTorch model with the same shape is taken."""
    import numpy as np
    import torch
    from transformers import TFEncoderDecoderModel
    from transformers.modeling_tf_pytorch_utils import TransposeType, convert_tf_weight_name_to_pt_weight_name

    targets = model.state_dict()
    tf_model = TFEncoderDecoderModel.from_pretrained(saved)
    state = {}
    for weight in tf_model.weights:
        tf_name = weight.name.split("/", 1)[1] if weight.name.startswith(tf_model.name + "/") else weight.name
        array = weight.numpy()
        name, transpose = convert_tf_weight_name_to_pt_weight_name("scope/" + tf_name, tf_weight_shape=array.shape)
        if transpose is TransposeType.SIMPLE:
            array = np.ascontiguousarray(array.T)
        parts = name.split(".")
        candidates = [name, ".".join(parts[:1] + parts[2:])]  # encoder.bert.X -> encoder.X
        # Shapes compared without size-1 axes: TF's Conv1D (GPT-2) keeps its bias as [1, n], PyTorch's as [n].
        found = [
            c
            for c in candidates
            if c in targets and np.squeeze(np.empty(targets[c].shape)).shape == np.squeeze(array).shape
        ]
        if not found:
            raise SystemExit(f"tf_flax_to_encdec: no PyTorch weight for TF weight {weight.name} {array.shape}")
        state[found[0]] = torch.from_numpy(array.reshape(targets[found[0]].shape))
    missing, _ = model.load_state_dict(state, strict=False)
    model.tie_weights()
    untied = [
        name
        for name in missing
        if not any(
            torch.equal(model.state_dict()[name], value)
            for value in state.values()
            if value.shape == targets[name].shape
        )
    ]
    if untied:
        raise SystemExit(f"tf_flax_to_encdec: TF saved no weight for {untied}")
    return model


def _written_by(saved: Path) -> str:
    if (saved / "flax_model.msgpack").is_file():
        return "flax"
    if (saved / "model.safetensors").is_file():
        from safetensors import safe_open

        with safe_open(str(saved / "model.safetensors"), framework="np") as weights:
            return (weights.metadata() or {}).get("format", "pt")
    return "tf"


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: python scripts/tf_flax_to_encdec.py SAVED EXPORT OUT")
    convert(*(Path(argument) for argument in sys.argv[1:]))
