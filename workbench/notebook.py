"""The helpers notebooks import: set-up, parameter parsing, log lines, and the record the pipeline reads back.

Notebooks call these and add no logic of their own::

    from workbench.notebook import notebook_setup, record
    notebook_setup(workdir, threads)          # enter the project folder, set torch threads
    record(step=100, final_loss=0.08)         # a small table; ``read_results`` (the pipeline, tests) reads it back
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from .config import parse_yaml
from .kernel import running_kernel
from .errors import InputError, MissingFileError

RESULT_MIME = "application/vnd.workbench.result+json"    # record()'s display output in a notebook
RESULT_PREFIX = "workbench-result: "           # outside a kernel record() prints one JSON line after it


_START_DIR: Path | None = None


def notebook_setup(workdir: str | os.PathLike = "auto", threads: int = 0) -> Path:
    """Enter the project folder (printed on one line) and set torch's thread count; returns the folder.

    ``"auto"`` (the notebooks' default) is the project folder as a user meets it: the folder above
    the notebook's when the notebook sits in a ``notebooks/`` folder beside ``configs/`` (a checkout
    of this repository), else the notebook's own folder (a copy of the notebooks anywhere). Any other
    relative ``workdir`` is taken from the folder the kernel started in, so running the cell twice is
    harmless. ``threads > 0`` calls ``torch.set_num_threads`` (on a busy 2-core machine 1 thread can
    be much faster than 2).
    """
    global _START_DIR
    if _START_DIR is None:
        _START_DIR = Path.cwd()
    if str(workdir) == "auto":
        checkout = _START_DIR.name == "notebooks" and (_START_DIR.parent / "configs").is_dir()
        workdir = ".." if checkout else "."
    target = (_START_DIR / Path(workdir).expanduser()).resolve()
    if not target.is_dir():
        raise MissingFileError(f"workdir {str(target)!r} does not exist")
    os.chdir(target)
    print(f"project folder: {target}")
    if threads and int(threads) > 0:
        import torch

        torch.set_num_threads(int(threads))
    return target


def parse_mapping(value: str | dict | None, name: str = "overrides") -> dict:
    """A mapping parameter: a dict, or a YAML / JSON mapping string (``"{lr: 3e-4, steps: 10}"``); None -> {}."""
    if value is None or value == "":
        return {}
    if isinstance(value, dict):
        return dict(value)
    if not isinstance(value, str):
        raise InputError(f"{name}: expected a mapping or a YAML mapping string, got {value!r}")
    try:
        parsed = parse_yaml(value)        # JSON is YAML too; 1e-3 and 1e+30 read as floats
    except yaml.YAMLError as err:
        raise InputError(f"{name}: not a YAML mapping ({err}); write it like \"{{lr: 3.0e-4, steps: 10}}\"") from None
    if parsed is None:
        return {}
    if not isinstance(parsed, dict):
        raise InputError(f"{name}: expected a mapping like \"{{lr: 3.0e-4}}\", got {value!r}")
    return parsed


def stage_overrides(overrides: str | dict | None = None, **fields: Any) -> dict:
    """The ``Stage.from_yaml`` overrides of notebook 02: ``fields`` that are not None, plus the ``overrides`` mapping.

    A field given both ways is an error (it would be ambiguous which one wins).
    """
    extra = parse_mapping(overrides)
    given = {k: v for k, v in fields.items() if v is not None}
    both = sorted(set(given) & set(extra))
    if both:
        raise InputError(f"overrides: {', '.join(both)} also given as a parameter; give each field once")
    return {**given, **extra}


def log_lines(every: int = 50, printer: Callable[[str], Any] | None = None) -> Callable:
    """A Trainer ``on_step`` callback printing one plain log line every ``every`` steps (and the first and last)."""
    every = max(1, int(every))
    out = printer or (lambda line: print(line, flush=True))

    def on_step(trainer, metrics: dict) -> None:
        step, total = metrics["step"], trainer.stage.steps
        if step == 1 or step % every == 0 or step == total:
            out(f"{trainer.stage.run}/{trainer.stage.name} step {step}/{total}  loss {metrics['loss']:.4f}  "
                f"lr {metrics['lr']:.2e}  {metrics['img_per_s']:.1f} img/s")
    return on_step


def _flat(values: dict, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested mappings as (dotted key, value) rows."""
    rows = []
    for key, value in values.items():
        name = f"{prefix}{key}"
        rows.extend(_flat(value, name + ".") if isinstance(value, dict) else [(name, value)])
    return rows


def _short(value: Any, limit: int = 60) -> str:
    text = f"{value:.4g}" if isinstance(value, float) else json.dumps(value) if isinstance(value, list) else str(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def result_table_html(values: dict, max_rows: int = 24) -> str:
    """A small two-column HTML table of a record (nested keys dotted, long values cut): ``report.table_html``."""
    from .report import table_html

    rows = [{"result": key, "value": _short(value)} for key, value in _flat(values)]
    more = f"<p><i>… {len(rows) - max_rows} more</i></p>" if len(rows) > max_rows else ""
    return table_html(rows[:max_rows]) + more


def record(**values: Any) -> None:
    """Show ``values`` as a small table and keep them, as JSON, for ``read_results`` (tests, the pipeline).

    In a notebook the record is a display output with the MIME type ``RESULT_MIME`` (JupyterLab shows
    the table); outside a kernel it is one printed line after ``RESULT_PREFIX``. NaN and infinities
    (a diverged loss) are recorded as None, which JSON can carry.
    """
    clean = json.loads(json.dumps(values, default=str), parse_constant=lambda name: None)   # NaN/inf -> None
    if running_kernel() is None:
        print(RESULT_PREFIX + json.dumps(clean), flush=True)
        return
    from IPython.display import display

    display({RESULT_MIME: clean, "text/html": result_table_html(clean),
             "text/plain": ", ".join(f"{k}={_short(v, 30)}" for k, v in _flat(clean)[:8])}, raw=True)


def read_results(notebook: str | os.PathLike) -> list[dict]:
    """Every ``record(...)`` of an executed notebook, in order."""
    import nbformat

    nb = nbformat.read(str(notebook), as_version=4)
    found = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if RESULT_MIME in output.get("data", {}):
                found.append(dict(output["data"][RESULT_MIME]))
            elif output.get("output_type") == "stream" and output.get("name") == "stdout":
                for line in output.get("text", "").splitlines():
                    if line.startswith(RESULT_PREFIX):
                        found.append(json.loads(line[len(RESULT_PREFIX):]))
    return found
