"""Which errors the CLI prints as one line, and which keep their traceback."""

from __future__ import annotations

import pytest

from stalign import StalignError
from stalign.cli import is_user_error, main


@pytest.fixture
def failing_demo(monkeypatch):
    """``stalign demo`` whose run raises the error given to the returned function."""
    import stalign.cli._demo as demo

    def fail_with(error: BaseException) -> None:
        def run(args):
            raise error

        monkeypatch.setattr(demo, "_run", run)

    return fail_with


def test_stalign_errors_are_one_line(failing_demo, capsys):
    failing_demo(StalignError("folder x is in use by pid 1"))
    assert main(["demo"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "stalign demo: error: folder x is in use by pid 1"


def test_a_runtime_error_from_torch_keeps_its_traceback(failing_demo):
    failing_demo(RuntimeError("CUDA error: device-side assert triggered"))
    with pytest.raises(RuntimeError, match="device-side assert"):
        main(["demo"])  # not caught: Python prints the traceback


def test_user_errors_are_the_explained_ones():
    import torch

    from stalign._lock import FolderLockedError
    from stalign.train import TrainingDivergedError

    for error in (
        ValueError("bad"),
        FileNotFoundError(2, "No such file", "x"),
        MemoryError(),
        FolderLockedError("in use"),
        TrainingDivergedError("diverged"),
        torch.cuda.OutOfMemoryError("CUDA out of memory"),
    ):
        assert is_user_error(error), error
    for error in (RuntimeError("cuDNN error"), NotImplementedError("todo"), KeyError("k")):
        assert not is_user_error(error), error
    assert issubclass(StalignError, RuntimeError)  # `except RuntimeError` still catches it


def test_verbose_twice_shows_the_traceback_of_a_user_error(failing_demo):
    failing_demo(StalignError("in use"))
    with pytest.raises(StalignError):
        main(["-vv", "demo"])
