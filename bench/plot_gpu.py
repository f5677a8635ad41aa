"""Bar charts of the GPU results: training tokens/s per run (from the per-run lines of every gpu_check log, so runs of
calls cut short by their time limit still count) and generation summaries/s (generation_gpu.json).

    python bench/plot_gpu.py     # writes bench/results/train_gpu.png and generation_gpu.png
"""

from __future__ import annotations

import json
import re
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
RUN_LINE = re.compile(r"^\s+(\S+)\s+([\d.]+) tok/s\s+([\d.]+) s/step.*?gpu (\d+) MiB")


def training_runs() -> list[tuple[str, str, float, float]]:
    """(call, run, tokens/s, peak GPU MiB) from bench/results/train_gpu_h200_run*.log, in call order."""
    rows = []
    for log in sorted(RESULTS.glob("train_gpu_h200_run*.log")):
        call = log.stem.rsplit("_", 1)[-1].replace("run", "call ")
        for line in log.read_text().splitlines():
            match = RUN_LINE.match(line)
            if match:
                rows.append((call, match[1], float(match[2]), float(match[4])))
    return rows


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = training_runs()
    colours = {"hf": "#9e9e9e", "encdec": "#1f77b4"}
    fig, ax = plt.subplots(figsize=(9, 0.42 * len(rows) + 1.2))
    labels = [f"{run}  ({call})" for call, run, _, _ in rows]
    values = [tokens / 1000 for _, _, tokens, _ in rows]
    bars = ax.barh(labels, values, color=[colours[run.split("+")[0].split("-")[0]] for _, run, _, _ in rows])
    for bar, (_, _run, tokens, memory) in zip(bars, rows):
        ax.text(
            bar.get_width() + 1,
            bar.get_y() + bar.get_height() / 2,
            f"{tokens / 1000:.1f}k  ({memory / 1024:.1f} GiB)",
            va="center",
            fontsize=8,
        )
    ax.invert_yaxis()
    ax.set_xlabel("non-pad source+target tokens/s (thousands); peak GPU memory in brackets")
    ax.set_xlim(0, max(values) * 1.25)
    ax.set_title(
        "bert2bert-base, bf16-mixed, batch 32, H200: grey Seq2SeqTrainer, blue encdec\n"
        "(+nocudnn / default encdec: cuDNN attention left out; +cudnn: torch's choice)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(RESULTS / "train_gpu.png", dpi=110)
    print("wrote", RESULTS / "train_gpu.png")

    data = json.loads((RESULTS / "generation_gpu.json").read_text())["scenarios"]
    fig, axes = plt.subplots(1, len(data), figsize=(4.5 * len(data), 3.2), squeeze=False)
    for ax, (_key, scenario) in zip(axes[0], data.items()):
        summary = scenario["summary"]
        ax.bar(
            [r["method"] for r in summary],
            [r["summaries_per_s"] for r in summary],
            color=["#1f77b4" if r["method"].startswith("encdec") else "#9e9e9e" for r in summary],
        )
        ax.set_title(f"{scenario['setup']['mode']}: summaries/s", fontsize=9)
        ax.tick_params(axis="x", labelrotation=45, labelsize=8)
    fig.suptitle(
        "generation on the H200 (bert2bert-base, float32, 64 new tokens): grey generate, blue encdec", fontsize=9
    )
    fig.tight_layout()
    fig.savefig(RESULTS / "generation_gpu.png", dpi=110)
    print("wrote", RESULTS / "generation_gpu.png")


if __name__ == "__main__":
    main()
