"""The package's layers point one way (docs/architecture.md), and no module grows past its stated size.

    leaf (config, io, images, devices, kernel, errors) -> data -> model -> diffusion -> train -> eval
      -> widgets / report -> notebook / pipeline -> cli / tour / bench / interop

Every import in ``workbench/``, including the ones inside functions, must point down (or sideways
within its own layer). A lower layer reaching up makes the package a web instead of a stack.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "workbench"
MAX_LINES = 500
LONG_MODULES_STATED = ()     # modules over MAX_LINES with a reason in docs/architecture.md
LAYERS = {
    "config": 0, "io": 0, "images": 0, "devices": 0, "kernel": 0, "errors": 0,
    "data": 1, "model": 2, "diffusion": 3, "train": 4, "eval": 5,
    "widgets": 6, "report": 6, "notebook": 7, "pipeline": 7, "ablate": 7,
    "cli": 8, "tour": 8, "bench": 8, "interop": 8, "__main__": 8, "cost_report": 8,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "workbench" and len(parts) > 1 else None


def imports(path: Path):
    """``(line, imported module)`` for every import in a file, relative ones resolved."""
    own = module_name(path)
    package = own if path.name == "__init__.py" else own.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if node.module:
                yield node.lineno, target
            else:                                     # from . import x, y
                for alias in node.names:
                    yield node.lineno, f"{target}.{alias.name}"


def package_files():
    return [p for p in sorted(PACKAGE.rglob("*.py")) if p != PACKAGE / "__init__.py"]


def test_every_module_belongs_to_a_layer():
    unknown = sorted({layer_of(module_name(p)) for p in package_files()} - set(LAYERS))
    assert not unknown, f"add these to LAYERS (and docs/architecture.md): {unknown}"


@pytest.mark.parametrize("path", package_files(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down_the_layers(path):
    own = layer_of(module_name(path))
    upward = [f"line {line}: {target} (layer {LAYERS[layer_of(target)]} > {LAYERS[own]})"
              for line, target in imports(path)
              if layer_of(target) in LAYERS and LAYERS[layer_of(target)] > LAYERS[own]]
    assert not upward, f"{path.relative_to(PACKAGE)} (layer {own}) imports upward: {upward}"


def test_the_layer_check_catches_an_upward_import_inside_a_function(tmp_path, monkeypatch):
    probe = tmp_path / "workbench" / "data" / "probe.py"
    probe.parent.mkdir(parents=True)
    probe.write_text("import os\n\ndef f():\n    from ..widgets import SamplerPanel\n    from . import codecs\n")
    monkeypatch.setattr(f"{__name__}.PACKAGE", tmp_path / "workbench")
    assert [t for _, t in imports(probe)] == ["os", "workbench.widgets", "workbench.data.codecs"]
    with pytest.raises(AssertionError, match="imports upward"):
        test_imports_point_down_the_layers(probe)
def test_no_module_is_longer_than_the_limit_without_a_stated_reason():
    long = {str(p.relative_to(PACKAGE)): n for p in package_files()
            if (n := len(p.read_text().splitlines())) > MAX_LINES and str(p.relative_to(PACKAGE)) not in
            LONG_MODULES_STATED}
    assert not long, f"modules over {MAX_LINES} lines (split them, or state why in docs/architecture.md): {long}"


MAX_FUNCTION_LINES = 65       # "about 60": a function this long, docstring included, still reads at a glance


def test_no_function_is_longer_than_about_60_lines():
    long = [f"{p.relative_to(PACKAGE)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for p in package_files() for node in ast.walk(ast.parse(p.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines (split them): {long}"
