"""The `workbench` command: info, prepare -> train -> sample end to end, and clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from workbench.cli import main
from workbench.data.shapes.prompts import eval_prompts

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
XL_2_PARAMS = 1_165_442_320                      # the paper's MicroDiT_XL_2 on SDXL latents
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the installed ``workbench`` console script (one thread, no progress bars)."""
    return subprocess.run([str(BIN / "workbench"), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=ENV)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"{proc.args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return proc


# --------------------------------------------------------------------------- in process (fast)

def test_info_json_gives_the_xl_2_parameter_count(capsys):
    assert main(["info", "--preset", "xl_2", "--json"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    report = json.loads(last)
    assert report["preset"] == "xl_2" and report["params"] == XL_2_PARAMS


def test_info_with_an_unknown_preset_lists_the_presets(capsys):
    assert main(["info", "--preset", "bogus"]) != 0
    err = capsys.readouterr().err
    assert "unknown MicroDiT preset 'bogus'" in err
    assert all(name in err for name in ("micro", "nano", "tiny_2", "xl_2"))


@pytest.mark.parametrize("args, message", [
    (["--set", "mask_ratio=1.0"], "Stage.mask_ratio: expected a value in [0, 1)"),
    (["--set", "lr=-1"], "Stage.lr: expected a positive number"),
    (["--set", "stpes=5"], "did you mean 'steps'"),
])
def test_train_rejects_a_bad_config_before_training(tmp_path, capsys, args, message):
    code = main(["train", "--config", str(ROOT / "configs/paper/stage1.yaml"), "--set", f"runs_dir={tmp_path}", *args])
    assert code == 2 and message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_train_with_a_missing_config_file_says_so(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "Stage config file not found" in capsys.readouterr().err


def sample_subparser():
    """The ``workbench sample`` argparse parser."""
    from workbench.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    return sub.choices["sample"]


def test_every_sample_option_has_a_help_text_and_its_default():
    for action in sample_subparser()._actions:
        if action.dest in ("help", "debug"):
            continue
        assert action.help, action.dest
        if not action.required and action.const is None and action.default is not None:
            assert "default" in action.help, action.dest       # e.g. "--steps ... (default 30)"


def test_sample_help_lists_the_registered_samplers_and_their_options(capsys):
    from workbench.diffusion import SAMPLERS

    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    out = capsys.readouterr().out
    assert all(name in out and entry.description[:30] in out for name, entry in SAMPLERS.items())
    assert "--s-churn" in out and "edm-stochastic only; default 40" in out


def test_sample_passes_the_sampler_and_its_options(monkeypatch, tmp_path, capsys):
    from workbench.train import inference

    seen = {}
    monkeypatch.setattr(inference, "sample_checkpoint", lambda spec, prompts, **kw: seen.update(kw) or tmp_path)
    assert main(["sample", "--checkpoint", "x", "--prompt", "a", "--sampler", "edm-stochastic", "--s-churn", "5"]) == 0
    assert seen["sampler"] == "edm-stochastic" and seen["sampler_options"] == {"s_churn": 5.0}
    assert main(["sample", "--checkpoint", "x", "--prompt", "a"]) == 0
    assert seen["sampler"] == "heun" and seen["sampler_options"] == {}


def test_sample_with_an_unknown_sampler_lists_the_known_ones(capsys):
    with pytest.raises(SystemExit):
        main(["sample", "--checkpoint", "x", "--prompt", "a", "--sampler", "ddim"])
    err = capsys.readouterr().err
    assert "invalid choice: 'ddim'" in err and "'edm-stochastic'" in err and "'diffusers-dpmpp'" in err


def test_sample_with_an_option_its_sampler_does_not_take_is_one_line(capsys):
    assert main(["sample", "--checkpoint", "nowhere", "--prompt", "a", "--s-churn", "5"]) == 2
    assert "sampler 'heun' has no option 's_churn'" in capsys.readouterr().err


# --------------------------------------------------------------------------- console script (slow)

@pytest.mark.slow
def test_prepare_train_resume_and_sample_from_the_command_line(tmp_path, capsys):
    """The first training runs as the console script; prepare, the resumed training and sample run
    in process through the same ``main`` (a subprocess costs ~5-15 s of imports on 2 busy cores)."""
    data = tmp_path / "data"
    assert main(["prepare", "--source", "shapes", "--out", str(data), "--resolutions", "16", "--limit", "16",
                 "--trim-padding", "--no-progress"]) == 0
    assert (data / "prepared.json").is_file()

    config = tmp_path / "stage.yaml"
    config.write_text(yaml.safe_dump({
        "name": "stage1", "run": "cli", "runs_dir": str(tmp_path / "runs"), "data": str(data), "resolution": 16,
        "model": "nano", "model_overrides": {"depth": 2, "width": 64, "mixer_width": 64}, "steps": 50,
        "global_batch": 8, "micro_batch": 8, "lr": 1e-3, "sample_steps": 2, "sample_prompts": ["a red circle"],
        "log_every": 1, "ema_decay": 0.9}))
    stage_dir = tmp_path / "runs" / "cli" / "stage1"
    train = ok(cli("train", "--config", str(config), "--set", "steps=2"))
    assert "step 2/2" in train.stdout
    assert (stage_dir / "checkpoints" / "step_0000002" / "manifest.json").is_file()
    assert (stage_dir / "samples" / "step_0000002.png").is_file()

    # the same stage, one step longer: resumes from step 2 (in process; accelerate launch is in tests/train)
    capsys.readouterr()
    assert main(["train", "--config", str(config), "--set", "steps=3"]) == 0
    printed = capsys.readouterr().out
    assert "cli/stage1: resuming at step 2 of 3 from" in printed and "step 3/3" in printed
    records = [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]

    out = tmp_path / "x.png"
    capsys.readouterr()
    assert main(["sample", "--checkpoint", str(stage_dir), "--prompt", "a red circle", "--prompt", "a blue square",
                 "--steps", "2", "--n", "2", "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    image = np.asarray(Image.open(out))
    assert image.ndim == 3 and image.shape[2] == 3 and image.shape[0] > 16 and image.std() > 0

    # the compositional score and the FID-proxy of the same stage, with their protocol
    scores = tmp_path / "scores.json"
    assert main(["eval", "compositional", "--checkpoint", str(stage_dir), "--samples-per-prompt", "1", "--steps", "2",
                 "--cfg-scale", "2", "--seed", "3", "--json", str(scores), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "overall (mean of categories)" in printed and "single-object shape accuracy" in printed
    report = json.loads(scores.read_text())
    protocol = report["protocol"]
    assert protocol["samples_per_prompt"] == 1 and protocol["steps"] == 2 and protocol["cfg_scale"] == 2.0
    assert protocol["seed"] == 3 and protocol["sampler"] == "heun" and len(protocol["weights_sha256"]) == 16
    assert report["scores"]["samples"] == 55 and len(report["results"]) == 55
    assert 0.0 <= report["scores"]["overall"] <= 1.0
    assert main(["eval", "compositional", str(stage_dir), "--categories", "single_object", "colours",
                 "--samples-per-prompt", "1", "--steps", "2", "--json", str(scores), "--no-progress"]) == 0
    single = json.loads(scores.read_text())                          # the single-object score of docs/demo.md
    expected = sum(p.category in ("single_object", "colours") for p in eval_prompts())
    assert single["protocol"]["categories"] == ["single_object", "colours"] and len(single["results"]) == expected
    assert {r["category"] for r in single["results"]} == {"single_object", "colours"}
    capsys.readouterr()
    assert main(["eval", "compositional", str(stage_dir), "--categories", "singles"]) == 2
    assert "unknown categories singles; the categories are single_object, two_objects" in capsys.readouterr().err

    fid = tmp_path / "fid.json"
    assert main(["eval", "fid", "--checkpoint", str(stage_dir), "--samples", "8", "--steps", "2", "--json", str(fid),
                 "--no-progress"]) == 0
    fid_report = json.loads(fid.read_text())
    assert "not comparable with published FID" in fid_report["metric"] and fid_report["value"] > 0


def test_eval_without_a_checkpoint_says_which_flag_is_missing(capsys):
    assert main(["eval", "compositional"]) == 2
    assert "--checkpoint" in capsys.readouterr().err


def test_actionable_errors_are_one_line_and_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    missing = tmp_path / "nope.yaml"
    assert main(["train", "--config", str(missing)]) == 2
    assert capsys.readouterr().err == f"error: Stage config file not found: {missing}\n"

    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [1, 2\n")
    assert main(["train", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad} is not valid YAML (") and err.count("\n") == 1

    with pytest.raises(FileNotFoundError):                       # --debug: the traceback, for a bug report
        main(["--debug", "train", "--config", str(missing)])
    with pytest.raises(FileNotFoundError):
        main(["train", "--config", str(missing), "--debug"])
    monkeypatch.setenv("WORKBENCH_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        main(["train", "--config", str(missing)])


def test_an_os_error_is_one_line(tmp_path, capsys, monkeypatch):
    import errno

    from workbench import cli

    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out.png"))
    monkeypatch.setattr(cli, "cmd_sample", full)
    assert main(["sample", "--checkpoint", "x", "--prompt", "a red circle"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: [Errno 28] No space left on device: '{tmp_path / 'out.png'}'")
    assert err.count("\n") == 1


@pytest.mark.parametrize("bug", [ValueError("too many values to unpack"), TypeError("unsupported operand"),
                                 KeyError("step"), OSError("a bare OSError names no file")])
def test_a_bug_keeps_its_traceback(bug, monkeypatch):
    from workbench import cli

    def broken(args):
        raise bug
    monkeypatch.setattr(cli, "cmd_sample", broken)
    with pytest.raises(type(bug)):
        main(["sample", "--checkpoint", "x", "--prompt", "a red circle"])


def test_the_project_s_errors_are_one_line_and_stay_value_and_file_errors(capsys, monkeypatch):
    from workbench import cli
    from workbench.errors import InputError, MissingFileError, WorkbenchError

    assert issubclass(InputError, (WorkbenchError, ValueError)) and issubclass(MissingFileError, FileNotFoundError)
    for error in (InputError("Stage.steps: expected a positive integer, got 0"),
                  MissingFileError("no checkpoint at runs/x: the path does not exist")):
        def failing(args, error=error):
            raise error
        monkeypatch.setattr(cli, "cmd_sample", failing)
        assert main(["sample", "--checkpoint", "x", "--prompt", "a red circle"]) == 2
        assert capsys.readouterr().err == f"error: {error}\n"
