"""The peer benchmark's harness: the official DiT arguments it builds, and its errors without the official code.

The official implementation is never part of this repository, so the side-by-side run itself is measured by
hand (docs/benchmarks.md, "Ahead of the official implementation"); these tests check what can fail without it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from workbench.bench.peer import count_ops, import_official, official_kwargs
from workbench.cli import main
from workbench.config import MicroDiTConfig
from workbench.errors import InputError

FIXTURE = Path(__file__).parents[1] / "fixtures" / "official_dit"


def test_the_official_arguments_of_a_config_are_those_the_official_fixture_was_built_with():
    cfg = MicroDiTConfig(**yaml.safe_load((FIXTURE / "microdit.yaml").read_text()))
    expected = json.loads((FIXTURE / "official_kwargs.json").read_text())
    got = official_kwargs(cfg)
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert got[key] == (pytest.approx(value) if isinstance(value, (float, list)) else value), key


def test_a_folder_without_the_official_code_is_named(tmp_path):
    with pytest.raises(InputError, match="no micro_diffusion/models/dit.py"):
        import_official(tmp_path)
    (tmp_path / "micro_diffusion" / "models").mkdir(parents=True)
    (tmp_path / "micro_diffusion" / "models" / "dit.py").write_text("import a_module_that_is_not_installed\n")
    with pytest.raises(InputError, match="does not import .*install its requirements"):
        import_official(tmp_path)


def test_the_cli_asks_for_the_checkout(capsys):
    assert main(["bench", "peer"]) != 0
    assert "--official PATH" in capsys.readouterr().err


def test_ops_are_counted_at_the_top_level_only():
    import torch

    x = torch.randn(8, 8)
    assert count_ops(lambda: (x @ x).relu(), calls=3) == 2            # mm and relu; nothing below them counted
