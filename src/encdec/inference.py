"""Load a trained model (run folder, hf_model/ export or Lightning .ckpt) and summarize documents with it."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm
from transformers import AutoTokenizer, EncoderDecoderConfig, EncoderDecoderModel, PreTrainedTokenizerBase
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.generation import utils as generation_utils

from encdec import pairings, run_folder, xla_decoding
from encdec.boundary import user_settings
from encdec.data.sampling import EvalBatchSampler
from encdec.errors import EncdecError
from encdec.finetune import add_lora, merged_copy
from encdec.foreign_weights import check_pytorch_weights
from encdec.models import attention_kernels, configure_generation, load_tokenizer

pairings.import_all()  # registers every pairing kind's classes with transformers' Auto classes


@user_settings("model_path")
def load_trained(path: str | Path) -> tuple[EncoderDecoderModel, PreTrainedTokenizerBase, PreTrainedTokenizerBase]:
    path = Path(str(path)).expanduser()
    if not path.exists():
        raise EncdecError(f"model_path={path}: no such file or folder")
    if path.is_file():
        if path.suffix != run_folder.CHECKPOINT_SUFFIX:
            raise EncdecError(
                f"model_path={path} is a file but not a .ckpt checkpoint: give a run folder, hf_model/ or .ckpt"
            )
        return _load_checkpoint(path)
    if path.suffix == run_folder.CHECKPOINT_SUFFIX:  # a DeepSpeed checkpoint: a folder of per-rank shards
        # Gathered beside it, not in /tmp: the full float32 weights need the disk the checkpoints already fit on.
        with tempfile.TemporaryDirectory(prefix=".gathered.", dir=path.parent) as scratch:
            return _load_checkpoint(
                run_folder.single_file_checkpoint(path, Path(scratch) / run_folder.GATHERED_CHECKPOINT)
            )
    given = path
    if (path / run_folder.HF_MODEL / "config.json").is_file():
        path = path / run_folder.HF_MODEL
    if (path / "config.json").is_file():
        check_pytorch_weights(path, given)
    if (path / "config.json").is_file() and (path / run_folder.ENCODER_TOKENIZER).is_dir():
        model = _load_export(given, path, "model", EncoderDecoderModel.from_pretrained, path)
        encoder_tokenizer = _load_export(
            given, path, "encoder tokenizer", AutoTokenizer.from_pretrained, path / run_folder.ENCODER_TOKENIZER
        )
        decoder_tokenizer = _load_export(
            given, path, "decoder tokenizer", AutoTokenizer.from_pretrained, path / run_folder.DECODER_TOKENIZER
        )
        return model.eval(), encoder_tokenizer, decoder_tokenizer
    if path.name == run_folder.HF_MODEL and (path / "config.json").is_file():
        raise EncdecError(
            f"model_path={given}: the export {path} has no {run_folder.ENCODER_TOKENIZER}/ folder; {_instead(path)}"
        )
    last = path / run_folder.CHECKPOINTS / run_folder.LAST_CHECKPOINT
    if last.exists():
        return load_trained(last)
    raise EncdecError(
        f"model_path={path} is not a run folder (no hf_model/ or checkpoints/last.ckpt) nor an hf_model export: "
        "point it at outputs/<date>/<time>, its hf_model/ or a .ckpt"
    )


def _load_export(given: Path, export: Path, what: str, load, source: Path):
    """`load(source)` for one part of the hf_model/ export `export` (model_path=`given`): a missing, truncated or
    corrupt file becomes one line that names the folder, what failed and what to load instead."""
    try:
        return load(source)
    except (EncdecError, MemoryError):
        raise
    except Exception as error:  # OSError, SafetensorError, JSONDecodeError, ...: each library raises its own
        first = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
        if len(first) > 200:
            first = first[:197] + "..."
        detail = f"{type(error).__name__}: {first}" if first else type(error).__name__
        where = "" if export == given else f" in {export}"
        raise EncdecError(
            f"model_path={given}: could not load the exported {what}{where} ({detail}): the export is missing files "
            f"or damaged; {_instead(export)}"
        ) from error


def _instead(export: Path) -> str:
    """What to load when a run's hf_model/ is broken: the checkpoint it was exported from, if the run folder has one."""
    candidates = run_folder.best_checkpoints(export.parent) or [
        export.parent / run_folder.CHECKPOINTS / run_folder.LAST_CHECKPOINT
    ]
    if export.name == run_folder.HF_MODEL and candidates[-1].exists():
        return f"point model_path at {candidates[-1]} instead"
    return "restore it from a copy, or point model_path at the run folder's checkpoints/best-*.ckpt (or last.ckpt)"


