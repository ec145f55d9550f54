"""Reading the project's binary files with errors that name the file and never advise unsafe loading."""

from __future__ import annotations

import hashlib
import pickle
import warnings
import zipfile
from pathlib import Path

import torch

from .errors import ChestXrayError


def torch_load(path: str | Path, what: str, error: type[ChestXrayError] = ChestXrayError):
    """torch.load with weights_only=True (tensors and plain containers only, no code).

    A missing, empty, truncated or foreign file raises `error` naming the file and `what` it should be.
    torch's own message is not passed on: it advises weights_only=False, which would run code from the file.
    """
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
