"""Config helpers: YAML parsing of overrides and files, unknown keys, diffs."""

import pytest

from workbench.config import config_diff, load_yaml, parse_overrides, parse_yaml
from workbench.train import Stage


def test_exponent_floats_are_numbers_not_strings():
    # plain PyYAML (YAML 1.1) reads "1e-3" as the string '1e-3'; a researcher types it anyway
    assert parse_yaml("1e-3") == pytest.approx(1e-3)
    assert parse_yaml("-2E+4") == pytest.approx(-2e4)
    assert parse_yaml("3.0e-4") == pytest.approx(3e-4)
    assert parse_yaml("1e") == "1e" and parse_yaml("e5") == "e5" and parse_yaml("stage1") == "stage1"
    assert parse_overrides(["lr=1e-3", "steps=3", "model_overrides={depth: 2}"]) == {
        "lr": pytest.approx(1e-3), "steps": 3, "model_overrides": {"depth": 2}}


def test_stage_yaml_reads_exponent_lr(tmp_path):
    path = tmp_path / "stage.yaml"
    path.write_text("name: s\nlr: 2e-4\nsteps: 5\n")
    stage = load_yaml(Stage, path, **parse_overrides(["warmup_steps=1"]))
    assert stage.lr == pytest.approx(2e-4) and stage.warmup_steps == 1


def test_parse_overrides_needs_key_value():
    with pytest.raises(ValueError, match="key=value"):
        parse_overrides(["lr"])


def test_config_diff_names_fields_and_ignores_tuple_vs_list():
    assert config_diff({"a": 1, "b": (1, 2)}, {"a": 2, "b": [1, 2], "c": 3}) == {"a": (1, 2), "c": (None, 3)}


@pytest.mark.parametrize("overrides, message", [
    ({"norm_eps": "abc"}, "MicroDiTConfig.norm_eps: expected a number, got 'abc'"),
    ({"qkv_ratio": 5}, "MicroDiTConfig.qkv_ratio: expected two numbers [first, last], got 5"),
    ({"depth": True}, "MicroDiTConfig.depth: expected an integer, got True"),
    ({"caption_mask_compat": "yes"}, "MicroDiTConfig.caption_mask_compat: expected true or false, got 'yes'"),
])
def test_wrong_types_in_model_overrides_name_the_field_in_stage_and_pipeline(overrides, message, tmp_path, capsys):

    with pytest.raises(ValueError) as caught:
        Stage(model="nano", model_overrides=overrides)
    assert str(caught.value) == message
    from workbench.cli import main

    yaml_value = "{" + ", ".join(f"{k}: {v!r}".replace("True", "true") for k, v in overrides.items()) + "}"
    code = main(["pipeline", "--config", "configs/demo/pipeline.yaml", "--set", f"runs_dir={tmp_path}",
                 "--set", f"overrides.model_overrides={yaml_value}"])
    assert code == 2 and not any(tmp_path.iterdir())          # refused before any work, naming the field
    assert message.split(": expected")[0] in capsys.readouterr().err


def test_validation_derives_from_the_annotations_and_a_new_optional_field_needs_no_new_code():
    import dataclasses

    from workbench.config import check_field_types

    @dataclasses.dataclass
    class Settings:
        count: int | None = None
        scale: float = 1.0
        name: str | None = "x"

        def __post_init__(self):
            check_field_types(self)

    assert Settings(count=3).count == 3 and Settings().count is None
    with pytest.raises(ValueError, match=r"Settings.count: expected an integer or null, got 'three'"):
        Settings(count="three")
    with pytest.raises(ValueError, match=r"Settings.scale: expected a number, got True"):
        Settings(scale=True)

    @dataclasses.dataclass
    class Odd:
        shape: set = dataclasses.field(default_factory=set)

    with pytest.raises(TypeError, match=r"Odd.shape: no type check for the annotation 'set'; add it to "
                                        r"workbench.config.FIELD_TYPES"):
        check_field_types(Odd())


def test_every_stage_and_model_range_names_a_real_field_and_edm_constants_are_edms_to_check():
    import dataclasses

    from workbench.config import MODEL_RANGES, MicroDiTConfig
    from workbench.train.stages import STAGE_RANGES

    assert set(STAGE_RANGES) <= {f.name for f in dataclasses.fields(Stage)}
    assert set(MODEL_RANGES) <= {f.name for f in dataclasses.fields(MicroDiTConfig)}
    assert not {"p_std", "sigma_data", "p_mean"} & set(STAGE_RANGES)         # owned by EDMConfig
    with pytest.raises(ValueError, match=r"Stage: EDMConfig.p_std: expected a positive number, got -1"):
        Stage(p_std=-1)
    with pytest.raises(ValueError, match=r"Stage.mask_ratio: expected a value in \[0, 1\), got 1.0"):
        Stage(mask_ratio=1.0)
