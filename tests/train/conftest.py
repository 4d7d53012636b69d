"""Training fixtures: one tiny prepared shapes set per session, and small fast stages on it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from workbench.train import Stage
from workbench.train import checkpoint as ckpt

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("train_worker.py")
BIN = Path(sys.executable).parent

# A 3-block, 64-wide nano (the middle block is MoE): ~0.05 s per step of 8 images at 16 px on one core.
TINY_MODEL = {"depth": 3, "width": 64, "mixer_width": 64}
BASE = dict(name="s1", run="t", resolution=16, model="nano", model_overrides=TINY_MODEL, mask_ratio=0.5,
            steps=4, global_batch=8, micro_batch=8, lr=1e-3, schedule="constant", warmup_steps=0, weight_decay=0.0,
            grad_clip=1.0, sigma_data=0.5, sample_prompts=["a red circle", "a blue square"], sample_steps=2,
            sample_cfg_scale=2.0, log_every=1, checkpoint_every=0, seed=0)


@pytest.fixture(scope="session")
def shapes_data(tmp_path_factory) -> Path:
    """64 shapes scenes prepared at 16 and 32 px (pixel codec, MiniLM captions trimmed to the longest)."""
    from workbench.data.prepare import prepare

    out = tmp_path_factory.mktemp("prepared") / "shapes"
    prepare(source="shapes", out=out, resolutions=(16, 32), limit=64, text_encoder_options={"trim_padding": True},
            progress=False)
    return out


@pytest.fixture
def make_stage(shapes_data, tmp_path, one_thread):
    """``make_stage(**changes)``: a tiny valid Stage on the session data, writing under tmp_path/runs."""
    def make(**changes) -> Stage:
        values = {**BASE, "data": str(shapes_data), "runs_dir": str(tmp_path / "runs"), **changes}
        return Stage(**values)
    return make


def stage_json(stage: Stage) -> str:
    """The stage as the JSON the worker takes."""
    return json.dumps(stage.to_dict())


def worker_command(stage: Stage, out: Path, *, sleep: float = 0.0) -> list[str]:
    """``python tests/train/train_worker.py`` training ``stage``, logging steps under ``out``."""
    return [sys.executable, str(WORKER), "--stage", stage_json(stage), "--out", str(out), "--sleep", str(sleep)]


def worker_env() -> dict:
    """The environment for worker processes: one thread, the repo importable."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT), TQDM_DISABLE="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def run_worker(cmd: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    """Run a worker to completion; fail with its output when it fails."""
    proc = subprocess.run(cmd, env=worker_env(), cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd[:3]} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return proc


def read_steps(path: Path) -> list[dict]:
    """The complete JSON lines of a worker's rank file."""
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:      # a line being written right now
            break
    return out


def final_weights(stage: Stage, ema: bool = False) -> dict[str, torch.Tensor]:
    """The model (or EMA) tensors of the stage's newest checkpoint."""
    path = ckpt.latest_valid_checkpoint(stage.checkpoint_dir)
    assert path is not None, f"no valid checkpoint in {stage.checkpoint_dir}"
    return load_file(str(path / (ckpt.EMA_FILE if ema else ckpt.MODEL_FILE)))


def losses(stage: Stage) -> dict[int, float]:
    """step -> loss from the stage's metrics.jsonl."""
    return {r["step"]: r["loss"] for r in map(json.loads, (stage.stage_dir / "metrics.jsonl").read_text().splitlines())}
