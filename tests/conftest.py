import os

# Tests never reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import tempfile  # noqa: E402

os.environ["CHESTXRAY_CACHE"] = tempfile.mkdtemp(prefix="chestxray-cache-")
os.environ.setdefault("TORCH_HOME", os.path.join(os.path.dirname(__file__), "..", ".pytest_cache", "torch-home"))
if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs two workers on two cores: one thread each (and their CLIs)
    os.environ["OMP_NUM_THREADS"] = "1"

import hashlib  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from chestxray.data.synthetic import make_dataset  # noqa: E402
from chestxray.files import file_lock  # noqa: E402

from .helpers import HEAD, SHARED_DATA, TINY_RUN, invoke  # noqa: E402, F401  (SHARED_DATA: imported from here too)


def pytest_collection_modifyitems(items):
    """Integration tests (marked `slow`, run by `make test`, left out by `make test-fast`): every test that trains,
    exports or serves a model through a trained run, and every test in a module marked so."""
    heavy = {"tiny_run", "trained", "relative_runs", "exported", "two_stage_run", "trained_run", "run", "phantom_run",
             "sensitivity_run", "uninterrupted", "client", "server", "images"}
    for item in items:
        if heavy & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def shared_root(tmp_path_factory, worker_id) -> Path:
    """A folder every xdist worker of this session shares (the session's own under plain pytest)."""
    base = tmp_path_factory.getbasetemp()
    return base if worker_id == "master" else base.parent


@pytest.fixture(scope="session")
def tiny_data(shared_root) -> Path:
    """A small synthetic phantom ImageFolder (+ manifest.csv with unlabelled rows), made once per session. Read only."""
    root = shared_root / "phantoms"
    with file_lock(shared_root / ".phantoms.lock"):
        if not (root / "manifest.csv").exists():
            shutil.rmtree(root, ignore_errors=True)
            make_dataset(root, {"covid": 14, "normal": 20, "pneumonia": 14}, size=96, seed=1, n_unlabelled=4)
    return root


@pytest.fixture(scope="session")
def trained(tiny_data, shared_root):
    """The trained-run factory: `trained(*train_flags, data=None)` is a run directory trained on the phantoms (or on
    `data`) with these flags, trained once per test session whichever worker asks first, then shared. Tests never
    write into it (copy it first); `trained.output(run)` is what its training printed."""
    def make(*flags, data: Path | None = None) -> Path:
        data = data or tiny_data
        key = hashlib.sha1(repr((str(data), flags)).encode()).hexdigest()[:12]
        out = shared_root / "runs" / key / "run"
        with file_lock(shared_root / "runs" / f".{key}.lock"):
            if not (out.parent / "output.txt").exists():
                shutil.rmtree(out, ignore_errors=True)
                res = invoke("train", "--data", data, "--out", out, *flags)
                assert res.exit_code == 0, res.output
                (out.parent / "output.txt").write_text(res.output)
        return out

    make.output = lambda run: (Path(run).parent / "output.txt").read_text()
    return make


@pytest.fixture(scope="session")
def tiny_run(trained) -> Path:
    """A two-stage run on the phantoms at 64 px (head, then fine-tuning, calibrated), shared by the export, service,
    contract and API tests. Tests must not write into it."""
    return trained(*TINY_RUN)


@pytest.fixture(scope="session")
def relative_runs(tiny_data, tmp_path_factory):
    """Two head-stage runs (cross-entropy, focal) trained from a directory with a *relative* --data path."""
    home = tmp_path_factory.mktemp("home")
    shutil.copytree(tiny_data, home / "phantoms")
    runs = []
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(home)
        for loss in ("ce", "focal"):
            res = invoke("train", "--data", "phantoms/manifest.csv", "--out", home / loss, "--loss", loss, *HEAD)
            assert res.exit_code == 0, res.output
            runs.append(home / loss)
    return home, runs
