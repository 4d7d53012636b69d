"""Fuzzing (hypothesis): random configs, YAML, image bytes and captions either work or fail with the project's
one-line errors (``WorkbenchError`` / ``ValueError``), never with a traceback from deep inside.

The examples are drawn from a fixed seed (``derandomize``), so a failure reproduces; the budget is
kept small enough for ``make test``.
"""

from __future__ import annotations

import io
import string

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from workbench.cli import main as cli_main
from workbench.config import MicroDiTConfig, from_dict
from workbench.data.images import decode_image
from workbench.data.sources import caption_from_bytes
from workbench.errors import WorkbenchError
from workbench.pipeline.config import PipelineConfig
from workbench.train.stages import Stage

PROJECT_ERRORS = (WorkbenchError, ValueError)
FUZZ = settings(max_examples=150, derandomize=True, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True),
                    st.text(max_size=20))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                      max_leaves=8)
STAGE_FIELDS = [f for f in Stage.__dataclass_fields__]
stage_dicts = st.dictionaries(st.one_of(st.sampled_from(STAGE_FIELDS), st.text(max_size=12)), values, max_size=6)
PIPELINE_FIELDS = list(PipelineConfig.__dataclass_fields__)
pipeline_dicts = st.dictionaries(st.one_of(st.sampled_from(PIPELINE_FIELDS), st.text(max_size=12)), values,
                                 max_size=6)


@FUZZ
@given(stage_dicts)
def test_random_stage_dicts_validate_or_raise_the_projects_error(fields):
    try:
        from_dict(Stage, fields)
    except PROJECT_ERRORS:
        pass


MODEL_FIELDS = [f for f in MicroDiTConfig.__dataclass_fields__]
override_dicts = st.dictionaries(st.sampled_from(MODEL_FIELDS), values, min_size=1, max_size=4)


@FUZZ
@given(override_dicts)
def test_random_model_overrides_validate_or_name_the_field(overrides):
    try:
        Stage(model="nano", model_overrides=overrides)
    except ValueError as err:             # never a TypeError: the message starts with the field it names
        message = str(err)
        assert message.startswith(("MicroDiTConfig.", "Stage.")), message
        assert any(f".{name}:" in message for name in overrides) or "Stage." in message, message


@FUZZ
@given(pipeline_dicts)
def test_random_pipeline_dicts_validate_or_raise_the_projects_error(fields):
    try:
        PipelineConfig.from_dict(fields)
    except PROJECT_ERRORS:
        pass


yaml_texts = st.one_of(
    st.text(alphabet=string.printable, max_size=200),
    stage_dicts.map(lambda d: yaml.safe_dump(d, allow_unicode=True)),
)


@FUZZ
@given(yaml_texts)
def test_random_yaml_files_fail_as_one_line_in_the_cli(tmp_path_factory, text):
    config = tmp_path_factory.mktemp("fuzz") / "stage.yaml"
    config.write_text(text)
    runs = config.parent / "runs"
    # a config that happens to be valid would train: point it at a dataset that is not there, so it stops early
    code = cli_main(["train", "--config", str(config), "--set", f"runs_dir={runs}", "--set", "data=/nonexistent"])
    assert code == 2


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes_under_an_image_name_are_skipped_with_a_reason(data):
    decoded = decode_image(data)
    assert (decoded.image is None) == bool(decoded.reason)
    if decoded.image is not None:
        assert decoded.image.mode == "RGB"


def png_with_garbage(tail: bytes) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buf, format="PNG")
    return buf.getvalue()[:40] + tail


@FUZZ
@given(st.binary(max_size=512))
def test_truncated_and_corrupted_images_are_skipped_with_a_reason(tail):
    decoded = decode_image(png_with_garbage(tail))
    assert decoded.image is None and decoded.reason in ("corrupt_image", "not_an_image", "too_small")


@FUZZ
@given(st.one_of(st.text(max_size=300), st.text(min_size=5000, max_size=20000), st.binary(max_size=300)))
def test_random_unicode_and_byte_captions_are_read_or_skipped_with_a_reason(caption):
    data = caption.encode("utf-8", "surrogatepass") if isinstance(caption, str) else caption
    text, reason, detail = caption_from_bytes(data, "a.txt")
    assert (text is None) == bool(reason)
    assert text is None or text.strip()


@pytest.mark.parametrize("caption", ["", " ", "\u0000", "🙂" * 200, "a" * 20_000])
def test_odd_captions_go_through_the_text_encoder(caption):
    from workbench.widgets.common import default_text_encoder

    states, mask = default_text_encoder().encode([caption])
    assert states.shape[1] == mask.shape[1] == 77 and bool(mask[0, 0])
