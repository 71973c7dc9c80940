"""Figure helpers shared by the experiments (matplotlib, Agg backend)."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def by_method(series: dict, metric: str, x: str = "step") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"<method>/seed<k>": {...}}`` -> ``{method: (x, values (seeds, len))}``, truncated to
    the shortest seed so that runs stopped early still stack."""
    groups = defaultdict(list)
    for key, metrics in series.items():
        method = re.sub(r"/seed\d+$", "", key)
        if metric in metrics:
            groups[method].append((np.asarray(metrics[x], dtype=float), np.asarray(metrics[metric], dtype=float)))
    out = {}
    for method, runs in groups.items():
        n = min(len(v) for _, v in runs)
        out[method] = (runs[0][0][:n], np.stack([v[:n] for _, v in runs]))
    return out


def band_plot(ax, series: dict, metric: str, x: str = "step", methods=None, log: bool = False) -> None:
    """Mean over seeds with a min-max band, one line per method."""
    for k, (method, (xs, ys)) in enumerate(sorted(by_method(series, metric, x).items())):
        if methods is not None and method not in methods:
            continue
        color = f"C{k % 10}"
        ax.plot(xs, np.nanmean(ys, 0), color=color, label=method)
        if ys.shape[0] > 1:
            ax.fill_between(xs, np.nanmin(ys, 0), np.nanmax(ys, 0), color=color, alpha=0.2)
    ax.set_xlabel(x)
    ax.set_ylabel(metric)
    if log:
        ax.set_yscale("log")
    ax.legend(fontsize=8)


def save(fig, folder: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(Path(folder) / name, dpi=110)
    plt.close(fig)
    return name
