"""FSDP2 (``Stage.fsdp``) with 2 gloo processes on the CPU: the same losses and weights as one process, a
checkpoint written from the shards that resumes on 2 ranks and samples on one process.

The code path is the GPU one (train/sharding.py shards with ``fully_shard``; accelerate only launches).
"""

from __future__ import annotations

import pytest
import torch

from tests.train.conftest import BIN, ROOT, WORKER, final_weights, losses, read_steps, stage_json
from tests.train.test_distributed import finish, free_port, start
from workbench.train import Trainer
from workbench.train import checkpoint as ckpt
from workbench.train.inference import load_for_sampling

pytestmark = pytest.mark.slow

# the reduce-scatter sums the ranks' gradients in another order than one process does
LOSS_RTOL, WEIGHT_ATOL = 1e-5, 1e-5      # measured: 1e-7 and 3e-7


def launch(stage, out, resume: str = "auto") -> list[str]:
    return [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
            "--num_cpu_threads_per_process", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(free_port()), str(WORKER), "--stage", stage_json(stage), "--out", str(out),
            "--resume", resume]


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_two_sharded_processes_match_one_and_their_checkpoint_resumes_and_samples(make_stage, tmp_path):
    kwargs = dict(steps=4, global_batch=8, ema_decay=0.9, mask_ratio=0.5, lr=2e-3, checkpoint_every=2, log_every=1)
    sharded = make_stage(runs_dir=str(tmp_path / "fsdp"), micro_batch=2, fsdp=True, **kwargs)  # 2 ranks x 2 x 2
    single = make_stage(runs_dir=str(tmp_path / "single"), micro_batch=8, **{**kwargs, "steps": 6})
    proc = start(launch(sharded, tmp_path / "out"))
    Trainer(single, progress=False).run()                   # meanwhile, 6 steps in one process here
    finish(proc, timeout=300)

    ranks = [read_steps(tmp_path / "out" / f"rank{r}.jsonl") for r in (0, 1)]
    assert [[r["step"] for r in rank] for rank in ranks] == [[1, 2, 3, 4]] * 2
    assert ranks[0][0]["hash"] != ranks[1][0]["hash"]       # each rank holds another shard
    one = losses(single)
    assert [losses(sharded)[s] for s in (1, 2, 3, 4)] == pytest.approx([one[s] for s in (1, 2, 3, 4)], rel=LOSS_RTOL)
    assert [p.name for p in ckpt.list_checkpoints(sharded.checkpoint_dir)] == ["step_0000002", "step_0000004"]

    # the checkpoint holds the full weights: one process loads it for sampling, as any other
    weights, ema = final_weights(sharded), final_weights(sharded, ema=True)
    assert max_difference(weights, {k: v for k, v in final_weights(single).items()}) > 0   # 6 steps vs 4
    bundle = load_for_sampling(str(sharded.stage_dir))
    assert all(torch.equal(bundle.model.state_dict()[k], ema[k]) for k in ema)

    longer = sharded.replace(steps=6)                       # resumed on 2 ranks from step 4
    finish(start(launch(longer, tmp_path / "out2")), timeout=300)
    assert [r["step"] for r in read_steps(tmp_path / "out2" / "rank0.jsonl")] == [5, 6]
    assert [losses(longer)[s] for s in (5, 6)] == pytest.approx([one[5], one[6]], rel=LOSS_RTOL)
    for use_ema in (False, True):
        diff = max_difference(final_weights(longer, use_ema), final_weights(single, use_ema))
        assert diff < WEIGHT_ATOL, f"{'EMA' if use_ema else 'model'} differs from one process by {diff}"


def test_a_sharded_stage_carries_a_one_process_stages_optimiser(make_stage, tmp_path):
    """init_mode: full (the paper's stage 2) from a one-process checkpoint, whose optimiser state is keyed by
    parameter index: the sharded stage maps it to names and trains as the one-process stage 2 does."""
    first = make_stage(name="stage1", runs_dir=str(tmp_path / "runs"), steps=2, lr=2e-3)
    Trainer(first, progress=False).run()
    second = dict(name="stage2", steps=2, global_batch=8, init_from=str(first.stage_dir), init_mode="full", lr=1e-3)
    sharded = make_stage(runs_dir=str(tmp_path / "fsdp"), micro_batch=4, fsdp=True, **second)
    single = make_stage(runs_dir=str(tmp_path / "single"), micro_batch=8, **second)
    proc = start(launch(sharded, tmp_path / "out"))
    Trainer(single, progress=False).run()
    finish(proc, timeout=300)
    assert [losses(sharded)[s] for s in (1, 2)] == pytest.approx([losses(single)[s] for s in (1, 2)], rel=LOSS_RTOL)
    assert max_difference(final_weights(sharded), final_weights(single)) < WEIGHT_ATOL


def test_fsdp_in_one_process_says_how_to_launch_it(make_stage):
    with pytest.raises(ValueError, match=r"accelerate launch --multi_gpu --num_processes N"):
        Trainer(make_stage(fsdp=True), progress=False)


def test_the_shipped_accelerate_config_launches_a_sharded_stage(make_stage, tmp_path):
    stage = make_stage(fsdp=True, micro_batch=4, steps=2)    # global 8 = 2 ranks x 4
    config = tmp_path / "stage.yaml"
    stage.to_yaml(config)
    shipped = ROOT / "configs" / "accelerate" / "fsdp2.yaml"
    out = finish(start([str(BIN / "accelerate"), "launch", "--config_file", str(shipped), "--num_processes", "2",
                        "--mixed_precision", "no", "--num_cpu_threads_per_process", "1", "--main_process_port",
                        str(free_port()), "-m", "workbench", "train", "--config", str(config)]), timeout=300)
    assert "step 2/2" in out and "(2 process(es))" in out
    assert sorted(losses(stage)) == [1, 2] and ckpt.resolve_checkpoint(stage.stage_dir).name == "step_0000002"
