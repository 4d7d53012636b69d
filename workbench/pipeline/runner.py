"""The pipeline's runner: papermill runs each planned step, ``pipeline_state.json`` marks completion, and a rerun
resumes at the first incomplete step; then ``report.html``. Also the ``workbench pipeline`` options."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..io import atomic_write_json
from ..notebook import RESULT_PREFIX, read_results
from .config import PipelineConfig, PipelineConfigError
from .plan import RERUN_KINDS, UNFINGERPRINTED, Step, plan_steps

STATE_FILE = "pipeline_state.json"
STATE_FORMAT = 1
KERNEL_LOG_LEVEL = "--IPKernelApp.log_level=CRITICAL"   # no "running over TCP" / interrupt log lines per kernel


class PipelineFailed(RuntimeError):
    """A notebook failed; ``step``, ``notebook``, ``cell_index``, ``source`` and ``error`` say where and why."""

    def __init__(self, message: str, *, step: str, notebook: Path, cell_index: int | None = None,
                 source: str | None = None, error: str | None = None):
        super().__init__(message)
        self.step, self.notebook, self.cell_index, self.source, self.error = step, notebook, cell_index, source, error


def notebook_errors(notebook: str | os.PathLike) -> list[dict]:
    """The error outputs of a notebook: ``[{"cell_index", "ename", "evalue", "source"}]`` (empty: none)."""
    import nbformat

    nb = nbformat.read(str(notebook), as_version=4)
    errors = []
    for index, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                errors.append({"cell_index": index, "ename": output.get("ename"), "evalue": output.get("evalue"),
                               "source": cell.get("source", "")})
    return errors


class PipelineState:
    """``<run>/pipeline_state.json``: one record per step (status, parameters' fingerprint, times, result)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / STATE_FILE
        self.data = {"format": STATE_FORMAT, "steps": {}}
        if self.path.is_file():
            try:
                loaded = json.loads(self.path.read_text())
                if loaded.get("format") == STATE_FORMAT:
                    self.data = loaded
            except (OSError, json.JSONDecodeError):
                pass            # a damaged marker: every step counts as incomplete and is checked again

    @property
    def steps(self) -> dict:
        return self.data["steps"]

    def update(self, key: str, **values: Any) -> None:
        self.steps.setdefault(key, {}).update(values)
        self.save()

    def save(self) -> None:
        atomic_write_json(self.path, self.data)


def step_complete(step: Step, state: PipelineState) -> tuple[bool, str]:
    """Whether a step is complete (see the module docstring), and why not."""
    entry = state.steps.get(step.key, {})
    if entry.get("status") != "complete":
        return False, f"status {entry.get('status', 'not run')}"
    if entry.get("fingerprint") != step.fingerprint:        # only RERUN_KINDS get here: they run again
        return False, "its parameters changed"
    if not step.output.is_file():
        return False, f"{step.output} is missing"
    if notebook_errors(step.output):
        return False, f"{step.output} holds an error"
    if step.kind == "prepare" and not (step.artefact / "prepared.json").is_file():
        return False, f"{step.artefact} is not a complete prepared dataset"
    if step.kind == "train":
        from ..report import final_checkpoint

        if final_checkpoint(step.artefact) is None:
            return False, f"{step.artefact} has no final checkpoint"
    return True, "complete"


def refuse_changed_steps(config: PipelineConfig, steps: list[Step], state: PipelineState) -> None:
    """A complete prepare or train step whose parameters changed would mix two recipes in one run: refused."""
    changed = [(s, state.steps[s.key]) for s in steps
               if s.kind not in RERUN_KINDS and state.steps.get(s.key, {}).get("status") == "complete"
               and state.steps[s.key].get("fingerprint") != s.fingerprint]
    if changed:
        step, entry = changed[0]
        diffs = [k for k in set(step.parameters) | set(entry.get("parameters", {}))
                 if k not in UNFINGERPRINTED and step.parameters.get(k) != entry.get("parameters", {}).get(k)]
        raise PipelineConfigError(
            f"{step.key}: already complete in {config.run_dir} with other parameters ({', '.join(sorted(diffs))}); "
            f"choose another run name (--set run=NAME) or delete {config.run_dir} to start again")


@dataclass
class PipelineResult:
    run_dir: Path
    report: Path
    ran: list[str]
    skipped: list[str]
    seconds: float


def run_pipeline(config: PipelineConfig, *, stream: bool = True, printer: Callable[[str], Any] | None = None,
                 workdir: str | os.PathLike | None = None) -> PipelineResult:
    """Run the steps (validated first), resuming after complete ones; write ``report.html``.

    ``stream`` echoes the notebooks' output (training log lines) while they run. Raises
    ``PipelineConfigError`` (bad parameter, nothing started) or ``PipelineFailed`` (a notebook failed).
    """
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    say = printer or (lambda line: print(line, flush=True))
    workdir = Path(workdir or os.getcwd()).resolve()
    steps = plan_steps(config, workdir)
    state = PipelineState(config.run_dir)
    refuse_changed_steps(config, steps, state)
    config.run_dir.mkdir(parents=True, exist_ok=True)
    (config.run_dir / "pipeline.yaml").write_text(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))

    start, ran, skipped = time.perf_counter(), [], []
    resuming = False
    total = len(steps)
    for number, step in enumerate(steps, 1):
        head = f"[{number}/{total}] {step.key}"
        done, why = step_complete(step, state) if not resuming else (False, "an earlier step ran again")
        if done:
            skipped.append(step.key)
            say(f"{head}: complete, kept from the previous run ({step.output})")
            continue
        resuming = True
        again = f" (again: {why})" if step.key in state.steps else ""
        say(f"{head}: {step.label} ...{again}")
        step.output.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        state.update(step.key, status="running", stage=step.stage, notebook=str(step.output),
                     fingerprint=step.fingerprint, parameters=step.parameters, started_at=time.time(), error=None)
        try:
            pm.execute_notebook(str(step.template), str(step.output), parameters=step.parameters,
                                kernel_name=config.kernel, progress_bar=False, log_output=False,
                                stdout_file=_Echo(sys.stdout) if stream else None,
                                stderr_file=sys.stderr if stream else None,
                                cwd=str(workdir), extra_arguments=[KERNEL_LOG_LEVEL])
        except PapermillExecutionError as err:
            raise _failed(step, state, t0, err.cell_index, err.exec_count, err.source,
                          f"{err.ename}: {err.evalue}") from err
        except Exception as err:         # the kernel died or could not start, the notebook could not be written
            raise _failed(step, state, t0, None, None, None, f"{type(err).__name__}: {err}") from err
        seconds = time.perf_counter() - t0
        results = read_results(step.output)
        state.update(step.key, status="complete", finished_at=time.time(), seconds=round(seconds, 1),
                     result=results[-1] if results else None)
        ran.append(step.key)
        say(f"{head}: done in {seconds:.1f} s{_result_note(results)} -> {step.output}")

    report = write_run_report(config, steps, state)
    elapsed = time.perf_counter() - start
    say(f"pipeline {config.run}: {len(ran)} step(s) run, {len(skipped)} kept, in {elapsed:.1f} s; report: {report}")
    return PipelineResult(config.run_dir, report, ran, skipped, elapsed)


