import os

# Tests never reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import tempfile  # noqa: E402

os.environ["CHESTXRAY_CACHE"] = tempfile.mkdtemp(prefix="chestxray-cache-")
os.environ.setdefault("TORCH_HOME", os.path.join(os.path.dirname(__file__), "..", ".pytest_cache", "torch-home"))
if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs two workers on two cores: one thread each (and their CLIs)
    os.environ["OMP_NUM_THREADS"] = "1"

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from chestxray.data.synthetic import make_dataset  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cxr-nih-cohen"


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A small synthetic phantom ImageFolder (+ manifest.csv with unlabelled rows)."""
    root = tmp_path_factory.mktemp("phantoms")
    return make_dataset(root, {"covid": 14, "normal": 20, "pneumonia": 14}, size=96, seed=1, n_unlabelled=4)


@pytest.fixture(scope="session")
def tiny_run(tiny_data, tmp_path_factory) -> Path:
    """A two-stage run on the phantoms at 64 px (head, then fine-tuning, calibrated), shared by the
    export and service tests. Tests must not write into it."""
    from typer.testing import CliRunner

    from chestxray.cli import app

    out = tmp_path_factory.mktemp("tiny-run") / "run"
    res = CliRunner().invoke(app, ["train", "--data", str(tiny_data), "--out", str(out), "--img-size", "64", "--batch-size", "16",
                                   "--epochs-head", "2", "--epochs-finetune", "1", "--calibrate", "--bootstrap", "0", "--quiet"])
    assert res.exit_code == 0, res.output
    return out
