"""Evaluation: what a model draws, as numbers, and what training costs.

- ``detector``: finds the objects (shape, colour, centre, size) in a shapes image;
- ``compositional``: the compositional score on the fixed shapes prompts (a GenEval for our data);
- ``fid``: the FID-proxy on shapes features, and Inception FID from local weights;
- ``stage_eval``: a stage folder's scores, cached in ``<stage>/eval/scores.json``;
- ``cost``: FLOPs per step, GPU-hours and dollars (the paper's cost table).

See ``docs/evaluation.md``.
"""
