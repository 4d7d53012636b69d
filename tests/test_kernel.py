"""In a kernel a WorkbenchError is one line (its traceback folded below it); other exceptions keep theirs."""

from __future__ import annotations

import pytest

from tests.widgets.test_kernel_events import kernel  # noqa: F401  (a fixture: a started workbench kernel)


def test_the_handler_shows_one_line_for_a_workbench_error_and_leaves_others_alone(capsys):
    from IPython.core.interactiveshell import InteractiveShell

    from workbench.kernel import show_workbench_errors_briefly

    shell = InteractiveShell.instance()
    try:
        assert show_workbench_errors_briefly(shell)
        result = shell.run_cell("from workbench.errors import InputError\nraise InputError('steps must be >= 1: "
                                "set steps=10')")
        out = capsys.readouterr().out
        assert isinstance(result.error_in_exec, ValueError)              # InputError is a ValueError too
        assert "InputError\x1b[0m: steps must be >= 1: set steps=10" in out and "Traceback" not in out
        shell.run_cell("def f():\n    raise KeyError('a bug')\nf()")
        bug = capsys.readouterr().out
        assert "a bug" in bug and "-----" in bug and bug.count("\n") > 4      # a bug keeps IPython's frames
    finally:
        shell.set_custom_exc((), None)
        InteractiveShell.clear_instance()


def _execute(client, code: str, timeout: float = 120) -> list[dict]:
    """Every iopub message of one execution, until the kernel is idle again."""
    import time

    msg_id, messages = client.execute(code), []
    deadline = time.monotonic() + timeout
    while True:
        msg = client.get_iopub_msg(timeout=max(1.0, deadline - time.monotonic()))
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            return messages
        messages.append(msg)


@pytest.mark.slow
def test_in_a_real_kernel_a_workbench_error_is_its_message_with_the_traceback_one_click_away(kernel):  # noqa: F811
    _, client = kernel
    messages = _execute(client, "import workbench\nfrom workbench.train import Stage\nStage(name='s', steps=0)")
    [error] = [m["content"] for m in messages if m["msg_type"] == "error"]
    assert error["ename"] == "InputError" and len(error["traceback"]) == 1 and "steps" in error["traceback"][0]
    [folded] = [m["content"]["data"]["text/html"] for m in messages if m["msg_type"] == "display_data"]
    assert folded.startswith("<details") and "stages.py" in folded

    messages = _execute(client, "{}['missing']")                    # a plain bug: IPython's full traceback
    [error] = [m["content"] for m in messages if m["msg_type"] == "error"]
    assert error["ename"] == "KeyError" and len(error["traceback"]) > 1
