"""Shared pytest fixtures: small MicroDiT models with non-trivial weights."""

import pytest
import torch

from workbench.model import MicroDiT

pytest_plugins = ["tests.data.tiny_models"]      # the tiny VAE / CLIP / T5 folders, as session fixtures everywhere


def randomize_zero_params(model: torch.nn.Module, std: float = 0.02, seed: int = 0) -> torch.nn.Module:
    """Fill the zero-initialised weights (adaLN, final layer, out-projections) with small noise.

    At the paper's initialisation the network output is exactly zero, which would make many
    behavioural tests pass trivially; this gives every path a non-zero effect.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().max() == 0:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model


@pytest.fixture
def nano():
    """A deterministic ``nano`` MicroDiT with every weight non-zero, in eval mode."""
    torch.manual_seed(0)
    return randomize_zero_params(MicroDiT.from_preset("nano")).eval()


@pytest.fixture
def caption_batch():
    """A factory of (caption, mask) batches for 384-d captions with padding after ``length`` tokens."""
    def make(batch: int = 2, tokens: int = 77, length: int = 8, dim: int = 384, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        caption = torch.randn(batch, tokens, dim, generator=gen)
        mask = torch.zeros(batch, tokens, dtype=torch.long)
        mask[:, :length] = 1
        return caption, mask
    return make


@pytest.fixture(autouse=True, scope="session")
def private_workbench_cache(tmp_path_factory):
    """Keep the tests' cached FID reference statistics out of the user's ~/.cache/workbench."""
    import os

    before = os.environ.get("WORKBENCH_CACHE")
    os.environ["WORKBENCH_CACHE"] = str(tmp_path_factory.mktemp("workbench-cache"))
    yield
    if before is None:
        os.environ.pop("WORKBENCH_CACHE", None)
    else:
        os.environ["WORKBENCH_CACHE"] = before


@pytest.fixture
def one_thread():
    """Train on one thread: bit-exact repeats, and no thrashing on the shared 2-core machines."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
