"""The contention benchmark: every cell of threads × wait policy × competitor runs in its own process with its
own settings, and the robust setting is chosen by the documented rule."""

from __future__ import annotations

import pytest

from workbench.bench.contention import bench_contention


@pytest.mark.slow
def test_every_cell_runs_with_its_own_threads_and_the_rule_picks_a_setting():
    report = bench_contention(batch=2, seconds=0.3, threads=(1, 2), policies=("default",))
    cells = report["cells"]
    assert [(c["threads"], c["competitor"]) for c in cells] == [(1, False), (1, True), (2, False), (2, True)]
    assert all(c["steps"] >= 1 and c["img_per_s"] > 0 for c in cells)
    assert [c["threads"] for c in cells] == [1, 1, 2, 2]          # the worker saw the thread count it was given
    best_idle = max(s["idle_img_per_s"] for s in report["settings"])
    robust = report["robust"]
    assert robust["idle_img_per_s"] >= 0.9 * best_idle
    assert all(s["busy_img_per_s"] <= robust["busy_img_per_s"] for s in report["settings"]
               if s["idle_img_per_s"] >= 0.9 * best_idle)
    assert all(s["slowdown"] == pytest.approx(s["idle_img_per_s"] / s["busy_img_per_s"]) for s in report["settings"])
