"""Ablation fixtures."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """Train on one thread (no thrashing on the shared 2-core machines)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