class _Echo:
    """A notebook's stdout echoed to ours, without the ``record`` lines (they are for machines)."""

    def __init__(self, target):
        self.target, self.pending = target, ""

    def write(self, text: str) -> None:
        lines = (self.pending + text).split("\n")
        self.pending = lines.pop()
        kept = [line for line in lines if not line.startswith(RESULT_PREFIX)]
        if kept:
            self.target.write("\n".join(kept) + "\n")

    def flush(self) -> None:
        if self.pending and not self.pending.startswith(RESULT_PREFIX):
            self.target.write(self.pending)
            self.pending = ""
        self.target.flush()


def _result_note(results: list[dict]) -> str:
    last = results[-1] if results else {}
    if isinstance(last.get("final_loss"), (int, float)):
        return f" (step {last.get('step')}, final loss {last['final_loss']:.4f})"
    if "written" in last:
        return f" ({last['written']} rows)"
    return ""


def _failed(step: Step, state: PipelineState, t0: float, cell_index, exec_count, source, error: str) -> PipelineFailed:
    state.update(step.key, status="failed", finished_at=time.time(), seconds=round(time.perf_counter() - t0, 1),
                 error=error, cell_index=cell_index)
    lines = [f"pipeline stopped: {step.key} failed in notebook {step.output}"]
    try:                                 # the index in the saved notebook (papermill adds cells before it)
        saved = notebook_errors(step.output) if step.output.is_file() else []
    except Exception:                    # an unreadable partial notebook: keep papermill's index
        saved = []
    if saved:
        cell_index, source = saved[0]["cell_index"], source or saved[0]["source"]
    if cell_index is not None:
        lines.append(f"  failing cell: cell {cell_index} of {step.output.name} (In [{exec_count}]):")
        excerpt = (source or "").strip().splitlines()
        lines += [f"    | {line}" for line in excerpt[:12]] + (["    | ..."] if len(excerpt) > 12 else [])
    lines.append(f"  error: {error}")
    lines.append("  the outputs of earlier steps are kept; fix the cause and run the same command again to resume "
                 f"at {step.key}")
    return PipelineFailed("\n".join(lines), step=step.key, notebook=step.output, cell_index=cell_index,
                          source=source, error=error)


def write_run_report(config: PipelineConfig, steps: list[Step], state: PipelineState) -> Path:
    """``<run>/report.html`` from the run's stage folders, notebooks and pipeline state."""
    from ..report import write_report

    rows = [{"step": s.key, "status": state.steps.get(s.key, {}).get("status"),
             "seconds": state.steps.get(s.key, {}).get("seconds"), "notebook": str(s.output)} for s in steps]
    prepared = next((s.artefact for s in steps if s.kind == "prepare"), None)
    return write_report(config.run_dir, names=[s.stage for s in steps if s.stage],
                        notebooks=[(s.key, str(s.output)) for s in steps if s.output.is_file()], steps=rows,
                        prepared=prepared, latent_downsample=config.latent_downsample)


def add_pipeline_arguments(parser) -> None:
    """Add the ``workbench pipeline`` options to an ``argparse`` (sub)parser."""
    parser.add_argument("--config", required=True, help="a pipeline YAML, e.g. configs/demo/pipeline.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a pipeline setting; dotted keys reach into sections, e.g. prepare.limit=500, "
                             "overrides.steps=50, stage_overrides.stage2.lr=1e-4 (repeatable)")
    parser.add_argument("--quiet", action="store_true", help="only the progress lines, not the notebooks' output")
    parser.add_argument("--check", action="store_true", help="validate every parameter and exit")


def run_pipeline_cli(args) -> int:
    """Run the pipeline from parsed ``add_pipeline_arguments`` options; returns the exit status."""
    config = PipelineConfig.from_yaml(args.config, args.set)
    if args.check:
        steps = plan_steps(config)
        for step in steps:
            print(f"{step.key}: {step.label}")
        print(f"pipeline {config.run}: {len(steps)} steps, parameters valid")
        return 0
    try:
        run_pipeline(config, stream=not args.quiet)
    except PipelineFailed as err:
        print(str(err), file=sys.stderr, flush=True)
        return 1
    return 0
