"""The ``workbench`` Jupyter kernel: install ``kernels/workbench/kernel.json`` into the venv.

``workbench kernel install`` writes the spec into ``sys.prefix/share/jupyter/kernels/workbench``
with this interpreter's absolute path, so notebooks and papermill run with the venv that has
the package, whatever ``python`` is first on PATH.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

KERNEL_NAME = "workbench"
SPEC_FILE = Path(__file__).resolve().parent.parent / "kernels" / KERNEL_NAME / "kernel.json"


def kernel_spec() -> dict:
    """The shipped kernel spec with ``argv[0]`` set to the running interpreter."""
    spec = json.loads(SPEC_FILE.read_text())
    spec["argv"][0] = sys.executable
    return spec


def install_kernel(prefix: str | None = None) -> str:
    """Install the ``workbench`` kernel spec under ``prefix`` (default: this venv); returns its folder."""
    from jupyter_client.kernelspec import KernelSpecManager

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "kernel.json").write_text(json.dumps(kernel_spec(), indent=1))
        return KernelSpecManager().install_kernel_spec(tmp, KERNEL_NAME, prefix=prefix or sys.prefix)
