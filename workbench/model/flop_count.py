"""Measured FLOPs with ``torch.utils.flop_counter``, including CPU attention.

PyTorch's counter knows the CUDA attention kernels but not
``aten._scaled_dot_product_flash_attention_for_cpu``; we register the same formula for it so
that measured and analytic counts (``MicroDiT.flops``) agree on every device::

    flops = measure_flops(lambda: model(x, c_noise, caption))
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils import flop_counter

_CPU_SDPA = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu


def _register_cpu_attention() -> None:
    if _CPU_SDPA in flop_counter.flop_registry:
        return

    @flop_counter.register_flop_formula(_CPU_SDPA)
    def _cpu_sdpa_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_flop_count(query, key, value)


def measure_flops(fn: Callable[[], object]) -> int:
    """Run ``fn()`` under ``FlopCounterMode`` and return the total FLOPs it executed."""
    _register_cpu_attention()
    counter = flop_counter.FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()
