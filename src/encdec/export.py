"""What makes hf_model/ complete and self-contained beyond `save_pretrained` (the encoder's tokenizer at the top,
the decoder's modeling code, a model card, permissions as the umask says), uploading it to the Hub, and
`python export.py` (re-export a run, or push it)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from encdec import model_card, pairings, run_folder
from encdec.checks import check_push_target
from encdec.errors import EncdecError

REMOTE_CODE_ENTRY = "modeling_encdec"
AUTO_MAP = {
    "AutoConfig": f"{REMOTE_CODE_ENTRY}.EncdecEncoderDecoderConfig",
    "AutoModelForSeq2SeqLM": f"{REMOTE_CODE_ENTRY}.EncdecEncoderDecoderModel",
}
_ENCDEC_IMPORT = re.compile(r"^(\s*)from encdec\.(\w+) import", re.MULTILINE)
_RELATIVE_IMPORT = re.compile(r"^\s*from \.(\w+) import", re.MULTILINE)
# remote_modeling.py's line that the export replaces with the modules it carries
_KIND_MODULES_LINE = "_KIND_MODULES: tuple[str, ...] | None = None"
_OTHER_ENCDEC_IMPORT = re.compile(r"^\s*(import encdec\b|from encdec\b)", re.MULTILINE)


def export_hf_model(
    model,
    encoder_tokenizer,
    decoder_tokenizer,
    target: Path,
    untie: bool = False,
    run_config=None,
    metrics: dict | None = None,
) -> None:
    """save_pretrained, atomically (`run_folder.write_folder_atomic`).

    The folder is self-contained: the encoder's tokenizer also at its top (what AutoTokenizer loads), the decoder's
    modeling code when encdec added its cross-attention, and a model card from `run_config` and `metrics`."""

    def fill(tmp: Path) -> None:
        state_dict = None
        if untie:
            # Shared encoder/decoder tensors are stored twice: plain transformers reloads them as equal copies.
            state_dict = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
        model.save_pretrained(tmp, state_dict=state_dict)
        encoder_tokenizer.save_pretrained(tmp)
        encoder_tokenizer.save_pretrained(tmp / run_folder.ENCODER_TOKENIZER)
        decoder_tokenizer.save_pretrained(tmp / run_folder.DECODER_TOKENIZER)
        remote_code = needs_remote_code(model)
        if remote_code:
            write_remote_code(tmp)
        (tmp / "README.md").write_text(model_card.render(model, run_config, metrics, remote_code), encoding="utf-8")

    run_folder.write_folder_atomic(target, fill)


def needs_remote_code(model) -> bool:
    """Whether plain transformers lacks a side's classes (a pairing kind's: `encdec.pairings`)."""
    return bool(_kind_modules(model))


def _kind_modules(model) -> list[str]:
    """The modules of the pairing kinds whose classes the model's two sides are."""
    kinds = [
        pairings.kind_of_model_type(getattr(side, "model_type", None))
        for side in (model.config.encoder, model.config.decoder)
    ]
    return sorted({kind.module for kind in kinds if kind is not None})


def write_remote_code(folder: Path) -> list[str]:
    """Copy `remote_modeling.py` as `modeling_encdec.py`, every pairing kind's module (`encdec.pairings`) and every
    encdec module those import (transitively), each under its own name with the imports made relative, then name the
    classes in config.json's `auto_map`. Copied at export time, so an export always carries the code that trained it.
    Returns the file names written."""
    kind_modules = {kind.module.rpartition(".")[2]: kind.module for kind in pairings.KINDS.values()}
    pending = [
        ("encdec.remote_modeling", REMOTE_CODE_ENTRY),
        *((module, name) for name, module in kind_modules.items()),
    ]
    written: list[str] = []
    while pending:
        module, name = pending.pop()
        text = _ENCDEC_IMPORT.sub(
            r"\1from .\2 import", Path(importlib.util.find_spec(module).origin).read_text("utf-8")
        )
        if _OTHER_ENCDEC_IMPORT.search(text):
            raise RuntimeError(
                f"{module} imports encdec in a form the export cannot make relative "
                "(use `from encdec.MODULE import NAME`)"
            )
        if name == REMOTE_CODE_ENTRY:
            # Static imports: transformers copies an entry's relative imports into its module cache by reading them.
            imports = "".join(f"from .{m} import __name__ as _{m}  # noqa: F401\n" for m in sorted(kind_modules))
            text = text.replace(_KIND_MODULES_LINE, f"{imports}_KIND_MODULES = {tuple(sorted(kind_modules))!r}", 1)
        (folder / f"{name}.py").write_text(text, encoding="utf-8")
        written.append(f"{name}.py")
        pending += [
            (f"encdec.{needed}", needed)
            for needed in _RELATIVE_IMPORT.findall(text)
            if f"{needed}.py" not in written and needed not in [queued for _, queued in pending]
        ]
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["auto_map"] = AUTO_MAP
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return sorted(written)


