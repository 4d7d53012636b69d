"""The training fixtures (a tiny prepared shapes set, small stages) for the evaluation tests."""

from tests.train.conftest import make_stage, shapes_data  # noqa: F401
