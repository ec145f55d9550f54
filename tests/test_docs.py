"""The documentation site builds without warnings, and every train option and command is documented somewhere."""

import dataclasses
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from chestxray.config import SECTIONS

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_docs_build_strictly(tmp_path):
    res = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "site" / "data" / "index.html").exists()


def test_new_options_have_their_page():
    """Options a user meets first are explained in docs/, not only in --help."""
    text = "\n".join(p.read_text() for p in (ROOT / "docs").glob("*.md"))
    for flag in ("--test-fraction", "--val-fraction", "--no-audit", "--name", "--overwrite", "--n all", "image_quality",
                 "predicted_class", "source .venv/bin/activate"):
        assert flag in text, f"{flag} is not documented in docs/"
    names = {f.name for s in SECTIONS.values() for f in dataclasses.fields(s)}
    assert {"test_fraction", "audit"} <= names  # the options documented above exist


def test_license_is_an_spdx_string():
    meta = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    assert meta["license"] == "Apache-2.0"