def _load_checkpoint(path: Path):
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise EncdecError(
            f"model_path={path} is not a readable checkpoint ({type(error).__name__}): it may be truncated"
        ) from error
    if not isinstance(checkpoint, dict) or "encdec" not in checkpoint or "state_dict" not in checkpoint:
        raise EncdecError(f"model_path={path} is not a checkpoint written by encdec's train.py")
    saved = checkpoint["encdec"]
    run_cfg = OmegaConf.create(saved["config"])
    model = EncoderDecoderModel(config=EncoderDecoderConfig.from_dict(saved["model_config"]))
    if getattr(model.encoder, "pooler", None) is not None:
        model.encoder.pooler = None  # built without a pooler in training (see models.build_encoder)
    lora = run_cfg.get("model", {}).get("lora")
    if lora and lora.get("r", 0):
        add_lora(model, lora)
    state = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if k not in _tied_names(model)]:
        raise EncdecError(
            f"model_path={path} does not match the model its config describes "
            f"(missing {len(missing)}, unexpected {len(unexpected)} tensors, e.g. {(missing or unexpected)[0]})"
        )
    model = merged_copy(model)
    encoder_tokenizer = load_tokenizer(run_cfg.encoder, "encoder")
    decoder_tokenizer = load_tokenizer(run_cfg.decoder, "decoder")
    configure_generation(model, decoder_tokenizer, run_cfg.get("generation"))
    return model.eval(), encoder_tokenizer, decoder_tokenizer


def _tied_names(model) -> set[str]:
    """Tensors that tie to others (lm head = embeddings) may be absent from a state dict."""
    names = set(model.all_tied_weights_keys) if hasattr(model, "all_tied_weights_keys") else set()
    return names | {f"decoder.{k}" for k in getattr(model.decoder, "all_tied_weights_keys", {})}


@user_settings("generation")
def apply_generation_overrides(model: EncoderDecoderModel, decoder_tokenizer, generation: DictConfig | None) -> None:
    """A `generation=` choice on the command line replaces the decoding settings saved with the model."""
    if generation:
        configure_generation(model, decoder_tokenizer, generation)


