"""The picture of bench/quality.py's results: validation ROUGE-2 against steps and against training seconds, one line
per lever, the lead-1 and lead-3 baselines as horizontal lines, the anchors (HF Seq2SeqTrainer on the same model, and
the decoder alone) drawn apart from the levers."""

from __future__ import annotations

import json
import sys
from pathlib import Path

# The anchors stand apart from the levers' colours: HF Seq2SeqTrainer (same model) dashed, the decoder alone (the same
# LM fine-tuned by itself, the line a pairing must beat) thick black with squares.
STYLES = {
    "hf-seq2seqtrainer": {"color": "black", "linestyle": "--", "marker": "o"},
    "decoder-alone": {"color": "black", "linewidth": 2.5, "marker": "s", "markersize": 7, "zorder": 5},
}


def data_label(extra: list[str]) -> str:
    """What the runs validated on, from the invocation's `--extra` overrides: aclsum unless another data set is named
    (a `data=files` set by its training file's folder)."""
    settings = dict(override.split("=", 1) for override in extra if "=" in override)
    if "data.train_file" in settings:
        return f"files: {Path(settings['data.train_file']).parent.name}"
    return settings.get("data", "aclsum")


def plot(results: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    payload = json.loads(results.read_text())
    figure, axes = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
    colors = plt.get_cmap("tab20").colors
    for index, (name, run) in enumerate(payload["runs"].items()):
        curve = run.get("curve") or []
        # tab20 holds 10 hues, each dark then light: the dark ones first, so neighbouring levers differ in hue.
        color = colors[(2 * index) % len(colors) + (2 * index // len(colors)) % 2]
        style = STYLES.get(name, {"color": color, "marker": "o"})
        for axis, x in zip(axes, ("step", "seconds")):
            axis.plot([p[x] for p in curve], [p["rouge2"] for p in curve], label=name, **style)
    baselines = payload.get("baselines", {}).get("validation", {})
    for k, color in ((1, "gray"), (3, "silver")):
        value = baselines.get(f"baseline/lead{k}/rouge2")
        for axis in axes:
            if value is not None:
                axis.axhline(value, color=color, linestyle=":", label=f"lead-{k} ({value:.1f})")
    axes[0].set_xlabel("training step")
    axes[1].set_xlabel(f"training seconds ({payload.get('settings', {}).get('device', 'cpu')}, validation excluded)")
    axes[0].set_ylabel(f"validation ROUGE-2 ({data_label(payload.get('settings', {}).get('extra') or [])})")
    axes[1].legend(fontsize=7, loc="upper left")
    figure.suptitle("Learning curves against the lead baselines, HF Seq2SeqTrainer and the decoder alone")
    figure.tight_layout()
    out = results.with_suffix(".png")
    figure.savefig(out, dpi=110)
    return out


if __name__ == "__main__":
    print(plot(Path(sys.argv[1])))
