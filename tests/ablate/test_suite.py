"""Suites: YAML validation with errors that name the key, equal training FLOPs per variant, the finetune phase,
and that the built-in variants are what their names say (no training here)."""

from __future__ import annotations

import pytest

from workbench.ablate.suite import BUILT_IN, Suite
from workbench.eval.cost import stage_plan
from workbench.model import MicroDiT


def write(tmp_path, text: str):
    path = tmp_path / "suite.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, match", [
    ("name: x\nvariants: {a: {}}\nbudgte: 3\n", r"suite .* has no field 'budgte'"),
    ("name: x\nvariants: {a: {maskratio: 0.5}}\n", r"variant 'a'.*no field 'maskratio'.*did you mean 'mask_ratio'"),
    ("name: x\nbase: {lr: 1e-3, stepz: 3}\nvariants: {a: {}}\n", r"base.*no field 'stepz'"),
    ("name: x\nvariants: {a: {mask_ratio: 2.0}}\n", r"variant 'a'.*Stage\.mask_ratio"),
    ("name: x\nvariants: {a: {model_overrides: {widht: 64}}}\n", r"variant 'a'.*widht.*did you mean 'width'"),
    ("name: x\nvariants: {a: {steps: 100}}\n", r"'steps' is set by the suite"),
    ("name: x\nvariants: {a: {}}\nfinetune: 1.5\n", r"finetune must be"),
    ("name: x\nvariants: {a: {}}\nevaluate: {step: 3}\n", r"evaluate has no field 'step'.*did you mean 'steps'"),
    ("name: x\nvariants: {a: {}}\nevaluate: {steps: 0}\n", r"evaluate\.steps must be a positive number"),
    ("name: x\nvariants: {a: {}}\ndata: {resolution: 17}\n", r"variant 'a'.*divisible by patch_size"),
    ("name: x\nvariants: {a: {}}\ndata: {n: 0}\n", r"data\.n must be a positive integer"),
    ("name: x\nvariants: {a: {template_weights: {singel: 1}}}\n", r"variant 'a'.*template_weights.*'singel'"),
    ("variants: {a: {}}\n", r"'name' is missing"),
    ("name: x\nvariants: {}\n", r"'variants' must map"),
    ("name: x\nvariants: {a: 3}\n", r"variant 'a' must be a mapping"),
])
def test_a_bad_suite_file_is_one_error_naming_the_key(tmp_path, text, match):
    with pytest.raises(ValueError, match=match):
        Suite.load(write(tmp_path, text))


def test_an_unknown_suite_names_the_built_in_ones():
    with pytest.raises(FileNotFoundError, match="masking, masking32, moe, optim, recipe"):
        Suite.load("nonexistent")


@pytest.mark.parametrize("name", BUILT_IN)
@pytest.mark.parametrize("quick", [False, True])
def test_every_variant_spends_the_budget_within_2_percent(name, quick):
    suite = Suite.load(name)
    suite = suite.quick() if quick else suite
    budget = 0.4e12 if quick else 20e12
    for variant in suite.variants:
        phases = suite.stages(variant, budget, seed=1)
        total = sum(stage_plan(stage).total_flops() for stage, _ in phases)      # counted afresh from the stages
        assert total == pytest.approx(budget, rel=0.02), (variant, total)
        assert sum(f for _, f in phases) == pytest.approx(total, rel=1e-9)
        assert [s.name for s, _ in phases] == (["main", "finetune"] if suite.finetune else ["main"])
        assert all(s.seed in (1, 1001) and s.run == f"{name}-{variant}-s1" for s, _ in phases)


