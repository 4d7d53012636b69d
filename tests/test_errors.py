"""The package raises its own error types for user errors, so the CLI can tell them from bugs (cli.one_line)."""

import ast
from pathlib import Path

import workbench

PACKAGE = Path(workbench.__file__).parent
BUILTINS_FOR_USER_ERRORS = {"ValueError": "InputError", "FileNotFoundError": "MissingFileError"}


def test_no_module_raises_a_bare_value_or_file_not_found_error():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and isinstance(node.exc.func, ast.Name):
                name = node.exc.func.id
                if name in BUILTINS_FOR_USER_ERRORS:
                    found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} raises {name}: "
                                 f"use workbench.errors.{BUILTINS_FOR_USER_ERRORS[name]}")
    assert not found, "\n".join(found)
