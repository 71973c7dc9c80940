"""Figure helpers shared by the experiments (matplotlib, Agg backend)."""

from __future__ import annotations

import io
import math
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .runner import write_bytes  # noqa: E402
from .series import by_method  # noqa: E402


def mean_band(ax, xs, ys, color, label=None, *, center=np.nanmean, alpha: float = 0.2, **line) -> None:
    """A line of ``center(ys, 0)`` over the seeds (rows) of ``ys`` ``(seeds, len(xs))`` and a
    band of their min-max range; steps where every seed is NaN (diverged) stay blank."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ax.plot(xs, center(ys, 0), color=color, label=label, **line)
        if ys.shape[0] > 1:
            ax.fill_between(xs, np.nanmin(ys, 0), np.nanmax(ys, 0), color=color, alpha=alpha, lw=0)


def band_plot(ax, series: dict, metric: str, x: str = "step", methods=None, log: bool = False) -> None:
    """Mean over seeds with a min-max band, one line per method."""
    for k, (method, (xs, ys)) in enumerate(sorted(by_method(series, metric, x).items())):
        if methods is not None and method not in methods:
            continue
        mean_band(ax, xs, ys, f"C{k % 10}", method)
    ax.set_xlabel(x)
    ax.set_ylabel(metric)
    if log:
        ax.set_yscale("log")
    ax.legend(fontsize=8)


def save(fig, folder: Path, name: str) -> str:
    """Write ``fig`` as ``folder/name`` (a PNG) and close it; a busy figure is redrawn with
    an adaptive 256-color palette, which keeps it well under 200 KB. The file is written
    atomically with normal permissions (:func:`~specgrad.experiments.runner.write_bytes`)."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    if buf.tell() > 120_000:
        from PIL import Image

        buf.seek(0)
        with Image.open(buf) as im:
            small = im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
        buf = io.BytesIO()
        small.save(buf, format="png", optimize=True)
    write_bytes(Path(folder) / name, buf.getvalue())
    return name


def panel_grid(n: int, cols: int = 4, size: tuple[float, float] = (3.4, 2.8), sharex: bool = True):
    """A figure of ``n`` panels, at most ``cols`` to a row, each ``size`` inches; its axes."""
    cols = min(n, cols)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(size[0] * cols, size[1] * rows), sharex=sharex, squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat)[:n]
