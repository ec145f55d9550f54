import os

# Tests never reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import tempfile  # noqa: E402

os.environ["CHESTXRAY_CACHE"] = tempfile.mkdtemp(prefix="chestxray-cache-")
os.environ.setdefault("TORCH_HOME", os.path.join(os.path.dirname(__file__), "..", ".pytest_cache", "torch-home"))

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from chestxray.data.synthetic import make_dataset  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cxr-nih-cohen"


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A small synthetic phantom ImageFolder (+ manifest.csv with unlabelled rows)."""
    root = tmp_path_factory.mktemp("phantoms")
    return make_dataset(root, {"covid": 14, "normal": 20, "pneumonia": 14}, size=96, seed=1, n_unlabelled=4)
