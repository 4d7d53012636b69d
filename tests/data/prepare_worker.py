"""One ``prepare`` call, run as a subprocess by the kill-and-resume test.

    python tests/data/prepare_worker.py OUT VAE_DIR CLIP_DIR [SECONDS_PER_SHARD]

``SECONDS_PER_SHARD`` slows each shard down so the test can SIGKILL the process mid-run. The test
calls ``run`` in-process with the same arguments for the resumed and the uninterrupted runs.
"""

from __future__ import annotations

import sys
import time

KWARGS = dict(resolutions=(8, 16), limit=40, n=40, shard_size=8, batch_size=4, seed=3, progress=False)


def run(out, vae_dir, clip_dir, seconds_per_shard: float = 0.0):
    """``prepare`` shapes with the tiny VAE (posterior samples) and tiny CLIP into ``out``."""
    from workbench.data.prepare import _Preparer, prepare

    if seconds_per_shard:
        original = _Preparer.write_shard

        def slow_write_shard(self, *args, **kwargs):
            time.sleep(seconds_per_shard)
            return original(self, *args, **kwargs)

        _Preparer.write_shard = slow_write_shard
    return prepare("shapes", out, codec=f"vae:{vae_dir}", text_encoder=str(clip_dir), **KWARGS)


if __name__ == "__main__":
    out, vae, clip = sys.argv[1:4]
    run(out, vae, clip, float(sys.argv[4]) if len(sys.argv) > 4 else 0.0)
