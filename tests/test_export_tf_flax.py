"""TensorFlow and JAX/Flax (transformers 4.57): weights those frameworks wrote are refused in one line instead of
loading as a random model, and (slow) `scripts/check_tf_flax.sh` opens encdec exports in TF and Flax and brings a
model saved there back."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.numpy import load_file, save_file
from transformers import EncoderDecoderModel

from conftest import ROOT
from encdec import run_folder
from encdec.errors import EncdecError
from encdec.inference import load_trained
from test_export import export_of


@pytest.fixture(scope="module")
def bert_export(tmp_path_factory):
    target = tmp_path_factory.mktemp("tf-flax") / run_folder.HF_MODEL
    model = export_of(target, "encoder=tiny", "decoder=tiny")[0]
    return target, model


def as_saved_by(framework: str, export: Path, folder: Path) -> Path:
    """A copy of `export` whose model.safetensors has the names and metadata TF/Flax `save_pretrained(
    safe_serialization=True)` writes (TF: `.../kernel:0`-style paths; Flax: `params`-tree paths)."""
    shutil.copytree(export, folder)
    weights = load_file(folder / "model.safetensors")
    if framework == "tf":
        renamed = {
            "tf_encoder_decoder_model/" + name.replace(".", "/") + ":0": value for name, value in weights.items()
        }
    else:
        renamed = {name.replace(".weight", ".kernel"): value for name, value in weights.items()}
    save_file(renamed, folder / "model.safetensors", metadata={"format": framework})
    return folder


@pytest.mark.parametrize("framework,name", [("tf", "TensorFlow"), ("flax", "Flax")])
def test_weights_saved_by_tf_or_flax_are_refused_not_loaded_at_random(bert_export, tmp_path, framework, name):
    export, model = bert_export
    folder = as_saved_by(framework, export, tmp_path / "saved")
    # What transformers 5 does with it: no error, every weight random.
    loaded = EncoderDecoderModel.from_pretrained(folder)
    word_embeddings = "encoder.embeddings.word_embeddings.weight"
    assert not torch.equal(loaded.state_dict()[word_embeddings], model.state_dict()[word_embeddings])
    with pytest.raises(EncdecError) as refused:
        load_trained(folder)
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(f"model_path={folder}: model.safetensors was written by {name} ")
    assert f"python scripts/tf_flax_to_encdec.py {folder} EXPORT OUT" in message


def test_tf_h5_weights_alone_are_refused_with_the_conversion(bert_export, tmp_path):
    export, _ = bert_export
    shutil.copytree(export, tmp_path / "saved")
    (tmp_path / "saved" / "model.safetensors").rename(tmp_path / "saved" / "tf_model.h5")
    with pytest.raises(
        EncdecError,
        match=r"holds TensorFlow weights \(tf_model\.h5\) only, which transformers 5 "
        r"cannot read: convert it with transformers 4\.57 first",
    ):
        load_trained(tmp_path / "saved")


def test_pytorch_exports_still_load(bert_export):
    export, model = bert_export
    loaded, _, _ = load_trained(export)
    expected = model.state_dict()
    assert all(torch.equal(value, loaded.state_dict()[key]) for key, value in expected.items())


@pytest.mark.slow
def test_check_tf_flax_script_passes():
    """Builds (once) a transformers 4.57 + TensorFlow + JAX/Flax venv; needs the package index the first time."""
    # The script's `python` is this one (encdec's venv), the 4.57 venv its own.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "check_tf_flax.sh")],
        capture_output=True,
        text=True,
        timeout=3600,
        cwd=ROOT,
        env={**os.environ, "PATH": path},
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "tf_flax check: all passed" in result.stdout
