"""eval.py and predict.py: ROUGE of a trained model on a data split, and summaries of raw text."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from encdec import run_folder
from encdec.arguments import override_key
from encdec.data.loading import load_splits
from encdec.errors import EncdecError
from encdec.inference import apply_generation_overrides, load_trained, pick_device, summarize
from encdec.metrics import lead_baselines, rouge


def evaluate(cfg: DictConfig) -> dict[str, float]:
    device = pick_device(cfg.device)  # a bad device= fails before the model loads
    _data_of_the_run(cfg)
    budget = cfg.data.get("eval_max_tokens_per_batch")
    model, encoder_tokenizer, decoder_tokenizer = load_trained(cfg.model_path)
    apply_generation_overrides(model, decoder_tokenizer, cfg.get("generation"))
    dataset = load_splits(cfg.data)[cfg.split]
    predictions = summarize(
        model,
        encoder_tokenizer,
        decoder_tokenizer,
        list(dataset["document"]),
        batch_size=cfg.data.eval_batch_size,
        max_source_length=cfg.data.max_source_length,
        device=device,
        max_tokens=budget,
    )
    metrics = {f"{cfg.split}/{name}": value for name, value in rouge(predictions, list(dataset["summary"])).items()}
    if cfg.get("baselines", True):
        metrics.update(lead_baselines(list(dataset["document"]), list(dataset["summary"])))
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    rows = (
        {"document": d, "reference": r, "prediction": p}
        for d, r, p in zip(dataset["document"], dataset["summary"], predictions)
    )
    run_folder.write_jsonl(out_dir / run_folder.PREDICTIONS, rows)
    run_folder.write_json(out_dir / run_folder.METRICS, {**metrics, "model_path": str(cfg.model_path)})
    print(json.dumps(metrics, indent=2))
    print(f"wrote {out_dir / run_folder.METRICS}", file=sys.stderr)
    return metrics


def _user_keys() -> list[str]:
    """The keys this command line set (`data=x` gives `data`, `+data.k=v` gives `data.k`)."""
    return [override_key(o) for o in HydraConfig.get().overrides.task]


def training_config(model_path) -> DictConfig | None:
    """The config of the training run `model_path` belongs to (the run folder, its hf_model/ or a .ckpt in its
    checkpoints/), or None for a model from elsewhere."""
    path = Path(str(model_path)).expanduser()
    for folder in (path, path.parent, path.parent.parent):
        if (folder / run_folder.SAVED_CONFIG).is_file():
            return run_folder.saved_config(folder, f"model_path={model_path}: its run folder {folder}")
    return None


def _data_of_the_run(cfg: DictConfig) -> None:
    """Score a model on the data it was trained with (lengths, splits, files) unless the command line picks `data=`;
    single `data.KEY=V` overrides still apply on top."""
    keys = _user_keys()
    trained = None if "data" in keys else training_config(cfg.model_path)
    if trained is None or "data" not in trained:
        print(f"data: {cfg.data.name}", file=sys.stderr)
        return
    data = OmegaConf.create(OmegaConf.to_container(trained.data, resolve=True))
    for key in keys:
        if key.startswith("data."):
            OmegaConf.update(data, key[len("data.") :], OmegaConf.select(cfg, key), force_add=True)
    with open_dict(cfg):
        cfg.data = data
    print(f"data: {data.name}, as the model was trained (data=NAME picks other data)", file=sys.stderr)


def predict(cfg: DictConfig) -> None:
    if cfg.input == "-":
        try:
            lines = sys.stdin.buffer.read().decode("utf-8").splitlines()
        except UnicodeDecodeError:
            raise EncdecError("input=- received text that is not UTF-8: convert it first (iconv -t UTF-8)") from None
    else:
        path = Path(str(cfg.input)).expanduser()
        if path.is_dir():
            raise EncdecError(f"input={cfg.input} is a folder: give a text file with one document per line, or -")
        if not path.is_file():
            raise EncdecError(f"input={cfg.input}: no such file (give a text file with one document per line, or -)")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise EncdecError(f"input={cfg.input} is not UTF-8 text: re-save it as UTF-8") from None
    if not any(line.strip() for line in lines):
        raise EncdecError(f"input={cfg.input} is empty: give one document per line")
    budget = cfg.get("max_tokens_per_batch")
    device = pick_device(cfg.device)
    max_source_length = cfg.max_source_length
    if max_source_length is None:
        trained = training_config(cfg.model_path)
        max_source_length = OmegaConf.select(trained, "data.max_source_length", default=None) if trained else None
        max_source_length = max_source_length or 512
    model, encoder_tokenizer, decoder_tokenizer = load_trained(cfg.model_path)
    apply_generation_overrides(model, decoder_tokenizer, cfg.get("generation"))
    texts = [line for line in lines if line.strip()]
    summaries = iter(
        summarize(
            model,
            encoder_tokenizer,
            decoder_tokenizer,
            texts,
            batch_size=cfg.batch_size,
            max_source_length=max_source_length,
            device=device,
            max_tokens=budget,
        )
    )
    # One output line per input line; a blank input line gets a blank summary, so lines stay aligned.
    for line in lines:
        print(next(summaries) if line.strip() else "", flush=True)
