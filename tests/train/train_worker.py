"""A training process for the subprocess tests (exact resume, 2-process gloo): ``Trainer(stage).run()``.

    python tests/train/train_worker.py --stage '{"data": ..., "runs_dir": ...}' --out DIR [--sleep 0.05]
    accelerate launch --multi_gpu --num_processes 2 tests/train/train_worker.py --stage ... --out DIR

Every rank appends one JSON line per optimiser step to ``DIR/rank<r>.jsonl``:
``{"step", "loss", "hash", "world"}`` where ``hash`` is the sha256 of all of that rank's model
parameters after the step (equal hashes = identical replicas; under FSDP, of its shards). The line is flushed before the
step's checkpoint is written, so a test that polls the file knows which steps have run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))   # the repo root, for `workbench`


def param_hash(model: torch.nn.Module) -> str:
    """sha256 over every parameter's bytes, in registration order."""
    digest = hashlib.sha256()
    for name, p in model.named_parameters():
        digest.update(name.encode())
        local = p.to_local() if hasattr(p, "to_local") else p                 # FSDP: this rank's shard
        digest.update(local.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stage", required=True, help="Stage fields as JSON")
    parser.add_argument("--out", required=True, help="folder for rank<r>.jsonl")
    parser.add_argument("--sleep", type=float, default=0.0, help="seconds to pause after each step")
    parser.add_argument("--resume", default="auto")
    args = parser.parse_args()

    torch.set_num_threads(1)                       # bit-exact CPU results need a fixed reduction order
    from workbench.train import Stage, Trainer

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stage = Stage(**json.loads(args.stage))
    log = None

    def on_step(trainer, metrics):
        line = {"step": metrics["step"], "loss": metrics["loss"], "world": trainer.accelerator.num_processes,
                "hash": param_hash(trainer.accelerator.unwrap_model(trainer.model)), "pid": os.getpid()}
        log.write(json.dumps(line) + "\n")
        log.flush()
        if args.sleep:
            time.sleep(args.sleep)

    trainer = Trainer(stage, resume=args.resume, progress=False, on_step=on_step)
    rank = trainer.accelerator.process_index
    log = (out / f"rank{rank}.jsonl").open("a")
    print(json.dumps({"rank": rank, "world": trainer.accelerator.num_processes, "resumed_from": trainer.resumed_from,
                      "start_step": trainer.step_count}), flush=True)
    trainer.run()
    log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
