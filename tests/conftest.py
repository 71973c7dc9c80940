import os
import shutil

import pytest
import torch
from torch import nn

F64 = torch.float64


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matrices run fastest on one intra-op thread, and it keeps the suite fast when
    other processes compete for the cores (idle OpenMP threads spin otherwise)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def gaussian(*shape, seed: int, dtype=F64) -> torch.Tensor:
    return torch.randn(*shape, generator=gen(seed), dtype=F64).to(dtype)


cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def mlp(seed=1, dtype=torch.float32, bias=False, device="cpu"):
    """16 -> 32 -> 24 -> 8 with tanh: the optimizer tests' model."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(16, 32, bias=bias), nn.Tanh(), nn.Linear(32, 24, bias=bias), nn.Tanh(),
        nn.Linear(24, 8, bias=bias),
    ).to(device, dtype)  # fmt: skip


def data(dtype=torch.float32, seed=0, device="cpu"):
    """A regression batch for :func:`mlp`, drawn in float64 whatever ``dtype``."""
    g = torch.Generator().manual_seed(seed)
    X, Y = torch.randn(64, 16, generator=g, dtype=F64), torch.randn(64, 8, generator=g, dtype=F64)
    return X.to(device, dtype), Y.to(device, dtype)


def train(model, opt, steps, seed=0):
    """``steps`` optimizer steps of mean squared error on :func:`data`; the parameters after."""
    p = next(model.parameters())
    X, Y = data(p.dtype, seed, p.device)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.mse_loss(model(X), Y).backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def rel(a, b):
    """``||a - b|| / ||b||`` in float64, on the host."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm())


@pytest.fixture
def browser(tmp_path):
    """Headless Chromium (Debian's chromium and chromium-driver) with its console log kept.
    Skips where they are missing, except in CI (CI=true), where that is a failure."""
    chromium = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    driver_path = shutil.which("chromedriver")
    if not (chromium and driver_path):
        if os.environ.get("CI"):
            pytest.fail("CI needs chromium and chromium-driver (installed by .ci/run)")
        pytest.skip("chromium / chromedriver not installed")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,2000"):  # fmt: skip
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=opts)
    yield driver
    driver.quit()
