"""val_rouge.png: validation ROUGE-2 against step, one line per run that has a curve (matplotlib, imported only
when there is something to plot)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from encdec.report.runs import Run, cell, differing_keys, labels

PLOT = "val_rouge.png"


def plot(runs: Sequence[Run], target: Path, title: str) -> bool:
    """val/rouge2 against step, one line per run with a curve. False when nothing could be plotted."""
    curves = [(run, run.points()) for run in runs]
    curves = [(run, points) for run, points in curves if points]
    if not curves:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    keys = differing_keys(runs)
    names = labels(runs)
    many = len(curves) > 8
    figure, axes = plt.subplots(figsize=(9.5 if many else 8, 5), dpi=120)
    markers = "os^Dv<>pP*Xh"
    for index, (run, points) in enumerate(curves):
        steps, values = zip(*points)
        detail = ", ".join(
            f"{key.split('.')[-1] if len(keys) > 2 else key}={cell(run.config.get(key))}" for key in keys[:3]
        )
        label = names[run.path] + (f" ({detail})" if detail else "") + ("" if run.complete else " [incomplete]")
        # distinct markers keep runs with identical curves (all 0 early on) apart
        axes.plot(
            steps,
            values,
            marker=markers[index % len(markers)],
            markersize=5,
            linewidth=1.6,
            alpha=0.9,
            label=label[:70],
        )
    axes.set_title(title)
    axes.set_xlabel("training step")
    axes.set_ylabel("validation ROUGE-2 F1 (%)")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 2.5, 5, 10]))
    # ROUGE is >= 0: start just below 0 so that a run still at 0 shows above the axis, at least 1 point tall
    top = max(axes.get_ylim()[1], 1.0)
    axes.set_ylim(-0.03 * top, top)
    axes.grid(True, alpha=0.3)
    if many:
        axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    else:
        axes.legend(fontsize=8, loc="best")
    figure.tight_layout()
    figure.savefig(target)
    plt.close(figure)
    return True
