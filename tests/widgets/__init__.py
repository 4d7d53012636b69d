"""Widget tests in plain Python: build each widget, drive its controls and buttons, check its outputs.

Shared helpers live here (the widget test files may not add a conftest).
"""

import threading

import pytest
import torch

from tests.conftest import randomize_zero_params
from workbench.model import MicroDiT


def tiny_model(seed: int = 0, **overrides) -> MicroDiT:
    """A 16 px, depth-2, width-64 pixel MicroDiT with every weight non-zero (so masking changes outputs)."""
    torch.manual_seed(seed)
    config = {"depth": 2, "width": 64, "mixer_width": 64, "sample_size": 16, **overrides}
    return randomize_zero_params(MicroDiT.from_preset("nano", **config), seed=seed).eval()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run fastest on one thread; with 2 threads on a busy 2-core machine each op can spin for ms."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Gated(torch.nn.Module):
    """Wraps a model so that every forward waits for ``gate`` (to catch a generation while it runs)."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner
        self.config = inner.config
        self.gate = threading.Event()

    def forward(self, *args, **kwargs):
        if not self.gate.wait(30):
            raise TimeoutError("gate never opened")
        return self.inner(*args, **kwargs)


class Broken(torch.nn.Module):
    """A model whose forward always fails."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner
        self.config = inner.config

    def forward(self, *args, **kwargs):
        raise RuntimeError("the model broke")
