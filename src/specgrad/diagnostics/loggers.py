"""Where monitor records go: CSV, JSON lines, TensorBoard, and a figure over training."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Optional, Union

import pandas as pd

from .monitor import COLUMNS

PathLike = Union[str, Path]


class CSVLogger:
    """Append each sampled step's records to a CSV file (header written once).

    Example:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "spectra.csv")
        >>> log = CSVLogger(path)
        >>> log.log([{"step": 0, "block": "fc", "st_A": 2.0, "nr_G": 5.0}])
        >>> log.close()
        >>> open(path).read().splitlines()[0].split(",")[:4]
        ['step', 'block', 'kind', 'shape']
    """

    def __init__(self, path: PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists() or self.path.stat().st_size == 0
        self._file = open(self.path, "a", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=COLUMNS, extrasaction="ignore")
        if new:
            self._writer.writeheader()

    def log(self, rows: list[dict]) -> None:
        self._writer.writerows(rows)
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class JSONLinesLogger:
    """Append one JSON object per record to a ``.jsonl`` file."""

    def __init__(self, path: PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a")

    def log(self, rows: list[dict]) -> None:
        for r in rows:
            self._file.write(json.dumps({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class TensorBoardLogger:
    """Write ``spectral/<block>/{nr_G, st_A, ratio}`` scalars to TensorBoard event files
    (needs the ``tensorboard`` package: ``pip install specgrad[tensorboard]``)."""

    def __init__(self, logdir: PathLike):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("TensorBoardLogger needs tensorboard: pip install tensorboard") from e
        self.writer = SummaryWriter(log_dir=str(logdir))

    def log(self, rows: list[dict]) -> None:
        for r in rows:
            for key in ("nr_G", "st_A", "ratio"):
                if not math.isnan(r[key]):
                    self.writer.add_scalar(f"spectral/{r['block']}/{key}", r[key], r["step"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def plot_history(frame: pd.DataFrame, path: Optional[PathLike] = None):
    """``nr(G)`` (solid) and ``st(A)`` (dashed) of every block over training, log scale,
    one panel per block kind. Returns the matplotlib figure; saves it when ``path`` is given.

    Example:
        >>> f = pd.DataFrame({"step": [0, 10], "block": ["fc", "fc"], "kind": ["linear"] * 2,
        ...                   "nr_G": [4.0, 6.0], "st_A": [2.0, 2.5]})
        >>> fig = plot_history(f)
        >>> len(fig.axes)
        1
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if frame.empty:
        raise ValueError("no records to plot")
    kinds = list(dict.fromkeys(frame["kind"]))
    fig, axes = plt.subplots(1, len(kinds), figsize=(5.5 * len(kinds), 4), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        sub = frame[frame["kind"] == kind]
        for k, (block, rows) in enumerate(sub.groupby("block", sort=False)):
            color = f"C{k % 10}"
            ax.plot(rows["step"], rows["nr_G"], color=color, label=f"{block} nr(G)")
            ax.plot(rows["step"], rows["st_A"], color=color, ls="--", label=f"{block} st(A)")
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(f"{kind} blocks: nr(G) solid, st(A) dashed")
        if sub["block"].nunique() <= 8:
            ax.legend(fontsize=7)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
