"""The monitor inside a transformers ``Trainer`` and a Lightning ``Trainer``: records,
specgrad's loggers, the trainers' own loggers, and specgrad optimizers handed to them."""

import csv

import pytest
import torch

from specgrad.diagnostics import CSVLogger
from specgrad.optim import Muon, split_params

transformers = pytest.importorskip("transformers")


def _gpt2():
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=32)
    return transformers.GPT2LMHeadModel(config)


def _dataset(n=20, length=16):
    g = torch.Generator().manual_seed(0)
    return [{"input_ids": (ids := torch.randint(64, (length,), generator=g)), "labels": ids} for _ in range(n)]


def test_specgrad_imports_without_the_trainers():
    import specgrad.callbacks as callbacks

    assert callbacks.summarize([]) == {}
    with pytest.raises(AttributeError):
        callbacks.NoSuchCallback


def test_trainer_callback_records_and_logs_to_ours_and_the_trainers(tmp_path):
    pytest.importorskip("accelerate")  # the Trainer needs it
    from specgrad.callbacks import monitor_trainer

    model = _gpt2()
    opt = Muon(split_params(model).param_groups(spectral={"lr": 0.02}, adamw={"lr": 3e-4}))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    before = model.transformer.h[0].mlp.c_fc.weight.detach().clone()
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=5, per_device_train_batch_size=4, logging_steps=1,
        save_strategy="no", report_to=["tensorboard"], use_cpu=True,
        disable_tqdm=True,
    )  # fmt: skip
    trainer = transformers.Trainer(model=model, args=args, train_dataset=_dataset(), optimizers=(opt, sched))
    callback = monitor_trainer(trainer, every=2, loggers=[CSVLogger(tmp_path / "spectra.csv")])
    trainer.train()

    assert trainer.optimizer.optimizer is opt or trainer.optimizer is opt  # accelerate may wrap it
    assert not torch.equal(before, model.transformer.h[0].mlp.c_fc.weight)  # Muon stepped
    steps = sorted({r["step"] for r in callback.records})
    assert steps == [0, 2, 4]
    blocks = {r["block"] for r in callback.records}
    assert {"transformer.h.0.attn.c_attn.q", "transformer.h.0.mlp.c_fc"} <= blocks
    with open(tmp_path / "spectra.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(callback.records) and {r["step"] for r in rows} == {"0", "2", "4"}

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = list((tmp_path / "out").rglob("events.out.tfevents*"))  # the default logging dir
    assert files
    tags = set()
    for f in files:
        acc = EventAccumulator(str(f))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    assert {"train/spectral/fraction", "train/spectral/median_gain"} <= tags, tags


def test_lightning_callback_records_and_logs(tmp_path):
    pl = pytest.importorskip("lightning.pytorch")
    from lightning.pytorch.loggers import CSVLogger as LightningCSV

    from specgrad.callbacks import SpectralLightningCallback

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 32),
                                           torch.nn.ReLU(), torch.nn.Linear(32, 1))  # fmt: skip

        def training_step(self, batch, _):
            x, y = batch
            return torch.nn.functional.mse_loss(self.net(x), y)

        def configure_optimizers(self):
            return Muon(split_params(self).param_groups(spectral={"lr": 0.02}, adamw={"lr": 1e-3}))

    data = torch.utils.data.TensorDataset(torch.randn(40, 8), torch.randn(40, 1))
    callback = SpectralLightningCallback(every=2)
    trainer = pl.Trainer(max_steps=5, callbacks=[callback], logger=LightningCSV(tmp_path), accelerator="cpu",
                         enable_progress_bar=False, enable_checkpointing=False, log_every_n_steps=1)  # fmt: skip
    trainer.fit(Module(), torch.utils.data.DataLoader(data, batch_size=8))
    assert sorted({r["step"] for r in callback.records}) == [0, 2, 4]
    metrics = list(tmp_path.rglob("metrics.csv"))
    assert metrics and "spectral/fraction" in metrics[0].read_text()