def test_the_finetune_continues_the_main_phase_unmasked_as_the_papers_stage_2():
    main, finetune = (s for s, _ in Suite.load("masking").stages("c_deferred_75", 20e12, seed=0, runs_dir="R"))
    assert main.mask_ratio == 0.75 and main.schedule == "cosine"
    assert finetune.mask_ratio == 0.0 and finetune.schedule == "constant" and finetune.warmup_steps == 0
    assert finetune.lr == pytest.approx(main.lr * main.final_lr_fraction)             # the main phase's final LR
    assert finetune.init_from == "R/masking-c_deferred_75-s0/main" and finetune.init_mode == "full"
    assert finetune.ema_power == 0 and finetune.ema_decay == main.ema_decay            # the EMA goes on averaging
    assert finetune.model_overrides == main.model_overrides
    assert 0 < main.checkpoint_every < main.steps                                      # kill -9 loses little


def test_the_masking_variants_are_what_their_names_say():
    suite = Suite.load("masking")
    stage = {v: suite.stages(v, 20e12, 0)[0][0] for v in suite.variants}
    models = {v: MicroDiT.from_preset(s.model, **s.model_overrides) for v, s in stage.items()}
    assert set(stage) == {"a_no_mask", "b_naive_75", "c_deferred_75", "d_small_unmasked", "e_deferred_50"}
    assert [stage[v].mask_ratio for v in sorted(stage)] == [0.0, 0.75, 0.75, 0.0, 0.5]
    assert models["b_naive_75"].arch.mixer_depth == 0 and models["c_deferred_75"].arch.mixer_depth > 0
    params = {v: sum(p.numel() for p in m.parameters()) for v, m in models.items()}
    assert params["d_small_unmasked"] < 0.8 * params["a_no_mask"]
    # equal FLOPs: masking buys steps, the smaller model too
    assert stage["b_naive_75"].steps > stage["c_deferred_75"].steps > stage["e_deferred_50"].steps > \
        stage["a_no_mask"].steps
    assert stage["d_small_unmasked"].steps > stage["a_no_mask"].steps


def test_the_moe_variants_match_active_and_total_parameters_within_2_percent():
    suite = Suite.load("moe")
    models = {v: MicroDiT.from_preset(s.model, **s.model_overrides)
              for v, s in ((v, suite.stages(v, 20e12, 0)[0][0]) for v in suite.variants)}
    active = {v: m.active_parameters_per_token() for v, m in models.items()}
    total = {v: sum(p.numel() for p in m.parameters()) for v, m in models.items()}
    assert models["moe_layerwise"].moe_parameters() > 0 and models["moe_uniform"].moe_parameters() > 0
    assert models["dense_layerwise"].moe_parameters() == 0 == models["dense_uniform"].moe_parameters()
    assert active["dense_layerwise"] == pytest.approx(active["moe_layerwise"], rel=0.02)
    assert active["dense_uniform"] == pytest.approx(active["moe_uniform"], rel=0.02)
    assert total["moe_uniform"] == pytest.approx(total["moe_layerwise"], rel=0.02)
    uniform = models["moe_uniform"].arch
    assert uniform.qkv_ratio[0] == uniform.qkv_ratio[1] and uniform.mlp_ratio[0] == uniform.mlp_ratio[1]
    quick = Suite.load("moe").quick()                             # the smoke test still has an MoE block
    s = quick.stages("moe_layerwise", 0.4e12, 0)[0][0]
    assert MicroDiT.from_preset(s.model, **s.model_overrides).moe_parameters() > 0


def test_a_users_suite_file_runs_as_the_built_in_ones(tmp_path):
    path = write(tmp_path, "name: mine\ndata: {n: 64, val_n: 16, resolution: 16}\nfinetune: 0.2\n"
                           "finetune_overrides: {lr: 1.0e-4}\n"
                           "base: {model: nano, model_overrides: {sample_size: 16}, lr: 1.0e-3}\n"
                           "variants:\n  wide: {model_overrides: {width: 128}}\n  narrow: {model_overrides: {width: 64,"
                           " mixer_width: 64}}\n")
    suite = Suite.load(path)
    assert list(suite.variants) == ["wide", "narrow"] and suite.evaluate["steps"] == 12
    main, finetune = (s for s, _ in suite.stages("narrow", 1e12, 0))
    assert finetune.lr == 1e-4 and main.model_overrides["width"] == 64
    assert "narrow" in suite.plan(1e12)
