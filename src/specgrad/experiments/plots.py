"""Figure helpers shared by the experiments (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .series import by_method  # noqa: E402


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
    """Write ``fig`` as ``folder/name`` (a PNG) and close it; a busy figure is redrawn with
    an adaptive 256-color palette, which keeps it well under 200 KB."""
    fig.tight_layout()
    path = Path(folder) / name
    fig.savefig(path, dpi=110)
    plt.close(fig)
    if path.stat().st_size > 120_000:
        from PIL import Image

        with Image.open(path) as im:
            small = im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
        small.save(path, optimize=True)
    return name
