"""Experiments at equal training compute: ``workbench ablate`` (suites, runs, held-out loss, figures).

    from workbench.ablate import Suite, run_suite
    results = run_suite(Suite.load("masking"), budget=20e12, seeds=2, out="runs/ablate/masking")
"""

__all__ = ["Suite", "run_suite"]


def __getattr__(name: str):
    """``Suite`` and ``run_suite`` are imported on first use, so the CLI's parser stays light."""
    if name == "Suite":
        from .suite import Suite
        return Suite
    if name == "run_suite":
        from .runner import run_suite
        return run_suite
    raise AttributeError(name)