def pick_device(requested: str = "auto") -> torch.device:
    """`device=` as a torch.device: auto, cpu, cuda or cuda:N; one that cannot be used here is one line."""
    if requested is None or requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(str(requested).strip())
    except (RuntimeError, ValueError, TypeError):
        raise EncdecError(f"device={requested} is not a torch device: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise EncdecError(f"device={requested} but no CUDA GPU is available here: use device=auto or device=cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise EncdecError(
                f"device={requested} but this machine has {count} CUDA GPU{'s' if count != 1 else ''} "
                f"(cuda:0 to cuda:{count - 1}): use device=cuda or a smaller index"
            )
    elif device.type == "meta":
        raise EncdecError(f"device={requested} holds no weights and cannot summarize: use auto, cpu, cuda or cuda:N")
    elif device.type != "cpu":
        backend = torch.backends.mps if device.type == "mps" else getattr(torch, device.type, None)
        if not callable(getattr(backend, "is_available", None)) or not backend.is_available():
            raise EncdecError(
                f"device={requested} but no {device.type} device is available here: use device=auto or device=cpu"
            )
    return device


@torch.no_grad()
def summarize(
    model: EncoderDecoderModel,
    encoder_tokenizer: PreTrainedTokenizerBase,
    decoder_tokenizer: PreTrainedTokenizerBase,
    documents: list[str],
    batch_size: int = 8,
    max_source_length: int = 512,
    device: torch.device | None = None,
    progress: bool = True,
    cudnn_attention: bool = False,
    max_tokens: int | None = None,
) -> list[str]:
    """Summaries in input order. Batches are cut from the length-sorted documents so padding stays small: `batch_size`
    rows each, or with `max_tokens` as many as fit rows * (longest source + longest summary) <= max_tokens."""
    device = device or pick_device()
    model.to(device).eval()
    encoded = encoder_tokenizer(documents, max_length=max_source_length, truncation=True)["input_ids"]
    summary_room = 0
    if max_tokens is not None:
        summary_room = model.generation_config.max_new_tokens or model.generation_config.max_length or 0
    batches = list(
        EvalBatchSampler([len(ids) for ids in encoded], batch_size, max_tokens=max_tokens, target_tokens=summary_room)
    )
    summaries: list[str] = [""] * len(documents)
    for batch in tqdm(batches, desc="summarizing", disable=not progress or len(batches) < 2):
        padded = encoder_tokenizer.pad({"input_ids": [encoded[i] for i in batch]}, return_tensors="pt")
        texts = generate_texts(
            model,
            decoder_tokenizer,
            padded["input_ids"].to(device),
            padded["attention_mask"].to(device),
            cudnn_attention=cudnn_attention,
        )
        for index, text in zip(batch, texts):
            summaries[index] = text
    return summaries


@torch.no_grad()
def generate_texts(
    model: EncoderDecoderModel,
    decoder_tokenizer: PreTrainedTokenizerBase,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    cudnn_attention: bool = False,
    **overrides,
) -> list[str]:
    """One batch through `generate_tokens`, decoded."""
    generated = generate_tokens(model, input_ids, attention_mask, cudnn_attention=cudnn_attention, **overrides)
    texts = decoder_tokenizer.batch_decode(generated, skip_special_tokens=True, clean_up_tokenization_spaces=True)
    return [text.strip() for text in texts]


@torch.no_grad()
def generate_tokens(
    model: EncoderDecoderModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    cudnn_attention: bool = False,
    **overrides,
) -> torch.Tensor:
    """`model.generate` on one batch: the encoder runs once, cross-attention keys/values are computed once and cached,
    and beam search leaves them in place (BeamSharedCrossAttentionCache). Every decoding step has a new key length,
    so cuDNN attention would plan anew each step (models.attention_kernels)."""
    if input_ids.device.type == "xla":  # trainer=tpu: generate retraces every step there (encdec.xla_decoding)
        return xla_decoding.greedy_tokens(model, input_ids, attention_mask, **overrides)
    config = model.generation_config
    beams = overrides.get("num_beams") or config.num_beams or 1
    cache_implementation = overrides.get("cache_implementation", config.cache_implementation)
    use_cache = overrides.get("use_cache", config.use_cache)
    if beams > 1 and use_cache and cache_implementation in (None, "dynamic"):
        decoder_config = model.config.get_text_config(decoder=True)
        overrides[_CACHE_ARGUMENT] = BeamSharedCrossAttentionCache(
            DynamicCache(config=decoder_config), DynamicCache(config=decoder_config)
        )
        if cache_implementation is not None:  # generate refuses a cache object next to a cache_implementation
            overrides["cache_implementation"] = None
    with attention_kernels(cudnn_attention):
        return model.generate(input_ids=input_ids, attention_mask=attention_mask, **overrides)


class BeamSharedCrossAttentionCache(EncoderDecoderCache):
    """Beam search reorders the whole cache after every step. The cross-attention half holds keys and values of the
    encoder output, which `generate` repeats num_beams times per document, and beams are only ever reordered among
    their own document's: that reorder copies every cross-attention tensor onto an equal one. Skipped here; it was
    half of beam search's time on CPU (bench/README.md), and grows with source length and batch size."""

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.self_attention_cache.reorder_cache(beam_idx)


# transformers renamed generate's `past_key_values` to `cache` during 5.x; pass ours under the name it reads.
_CACHE_ARGUMENT = "cache" if "cache" in getattr(generation_utils, "ALL_CACHE_NAMES", ()) else "past_key_values"
