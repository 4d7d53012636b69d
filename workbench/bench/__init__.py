"""Performance benchmarks, reported as JSON (``workbench bench model|data``).

Targets live here, never in timed unit tests. Ratios (for example the realised speed-up of
masking) are measured within one run, interleaving the variants, because shared CPU machines
are noisy.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from statistics import median


def environment() -> dict:
    """Where a benchmark ran: torch version, threads, device, CPU model."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": device, "cpu": cpu}


def interleaved_timings(fns: dict[str, Callable[[], None]], repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds per call of each function, calling them round-robin so drift hits all alike."""
    import torch

    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    return {name: median(t) for name, t in times.items()}


def write_report(report: dict, path: str | Path | None) -> str:
    """Serialise a report to JSON, writing it to ``path`` when given; returns the JSON text."""
    text = json.dumps(report, indent=2)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text + "\n")
    return text
