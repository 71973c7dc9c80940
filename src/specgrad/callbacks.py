"""The spectral monitor inside a transformers ``Trainer`` or a PyTorch Lightning ``Trainer``.

Both callbacks run a :class:`~specgrad.diagnostics.SpectralMonitor` on the model being
trained, record every ``every``-th optimizer step (after backward, before the optimizer
step), hand the records to specgrad's own ``loggers`` (CSV, JSON lines, TensorBoard) and a
summary to the trainer's loggers: ``spectral/fraction`` (blocks with ``nr(G) >= st(A)``),
``spectral/median_gain`` (the median ``nr(G) / st(A)``) and, with ``per_block=True``,
``spectral/<block>`` (each block's gain).

- :class:`SpectralTrainerCallback` (transformers): the summary joins the trainer's logs
  (``report_to``: TensorBoard, W&B, ...), so it must be called before the reporting
  callbacks; :func:`monitor_trainer` puts it there.
- :class:`SpectralLightningCallback` (``lightning`` or ``pytorch_lightning``): the summary
  goes to every logger of ``trainer.loggers`` (TensorBoard, CSV, ...).

transformers and Lightning are optional: each class is built when first imported from this
module, so ``import specgrad`` needs neither.

specgrad's optimizers are ``torch.optim.Optimizer`` s and go where any does::

    from specgrad.optim import Muon, split_params

    groups = split_params(model).param_groups(spectral={"lr": 0.02}, adamw={"lr": 3e-4})
    opt = Muon(groups)
    sched = transformers.get_cosine_schedule_with_warmup(opt, 100, 10_000)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=ds, optimizers=(opt, sched))

    # Lightning
    def configure_optimizers(self):
        return Muon(split_params(self).param_groups(spectral={"lr": 0.02}, adamw={"lr": 3e-4}))
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Optional

from torch import nn

from .diagnostics import SpectralMonitor

__all__ = ["SpectralLightningCallback", "SpectralTrainerCallback", "monitor_trainer", "summarize"]


def summarize(rows: list[dict], per_block: bool = False) -> dict[str, float]:
    """The trainer-log summary of one sampled step's records.

    Example:
        >>> summarize([{"block": "a", "ratio": 4.0}, {"block": "b", "ratio": 0.5}, {"block": "c", "ratio": 2.0}])
        {'spectral/fraction': 0.6666666666666666, 'spectral/median_gain': 2.0}
    """
    gains = sorted(r["ratio"] for r in rows if math.isfinite(r["ratio"]))
    if not gains:
        return {}
    k = len(gains)
    median = gains[k // 2] if k % 2 else (gains[k // 2 - 1] + gains[k // 2]) / 2
    out = {"spectral/fraction": sum(g >= 1 for g in gains) / k, "spectral/median_gain": median}
    if per_block:
        out.update({f"spectral/{r['block']}": r["ratio"] for r in rows if math.isfinite(r["ratio"])})
    return out


class _Watch:
    """The monitor a callback runs: opened on a model at the start of training, stepped
    once per optimizer step, closed at the end."""

    def __init__(self, every: int, loggers: Iterable, per_block: bool, monitor_kwargs: dict):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive integer, got {every!r}")
        self.every = every
        self.loggers = list(loggers)
        self.per_block = per_block
        self.monitor_kwargs = monitor_kwargs
        self.monitor: Optional[SpectralMonitor] = None
        self.records: list[dict] = []

    def open(self, model: nn.Module) -> None:
        self.close()
        self.monitor = SpectralMonitor(model, every=self.every, loggers=self.loggers, **self.monitor_kwargs)

    def step(self) -> dict[str, float]:
        if self.monitor is None:
            return {}
        rows = self.monitor.step()
        self.records.extend(rows)
        return summarize(rows, self.per_block)

    def close(self) -> None:
        if self.monitor is not None:
            self.monitor.close()
            self.monitor = None


def _trainer_callback():
    from transformers import TrainerCallback

    class SpectralTrainerCallback(TrainerCallback):
        """Run :class:`~specgrad.diagnostics.SpectralMonitor` every ``every`` optimizer steps
        of a transformers ``Trainer``.

        ``loggers``: specgrad loggers that get every record (e.g.
        ``CSVLogger("runs/spectra.csv")``); ``per_block``: each block's gain in the trainer's
        logs too; other keywords go to the monitor (``layers``, ``max_dim``, ...). Records
        are in :attr:`records`. The latest summary joins the trainer's next logs, which
        reach ``report_to`` only if this callback runs before the reporting callbacks: add
        it with :func:`monitor_trainer`. With gradient accumulation the micro-batches add up
        to one record.

        Example (not run: builds a Trainer)::

            cb = monitor_trainer(trainer, every=50, loggers=[CSVLogger("runs/spectra.csv")])
            trainer.train()
            cb.records[-1]
        """

        def __init__(self, every: int = 50, *, loggers: Iterable = (), per_block: bool = False, **monitor_kwargs: Any):
            self.watch = _Watch(every, loggers, per_block, monitor_kwargs)
            self.pending: dict[str, float] = {}

        @property
        def records(self) -> list[dict]:
            return self.watch.records

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.watch.open(model)

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            self.pending.update(self.watch.step())

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs is not None and self.pending and state.is_world_process_zero:
                logs.update(self.pending)
                self.pending = {}

        def on_train_end(self, args, state, control, **kwargs):
            self.watch.close()

    return SpectralTrainerCallback


def _lightning_callback():
    try:
        import lightning.pytorch as pl
    except ImportError:
        try:
            import pytorch_lightning as pl
        except ImportError:
            raise ImportError("SpectralLightningCallback needs lightning: pip install lightning") from None

    class SpectralLightningCallback(pl.Callback):
        """Run :class:`~specgrad.diagnostics.SpectralMonitor` every ``every`` optimizer steps
        of a Lightning ``Trainer`` and log the summary to every logger of ``trainer.loggers``.

        ``loggers``, ``per_block`` and other keywords as in :class:`SpectralTrainerCallback`.
        Records are in :attr:`records`.

        Example (not run: needs Lightning)::

            trainer = lightning.Trainer(callbacks=[SpectralLightningCallback(every=50)], logger=CSVLogger("logs"))
        """

        def __init__(self, every: int = 50, *, loggers: Iterable = (), per_block: bool = False, **monitor_kwargs: Any):
            self.watch = _Watch(every, loggers, per_block, monitor_kwargs)

        @property
        def records(self) -> list[dict]:
            return self.watch.records

        def on_fit_start(self, trainer, pl_module):
            self.watch.open(pl_module)

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            summary = self.watch.step()
            if summary and trainer.is_global_zero:
                for logger in trainer.loggers:
                    logger.log_metrics(summary, step=trainer.global_step)

        def on_fit_end(self, trainer, pl_module):
            self.watch.close()

    return SpectralLightningCallback


_BUILDERS = {"SpectralTrainerCallback": _trainer_callback, "SpectralLightningCallback": _lightning_callback}
_built: dict[str, type] = {}


def __getattr__(name: str):
    if name in _BUILDERS:
        if name not in _built:
            _built[name] = _BUILDERS[name]()
        return _built[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def monitor_trainer(trainer, every: int = 50, **kwargs: Any):
    """Add a :class:`SpectralTrainerCallback` to a transformers ``trainer``, first among its
    callbacks, so its summary reaches the trainer's ``report_to`` loggers; returns it.
    Keywords as in :class:`SpectralTrainerCallback`."""
    callback = __getattr__("SpectralTrainerCallback")(every, **kwargs)
    trainer.callback_handler.callbacks.insert(0, callback)
    return callback

