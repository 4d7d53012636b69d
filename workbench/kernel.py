"""The ``workbench`` Jupyter kernel: install its spec (``kernels/workbench/kernel.json``) into the venv.

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
KERNEL_SPEC = {                      # the same as the repository's kernels/workbench/kernel.json (a test checks)
    "argv": ["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
    "display_name": "MicroDiT Workbench",
    "language": "python",
    "metadata": {"debugger": True},
}


def running_kernel():
    """The ipykernel this code runs in (a notebook, papermill), or None in a plain Python process."""
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    shell = get_ipython()
    return getattr(shell, "kernel", None) if shell is not None else None


def kernel_spec() -> dict:
    """The kernel spec with ``argv[0]`` set to the running interpreter (works from a wheel: no file needed)."""
    spec = json.loads(json.dumps(KERNEL_SPEC))
    spec["argv"][0] = sys.executable
    return spec


def install_kernel(prefix: str | None = None) -> str:
    """Install the ``workbench`` kernel spec under ``prefix`` (default: this venv); returns its folder."""
    from jupyter_client.kernelspec import KernelSpecManager

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "kernel.json").write_text(json.dumps(kernel_spec(), indent=1))
        return KernelSpecManager().install_kernel_spec(tmp, KERNEL_NAME, prefix=prefix or sys.prefix)
