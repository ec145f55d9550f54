"""Nothing lost: a run directory that is refused, replaced or resumed on purpose, checkpoints that cannot be
half-written, random state that travels with them, and interruptions that say how to go on.

- `claim_run_dir`: a new run refuses an existing run directory unless told to resume or overwrite it.
- `progress.json` in the run records the stages that finished; `--resume` skips them (their best weights
  are loaded and scored again) and continues an interrupted stage from its `last.ckpt` (model,
  optimizer, scheduler, epoch, callbacks, and the random state saved by `RandomState`).
- `CheckedCheckpointIO`: Lightning's checkpoints written atomically with a size and SHA-256 record, and
  read back with weights_only=True after verification.
- `Interrupted`: SIGINT and SIGTERM raised as an exception that Lightning lets through, so the command
  ends with one line naming where the run stopped and how to resume it.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import signal
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback

from ..errors import ChestXrayError
from ..files import checksum_path, load_checked, save_checked
from ..rundir import Progress, RunDir

log = logging.getLogger(__name__)

KILL_AFTER_ENV = "CHESTXRAY_KILL_AFTER"  # "stage:epoch": SIGKILL itself after that epoch's checkpoint (crash tests)


class RunDirError(ChestXrayError):
    pass


class TrainingCheckpointError(ChestXrayError):
    pass


class NonFiniteLoss(ChestXrayError):
    pass


class Interrupted(BaseException):  # not Exception: nothing on the way may swallow it
    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # 130 for SIGINT, 143 for SIGTERM


@contextmanager
def interrupts_raise():
    """While training: SIGINT and SIGTERM raise Interrupted (Lightning would otherwise exit on Ctrl-C itself)."""
    def handler(signum, frame):
        raise Interrupted(signum)

    try:
        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


RUN_LOCK = ".lock"  # inside the run directory: the pid of the process writing it, held with flock while it does


@contextmanager
def run_lock(out: Path):
    """Hold `out`'s writer lock for the block: a second writer (a second `train --out`, `--overwrite` or `--resume`
    of the same folder) is refused naming the pid that holds it. The lock is an flock on `out/.lock`, which the
    system releases when its process ends however it ends, so a lock left by a killed process is taken over (and
    said so). A folder this call created and nothing else wrote into is removed again on the way out."""
    import fcntl

    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    path = out / RUN_LOCK
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "unknown"
        f.close()
        raise RunDirError(f"{out}: another chestxray process (pid {holder}) is writing this run directory; wait for it "
                          f"to finish or stop it, or give another --out") from None
    f.seek(0)
    stale = f.read().strip()
    if stale and stale != str(os.getpid()):
        log.warning("%s: taking over the lock left by process %s, which is no longer running", out, stale)
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()
        if created and out.exists() and not any(out.iterdir()):
            out.rmdir()


def run_files(out: Path) -> list[Path]:
    """What a run directory holds, its writer lock aside."""
    return [p for p in out.iterdir() if p.name != RUN_LOCK] if out.is_dir() else []


def claim_run_dir(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to train into an existing run unless resuming it or told to replace it (then replace it whole).
    The caller holds the run's lock (`run_lock`)."""
    exists = bool(run_files(out))
    if resume:
        if not RunDir(out).config.exists():
            raise RunDirError(f"{out}: not a run directory to resume (no config.yaml); start it with --out")
        return
    if not exists:
        return
    if not overwrite:
        raise RunDirError(f"{out}: a run directory is already there; continue it with `chestxray train --resume {out}`, "
                          "or give --overwrite to replace it (its files are deleted), or another --out")
    log.warning("replacing the earlier run in %s (--overwrite)", out)
    for p in run_files(out):
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


def read_progress(out: Path) -> Progress:
    return Progress.read(RunDir(out).progress)


def mark_progress(out: Path, done: list[str] = (), finished: bool | None = None) -> None:
    state = read_progress(out)
    state.done = [*state.done, *[s for s in done if s not in state.done]]
    if finished is not None:
        state.finished = finished
    state.write(RunDir(out).progress)


def config_differences(saved: dict, given: dict, prefix: str = "") -> list[str]:
    """Keys (dotted) whose values differ between two nested config dicts."""
    out = []
    for k in sorted(set(saved) | set(given)):
        a, b = saved.get(k), given.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k} ({a!r} in the run, {b!r} now)")
    return out


class CheckedCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoints written to a temporary name and renamed, with a size and SHA-256 record; read back
    with weights_only=True once the record matches."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        save_checked(checkpoint, path)

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        return load_checked(path, "training checkpoint", TrainingCheckpointError)

    def remove_checkpoint(self, path) -> None:
        Path(path).unlink(missing_ok=True)
        checksum_path(Path(path)).unlink(missing_ok=True)


class RandomState(Callback):
    """The random state of torch, numpy and Python saved in every checkpoint and restored on resume, so that
    a resumed stage draws the same augmentations as an uninterrupted one. Plain tensors and ints only."""

    def state_dict(self) -> dict:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        version, internal, gauss_next = random.getstate()
        out = {"torch": torch.get_rng_state(), "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
               "python": (version, list(internal), gauss_next)}
        if torch.cuda.is_available():
            out["cuda"] = torch.cuda.get_rng_state_all()
        return out

    def load_state_dict(self, state: dict) -> None:
        torch.set_rng_state(state["torch"])
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        version, internal, gauss_next = state["python"]
        random.setstate((version, tuple(internal), gauss_next))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


class KillAfter(Callback):
    """Crash on purpose (SIGKILL) once a given epoch is complete and checkpointed: `CHESTXRAY_KILL_AFTER=stage:N`
    kills at the start of epoch N + 1 (1-based), so N must be below the stage's epochs. For the resume tests
    and benchmark only; nothing else sets it."""

    def __init__(self, stage: str):
        spec = os.environ.get(KILL_AFTER_ENV, "")
        want_stage, _, epoch = spec.partition(":")
        self.epoch = int(epoch) if want_stage == stage and epoch.isdigit() else None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        # Lightning runs checkpoint callbacks last at an epoch's end; at the next start, last.ckpt is on disk
        if self.epoch is not None and trainer.current_epoch == self.epoch:
            os.kill(os.getpid(), signal.SIGKILL)
