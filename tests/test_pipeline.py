"""`workbench pipeline`: parameters validated before any kernel starts, stop at the first failing cell, resume.

The bad-parameter tests are fast: validation imports the package but never starts a kernel (papermill's
``execute_notebook`` is replaced by a function that fails the test if called). The end-to-end test runs a
3-stage tiny pipeline through the real CLI twice: first with a fault injected into stage 2 (a learning
rate that makes training diverge, which only training can find out), then without it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from workbench.cli import main
from workbench.notebook import parse_mapping, read_results
from workbench.pipeline import KERNEL_NAME, PipelineConfig, PipelineConfigError, apply_set, plan_steps, run_pipeline

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo" / "pipeline.yaml"
TINY_MODEL = {"depth": 2, "width": 64, "mixer_width": 64}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}


@pytest.fixture(scope="module", autouse=True)
def kernel_installed():
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    from workbench.kernel import install_kernel

    try:
        KernelSpecManager().get_kernel_spec(KERNEL_NAME)
    except NoSuchKernel:
        install_kernel()


@pytest.fixture
def no_kernel(monkeypatch):
    """Fail the test if anything tries to execute a notebook."""
    import papermill

    def refuse(*args, **kwargs):
        raise AssertionError("a notebook was executed although the parameters are invalid")

    monkeypatch.setattr(papermill, "execute_notebook", refuse)


# ---------------------------------------------------------------------------------------------
#  Parsing
# ---------------------------------------------------------------------------------------------

def test_set_reaches_into_sections_and_reads_numbers_like_a_user_means_them():
    values = {"prepare": {"limit": 10}}
    apply_set(values, "prepare.limit=500")
    apply_set(values, "stage_overrides.stage2.lr=1e-4")
    apply_set(values, "overrides={mixed_precision: bf16}")
    assert values == {"prepare": {"limit": 500}, "stage_overrides": {"stage2": {"lr": 1e-4}},
                      "overrides": {"mixed_precision": "bf16"}}
    with pytest.raises(PipelineConfigError, match="key=value"):
        apply_set(values, "prepare.limit")


def test_mapping_parameters_accept_json_and_yaml():
    assert parse_mapping('{"lr": 1e+30}') == {"lr": 1e30}          # JSON first: YAML 1.1 reads 1e+30 as text
    assert parse_mapping("{lr: 3.0e-4, steps: 10}") == {"lr": 3e-4, "steps": 10}
    assert parse_mapping("") == {} and parse_mapping(None) == {}
    with pytest.raises(ValueError, match="overrides"):
        parse_mapping("[1, 2]")


def test_the_demo_pipeline_plans_prepare_four_chained_stages_and_evaluate(tmp_path):
    config = PipelineConfig.from_yaml(DEMO, [f"runs_dir={tmp_path}"])
    steps = plan_steps(config, ROOT)
    assert [s.key for s in steps] == ["01_prepare", "02_stage1", "02_stage2", "02_stage3", "02_stage4", "03_evaluate"]
    assert [s.output.name for s in steps] == ["01_prepare.ipynb", "02_stage1.ipynb", "02_stage2.ipynb",
                                              "02_stage3.ipynb", "02_stage4.ipynb", "03_evaluate.ipynb"]
    assert all(s.output.parent == tmp_path / "demo" / "notebooks" for s in steps)
    assert "init_from" not in steps[1].parameters
    for previous, step in zip(steps[1:4], steps[2:5]):             # stage N+1 starts from stage N of this run
        assert step.parameters["init_from"] == str(tmp_path / "demo" / previous.stage)
        assert step.parameters["run"] == "demo" and step.parameters["data"] == "data/prepared/shapes"
    assert not (tmp_path / "demo").exists()                         # planning writes nothing


def test_an_ablate_section_adds_the_ablation_step_after_evaluate(tmp_path, no_kernel, monkeypatch):
    monkeypatch.chdir(ROOT)
    plain = plan_steps(PipelineConfig.from_yaml(DEMO, [f"runs_dir={tmp_path}"]))
    assert "ablate" not in [s.kind for s in plain]                 # no section: no step
    steps = plan_steps(PipelineConfig.from_yaml(DEMO, [f"runs_dir={tmp_path}", "ablate.suite=moe",
                                                       "ablate.budget=5e12"]))
    ablate = steps[-1]
    assert (ablate.key, ablate.kind, ablate.template.name) == ("06_ablate", "ablate", "06_ablations.ipynb")
    assert ablate.parameters["run"] is True and ablate.parameters["suite"] == "moe"
    assert ablate.parameters["out"] == str(tmp_path / "demo" / "ablate")   # inside the run unless ablate.out
    assert "ablation suite moe at 5e+12 FLOPs" in ablate.label


# ---------------------------------------------------------------------------------------------
#  Bad parameters: a clear message naming the parameter, before any kernel starts
# ---------------------------------------------------------------------------------------------

BAD = [
    (["prepare.limit=-5"], "prepare.limit: expected a positive integer"),
    (["prepare.limt=5"], "prepare.limt: unknown parameter of 01_prepare_data.ipynb (did you mean 'limit'?)"),
    (["prepare.trim_padding=maybe"], "prepare.trim_padding: expected a bool"),
    (["prepare.source=/no/such/folder"], "prepare.source: source path '/no/such/folder' does not exist"),
    (["prepare.resolutions=48"], "prepare.resolutions: stage stage1 trains at 16 px"),
    (["stage_overrides.stage2.lr=-1"], "stage_overrides.stage2.lr (stage stage2"),
    (["overrides.mask_ratio=1.5"], "overrides.mask_ratio (stage stage1"),
    (["overrides.stepz=3"], "Stage has no field 'stepz' (did you mean 'steps'?)"),
    (["stage_overrides.stage3.model_overrides={depth: 2}"], "stage_overrides.stage3.model_overrides: stage stage3 "
                                                             "starts from stage2 but has another architecture"),
    (["stage_overrides.stage9.lr=0.1"], "stage_overrides.stage9: no such stage"),
    (["stage_overrides.stage1.init_from=/no/such/run/stage0"], "stage_overrides.stage1.init_from: '/no/such/run"),
    (["stages=[configs/demo/stage1.yaml, configs/demo/nope.yaml]"], "stages[1]: stage config "
                                                                    "'configs/demo/nope.yaml' not found"),
    (["stagez=[]"], "stagez: unknown pipeline setting"),
    (["evaluate.run_dirr=x"], "evaluate.run_dirr: unknown parameter of 03_sample_and_evaluate.ipynb"),
    (["kernel=no-such-kernel"], "kernel: the Jupyter kernel 'no-such-kernel' is not installed"),
    (["threads=-1"], "threads: expected an integer >= 0"),
    (["ablate.sedes=2"], "ablate.sedes: unknown parameter of 06_ablations.ipynb (did you mean 'seeds'?)"),
    (["ablate.seeds=0"], "ablate.seeds: expected an integer >= 1"),
    (["ablate.jobs=0"], "ablate.jobs: expected an integer >= 1"),
    (["ablate.budget=-1"], "ablate.budget: expected a positive number of FLOPs"),
    (["ablate.suite=no_such_suite"], "ablate.suite: "),
    (["ablate.run=true"], "ablate.run: set by the pipeline"),
]


@pytest.mark.parametrize("sets, message", BAD, ids=[s[0][0].split("=")[0] for s in BAD])
def test_a_bad_parameter_is_named_before_any_kernel_starts(sets, message, tmp_path, no_kernel, monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(PipelineConfigError) as err:
        run_pipeline(PipelineConfig.from_yaml(DEMO, [f"runs_dir={tmp_path}", *sets]), printer=lambda line: None)
    assert message in str(err.value)
    assert not (tmp_path / "demo").exists()


def test_the_cli_prints_the_bad_parameter_and_exits_2(tmp_path, no_kernel, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    code = main(["pipeline", "--config", str(DEMO), "--set", f"runs_dir={tmp_path}", "--set", "prepare.limit=0"])
    assert code == 2
    assert "error: prepare.limit: expected a positive integer or null, got 0" in capsys.readouterr().err


def test_check_validates_without_running(tmp_path, no_kernel, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    assert main(["pipeline", "--config", str(DEMO), "--set", f"runs_dir={tmp_path}", "--check"]) == 0
    assert "pipeline demo: 6 steps, parameters valid" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
#  End to end: injected failure, then resume
# ---------------------------------------------------------------------------------------------

def tiny_pipeline(root: Path) -> Path:
    """A 3-stage pipeline (16 px masked, 16 px unmasked, 32 px masked) of 3 steps each on 32 scenes."""
    stages = []
    for i, (res, mask, extra) in enumerate([(16, 0.5, {}), (16, 0.0, {"init_mode": "full"}),
                                            (32, 0.5, {"model_overrides": {**TINY_MODEL, "sample_size": 32,
                                                                           "pos_interp_scale": 2.0}})], 1):
        stage = {"name": f"stage{i}", "run": "ignored", "data": "ignored", "resolution": res, "model": "nano",
                 "model_overrides": {**TINY_MODEL, "sample_size": 16}, "mask_ratio": mask, "steps": 3,
                 "global_batch": 8, "micro_batch": 8, "lr": 1.0e-3, "sigma_data": 0.5, "ema_decay": 0.9,
                 "sample_steps": 2, "sample_cfg_scale": 2.0, "sample_prompts": ["a red circle", "a blue square"],
                 "log_every": 1, **extra}
        path = root / f"stage{i}.yaml"
        path.write_text(yaml.safe_dump(stage))
        stages.append(str(path))
    config = root / "pipeline.yaml"
    config.write_text(yaml.safe_dump({
        "run": "tiny", "runs_dir": str(root / "runs"), "stages": stages, "threads": 1, "print_every": 1,
        "prepare": {"source": "shapes", "resolutions": "16,32", "output": str(root / "prepared"), "limit": 32,
                    "source_options": "{n: 32}", "preview": 4},
        "evaluate": {"samples_per_prompt": 1, "earlier_samples_per_prompt": 0, "eval_steps": 2, "fid_samples": 8}}))
    return config


def pipeline_cli(config: Path, *sets: str) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "workbench", "pipeline", "--config", str(config)]
    for pair in sets:
        args += ["--set", pair]
    return subprocess.run(args, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)


def mtimes(paths: list[Path]) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in paths}


@pytest.mark.slow
def test_a_failing_stage_stops_the_pipeline_and_a_rerun_resumes_without_redoing_complete_stages(tmp_path):
    config = tiny_pipeline(tmp_path)
    run = tmp_path / "runs" / "tiny"
    notebooks = run / "notebooks"

    # 1. stage 2 diverges: its learning rate is absurd and one non-finite step is one too many
    failed = pipeline_cli(config, "stage_overrides.stage2.lr=1e30", "stage_overrides.stage2.max_nonfinite=1")
    out = failed.stdout + failed.stderr
    assert failed.returncode == 1, out
    assert "[1/5] 01_prepare: prepare shapes" in out and "[2/5] 02_stage1: done in" in out
    assert f"pipeline stopped: 02_stage2 failed in notebook {notebooks / '02_stage2.ipynb'}" in out
    assert "failing cell: cell" in out and "| history = trainer.run()" in out
    assert "error: TrainingDiverged: 1 consecutive steps had a non-finite loss" in out
    assert "[3/5] 02_stage3" not in out and not (run / "stage3").exists()
    state = json.loads((run / "pipeline_state.json").read_text())["steps"]
    assert [state[k]["status"] for k in ("01_prepare", "02_stage1", "02_stage2")] == ["complete", "complete", "failed"]
    kept = [notebooks / "01_prepare.ipynb", notebooks / "02_stage1.ipynb", tmp_path / "prepared" / "prepared.json",
            run / "stage1" / "checkpoints" / "step_0000003" / "manifest.json", run / "stage1" / "metrics.jsonl",
            run / "stage1" / "samples" / "step_0000003.png"]
    before = mtimes(kept)

    # 2. the fault removed: resume at stage 2; the prepare step and stage 1 are not rerun
    resumed = pipeline_cli(config)
    out = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, out
    assert "[1/5] 01_prepare: complete, kept from the previous run" in out
    assert "[2/5] 02_stage1: complete, kept from the previous run" in out
    for line in ("[3/5] 02_stage2: done in", "[4/5] 02_stage3: done in", "[5/5] 03_evaluate: done in"):
        assert line in out
    assert mtimes(kept) == before
    state2 = json.loads((run / "pipeline_state.json").read_text())["steps"]
    assert state2["02_stage1"]["finished_at"] == state["02_stage1"]["finished_at"]
    assert all(entry["status"] == "complete" for entry in state2.values())
    stage2 = read_results(notebooks / "02_stage2.ipynb")[-1]
    assert stage2["step"] == 3 and stage2["init_from"] == str(run / "stage1") and stage2["final_loss"] < 1e3
    assert read_results(notebooks / "02_stage3.ipynb")[-1]["init_from"] == str(run / "stage2")
    evaluated = read_results(notebooks / "03_evaluate.ipynb")[-1]
    assert [s["stage"] for s in evaluated["summaries"]] == ["stage1", "stage2", "stage3"]
    assert evaluated["scores"]["stage1"] == {} and evaluated["scores"]["stage3"]["samples"] == 55

    # 3. the report: self-contained loss curves, a sample grid per stage, metrics, cost, notebook links
    report = (run / "report.html").read_text()
    assert "<script src=" not in report and "Plotly.newPlot" in report          # plotly.js inline, no CDN
    assert report.count('alt="samples of stage') == 3
    assert "final_loss" in report and "H100-h" in report and "&#36;1,890" in report
    assert "single-object shape accuracy" in report and "not comparable with published FID" in report
    for name in ("01_prepare", "02_stage1", "02_stage2", "02_stage3", "03_evaluate"):
        assert f'href="notebooks/{name}.ipynb"' in report

    # 4. everything complete: a rerun runs nothing and only rewrites the report
    again = pipeline_cli(config)
    assert again.returncode == 0 and "0 step(s) run, 5 kept" in again.stdout
    assert mtimes(kept) == before


def test_overrides_that_only_work_together_are_accepted_and_a_bad_pair_is_named(tmp_path, no_kernel, monkeypatch):
    monkeypatch.chdir(ROOT)
    steps = plan_steps(PipelineConfig.from_yaml(DEMO, [f"runs_dir={tmp_path}", "overrides.global_batch=4",
                                                       "overrides.micro_batch=4"]))
    assert json.loads(steps[1].parameters["overrides"])["global_batch"] == 4
    with pytest.raises(PipelineConfigError, match=r"overrides.global_batch \(stage stage1"):
        plan_steps(PipelineConfig.from_yaml(DEMO, [f"runs_dir={tmp_path}", "overrides.global_batch=6",
                                                   "overrides.micro_batch=4"]))


@pytest.mark.parametrize("config", sorted((ROOT / "configs").glob("*/pipeline.yaml")), ids=lambda p: p.parent.name)
def test_every_shipped_pipeline_plans(config, tmp_path, no_kernel, monkeypatch):
    monkeypatch.chdir(tmp_path)                                   # stage YAMLs are found beside the pipeline YAML
    steps = plan_steps(PipelineConfig.from_yaml(config, [f"runs_dir={tmp_path}"]))
    assert [s.kind for s in steps] == ["prepare", "train", "train", "train", "train", "evaluate"]


@pytest.mark.slow
def test_the_pipeline_runs_an_ablation_suite_as_its_last_step_and_a_rerun_keeps_it(tmp_path):
    from workbench.ablate.suite import Suite

    config = tiny_pipeline(tmp_path)
    values = yaml.safe_load(config.read_text())
    suite = Suite.load("masking").quick().to_dict()
    suite["variants"] = {"a_no_mask": {"mask_ratio": 0.0}, "c_deferred_75": {"mask_ratio": 0.75}}
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(suite))
    values["stages"] = values["stages"][:1]
    values["ablate"] = {"suite": str(tmp_path / "suite.yaml"), "budget": 0.4e12, "seeds": 1, "checkpoints": 1}
    config.write_text(yaml.safe_dump(values))

    done = pipeline_cli(config)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "[4/4] 06_ablate: ablation suite" in out and "[4/4] 06_ablate: done in" in out
    results = json.loads((tmp_path / "runs" / "tiny" / "ablate" / "results.json").read_text())
    assert {row["variant"] for row in results["rows"]} == {"a_no_mask", "c_deferred_75"}
    assert all("val_loss" in row["metrics"] for row in results["rows"])
    recorded = read_results(tmp_path / "runs" / "tiny" / "notebooks" / "06_ablate.ipynb")[-1]
    assert recorded["rows"] == len(results["rows"]) and recorded["failures"] == 0
    again = pipeline_cli(config)
    assert again.returncode == 0 and "0 step(s) run, 4 kept" in again.stdout
