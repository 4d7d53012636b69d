"""The headless pipeline: the stage notebooks run by papermill, one executed notebook per step.

    workbench pipeline --config configs/demo/pipeline.yaml [--set prepare.limit=500] [--set overrides.steps=50]

Steps, in order (templates in ``notebooks/``, kernel ``workbench``):

    01_prepare      01_prepare_data.ipynb          once: the prepared dataset every stage trains on
    02_<stage>      02_train_stage.ipynb           once per stage YAML; stage N+1 starts from stage N
    03_evaluate     03_sample_and_evaluate.ipynb   sample grids, metrics, comparison across stages

then ``report.html``. Everything lands in ``<runs_dir>/<run>/``::

    notebooks/01_prepare.ipynb, 02_stage1.ipynb, ..., 03_evaluate.ipynb    executed notebooks
    stage1/ ... stage4/        the Trainer's stage folders (checkpoints/, samples/, metrics.jsonl, stage.yaml)
    pipeline.yaml              the resolved pipeline config of the latest run
    pipeline_state.json        the completion marker (written atomically after every step)
    report.html                self-contained: loss curves, sample grids, metrics, cost, notebook links

**Validation first.** Every parameter is checked before any kernel starts: the pipeline config's
keys, each notebook's parameter names (against the notebook's ``parameters`` cell, via
``papermill.inspect_notebook``), their types and ranges, paths that must exist, every stage as a
``Stage`` built from its YAML plus overrides (``ValueError`` naming the field), that the stages'
resolutions were prepared and that chained stages share an architecture. The error names the
parameter (``prepare.limit``, ``stage_overrides.stage2.lr``, ...).

**Completion and resume.** A step is complete when ``pipeline_state.json`` records it as
complete with the same parameters, its executed notebook exists and holds no error output, and
its artefact exists: ``prepared.json`` of the prepared dataset (01), the stage's final checkpoint
(02), the executed notebook itself (03). A rerun of the same command skips complete steps and
resumes at the first incomplete one; the Trainer itself resumes from that stage's newest
checkpoint. A complete prepare or training step whose parameters changed is refused (choose another
run name); the evaluate step simply runs again.

**Failure.** The first failing notebook stops the pipeline: the message names the notebook, the
cell (its index, execution count and source) and the error; earlier outputs are kept.
"""

from .config import KERNEL_NAME, PipelineConfig, PipelineConfigError, apply_set
from .plan import Step, plan_steps
from .runner import (KERNEL_LOG_LEVEL, PipelineFailed, PipelineResult, PipelineState, add_pipeline_arguments,
                     notebook_errors, run_pipeline, run_pipeline_cli, step_complete)

__all__ = ["KERNEL_LOG_LEVEL", "KERNEL_NAME", "PipelineConfig", "PipelineConfigError", "PipelineFailed",
           "PipelineResult", "PipelineState", "Step", "add_pipeline_arguments", "apply_set", "notebook_errors",
           "plan_steps", "run_pipeline", "run_pipeline_cli", "step_complete"]
