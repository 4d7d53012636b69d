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


def show_workbench_errors_briefly(shell=None) -> bool:
    """In a kernel, show a ``WorkbenchError`` (a bad input, a missing file) as its one-line message, with the full
    traceback folded one click below it; every other exception keeps IPython's traceback. ``import workbench``
    calls this; returns whether a kernel was found. ``%tb`` still prints the whole traceback."""
    if shell is None:
        if running_kernel() is None:
            return False
        from IPython import get_ipython

        shell = get_ipython()
    from .errors import WorkbenchError

    shell.set_custom_exc((WorkbenchError,), _one_line_error)
    return True


def _one_line_error(shell, etype, value, tb, tb_offset=None) -> list[str]:
    """IPython's custom exception handler: a folded traceback (HTML), then the one-line error as the cell's error."""
    import html

    from IPython.display import HTML, display

    sys.last_type, sys.last_value, sys.last_traceback = etype, value, tb      # what %tb shows
    full = shell.InteractiveTB.stb2text(shell.InteractiveTB.structured_traceback(etype, value, tb, tb_offset))
    plain = html.escape(_strip_ansi(full)).replace("$", "&#36;")
    display(HTML(f"<details class='tex2jax_ignore mathjax_ignore'><summary style='cursor:pointer'>traceback "
                 f"({etype.__name__})</summary><pre style='font-size:85%'>{plain}</pre></details>"))
    stb = [f"\x1b[0;31m{etype.__name__}\x1b[0m: {value}"]
    shell._showtraceback(etype, value, stb)
    return stb


def _strip_ansi(text: str) -> str:
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", text)


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
