import pytest
import torch

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
