"""The training fixtures (a tiny prepared shapes set, small stages) for the evaluation tests."""

from tests.train.conftest import make_stage, one_thread, shapes_data  # noqa: F401