def push_to_hub(folder: Path, repo_id: str, key: str) -> str:
    """Upload `folder` as the model repository `repo_id` (made if missing); returns its URL."""
    check_push_target(repo_id, key)
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo_id, repo_type="model", exist_ok=True)
        api.upload_folder(
            folder_path=str(folder), repo_id=repo_id, repo_type="model", commit_message="Upload an encdec summarizer"
        )
    except Exception as error:  # noqa: BLE001 - HTTP, network and auth errors of huggingface_hub and httpx alike
        first = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
        raise EncdecError(
            f"{key}={repo_id}: the upload failed ({type(error).__name__}: {first[:200]}); {folder} is "
            f"complete, upload it later with `hf upload {repo_id} {folder}`"
        ) from error
    return f"https://huggingface.co/{repo_id}"


def export(cfg: DictConfig) -> Path:
    """`python export.py model_path=RUN [format=hf|onnx] [push_to_hub=ORG/NAME] [output_dir=FOLDER]`."""
    from encdec.evaluate import training_config
    from encdec.inference import load_trained

    if cfg.format == "onnx":
        from encdec.onnx_export import check_available

        check_available()
    check_push_target(cfg.get("push_to_hub"), "push_to_hub")
    path = Path(str(cfg.model_path)).expanduser()
    if not path.exists():
        raise EncdecError(f"model_path={path}: no such file or folder")
    run_dir = next(
        (folder for folder in (path, path.parent, path.parent.parent) if (folder / run_folder.SAVED_CONFIG).is_file()),
        None,
    )
    target = Path(str(cfg.output_dir)).expanduser() if cfg.get("output_dir") else _default_target(path, run_dir)
    if cfg.format == "onnx" and not cfg.get("output_dir"):
        target = target.with_name(run_folder.ONNX)
    run_config = training_config(path)
    model, encoder_tokenizer, decoder_tokenizer = load_trained(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if cfg.format == "onnx":
        from encdec.onnx_export import export_onnx

        max_source_length = OmegaConf.select(run_config, "data.max_source_length", default=None) if run_config else None
        export_onnx(model, encoder_tokenizer, decoder_tokenizer, target, max_source_length or 512)
    else:
        share_weights = bool(run_config is not None and run_config.get("model", {}).get("share_weights"))
        export_hf_model(
            model,
            encoder_tokenizer,
            decoder_tokenizer,
            target,
            untie=share_weights,
            run_config=run_config,
            metrics=model_card.run_folder_metrics(run_dir),
        )
    print(f"exported {target}", flush=True)
    if cfg.get("push_to_hub"):
        print(f"uploaded {push_to_hub(target, cfg.push_to_hub, 'push_to_hub')}", flush=True)
    return target


def _default_target(path: Path, run_dir: Path | None) -> Path:
    """A run folder's (or its hf_model/'s) export is rewritten in place; a checkpoint's needs output_dir."""
    if path.is_dir() and path.name == run_folder.HF_MODEL:
        return path
    if run_dir is not None and path == run_dir:
        return run_dir / run_folder.HF_MODEL
    raise EncdecError(
        f"model_path={path} is not a run folder nor an hf_model/ export: give output_dir=FOLDER for its export"
    )
