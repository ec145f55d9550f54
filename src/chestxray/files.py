"""The project's files: read with errors that name the file (never advising unsafe loading), and written so
that they cannot be half-written: to a temporary name in the same folder, then renamed into place.

A checkpoint also gets a sidecar `NAME.sha256` with its size and SHA-256, written after it; reading
verifies it, so a truncated or corrupted file is refused (checkpoints) or rebuilt (caches), never used.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import pickle
import warnings
import zipfile
from contextlib import contextmanager
from pathlib import Path

from .errors import ChestXrayError


def torch_load(path: str | Path, what: str, error: type[ChestXrayError] = ChestXrayError):
    """torch.load with weights_only=True (tensors and plain containers only, no code).

    A missing, empty, truncated or foreign file raises `error` naming the file and `what` it should be.
    torch's own message is not passed on: it advises weights_only=False, which would run code from the file.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: {what} not found")
    if path.stat().st_size == 0:
        raise error(f"{path}: empty file, not a {what}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pickle-protocol warnings on foreign files
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = "it holds objects other than tensors and plain containers" if "Weights only load failed" in str(e) \
            else "not a PyTorch file"
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, AttributeError, IndexError, KeyError):
        reason = "not a PyTorch file, or truncated or corrupt"
    raise error(f"{path}: cannot be read as a {what} ({reason})")


def sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class DiskFullError(ChestXrayError):
    pass


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside `path`; on success it replaces `path` (an atomic rename), on any failure
    it is removed and `path`, if it existed, is left as it was. A full disk becomes one error naming the file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(f"{path}: no space left on the device while writing it; "
                                "the earlier file (if any) is unchanged") from e
        raise
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def write_csv(path: str | Path, rows: list[dict], columns: list[str]) -> None:
    """Rows as a CSV with these columns (keys outside them left out, missing ones empty), atomically."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    write_text(path, buf.getvalue())


def checksum_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def save_checked(obj, path: str | Path) -> None:
    """torch.save atomically, with its size and SHA-256 recorded beside it, such that a kill at any moment leaves
    a file that matches its record: the record first names the new file beside the one it replaces, then the
    file is renamed into place, then the record names the new file alone."""
    import torch

    path = Path(path)
    side = checksum_path(path)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
        new = {"bytes": tmp.stat().st_size, "sha256": sha256(tmp)}
        if path.exists() and side.exists():
            try:
                old = json.loads(side.read_text())
            except (OSError, ValueError):
                old = None
            if isinstance(old, dict) and "sha256" in old:
                write_text(side, json.dumps({**new, "previous": {"bytes": old.get("bytes"), "sha256": old["sha256"]}}))
    write_text(side, json.dumps(new))


def verify(path: str | Path, what: str, error: type[ChestXrayError] = ChestXrayError) -> None:
    """Refuse a file whose size or SHA-256 differs from what was recorded when it was written (or, while it was
    being replaced, from the record of the file it replaced). Files written before checksums were recorded
    (no sidecar) pass."""
    path = Path(path)
    side = checksum_path(path)
    if not side.exists() or not path.exists():
        return
    try:
        record = json.loads(side.read_text())
    except (OSError, ValueError):
        raise error(f"{side}: the checksum record of {path.name} is unreadable") from None
    accepted = [record] + ([record["previous"]] if isinstance(record.get("previous"), dict) else [])
    size = path.stat().st_size
    if all(size != r.get("bytes") for r in accepted):
        raise error(f"{path}: truncated or corrupt {what}: {size:,} bytes, {record.get('bytes'):,} when it was written")
    digest = sha256(path)
    if all(digest != r.get("sha256") for r in accepted):
        raise error(f"{path}: corrupt {what}: its SHA-256 differs from the one recorded when it was written")


def load_checked(path: str | Path, what: str, error: type[ChestXrayError] = ChestXrayError):
    """`verify`, then `torch_load` (weights_only=True)."""
    verify(path, what, error)
    return torch_load(path, what, error)


@contextmanager
def file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
