"""A folder the user cannot write to is an input problem: one line naming it, exit 2, for every command that writes."""

import builtins
import errno
import os
import pathlib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from chestxray.cli import app


@pytest.fixture
def read_only(tmp_path, monkeypatch) -> Path:
    """A folder nothing can be written into: chmod where permissions bind (not root), else the same refusal from
    the file system calls, as a read-only mount gives it."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return

    def denied(path):
        return PermissionError(errno.EACCES, "Permission denied", str(path))

    def inside(path) -> bool:
        return Path(os.path.abspath(path)).is_relative_to(folder) and Path(os.path.abspath(path)) != folder

    real_mkdir, real_open, real_os_open = pathlib.Path.mkdir, builtins.open, os.open

    def mkdir(self, *a, **k):
        if inside(self) and not self.exists():
            raise denied(self)
        return real_mkdir(self, *a, **k)

    def open_(file, mode="r", *a, **k):
        if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+") and inside(file):
            raise denied(file)
        return real_open(file, mode, *a, **k)

    def os_open(path, flags, *a, **k):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and inside(path):
            raise denied(path)
        return real_os_open(path, flags, *a, **k)

    monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
    monkeypatch.setattr(builtins, "open", open_)
    monkeypatch.setattr(os, "open", os_open)
    yield folder


def test_every_writing_command_names_the_folder_it_cannot_write(tiny_run, tiny_data, read_only):
    runner = CliRunner()
    film = next((tiny_data / "test" / "covid").iterdir())
    commands = {
        "train": ["train", "--data", tiny_data, "--out", read_only / "run", "--img-size", "64", "--stages", "head",
                  "--epochs-head", "1", "--quiet"],
        "evaluate": ["evaluate", tiny_run, "--data", tiny_data, "--out", read_only / "ev", "--bootstrap", "0"],
        "predict": ["predict", tiny_run, film, "--out", read_only / "p.csv"],
        "export": ["export", tiny_run, "--out", read_only / "m.onnx"],
    }
    for name, args in commands.items():
        res = runner.invoke(app, [str(a) for a in args])
        assert res.exit_code == 2, (name, res.output, res.exception)
        lines = [ln for ln in res.output.splitlines() if ln.strip()]
        assert lines[-1].startswith(f"error: {read_only}") and "permission denied" in lines[-1], (name, res.output)
        assert "Traceback" not in res.output and "a bug" not in res.output
