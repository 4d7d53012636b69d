"""Evaluation: the cost model (FLOPs per step, GPU-hours, dollars; the paper's cost table)."""
