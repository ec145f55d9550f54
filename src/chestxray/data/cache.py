"""Decoded-image cache: every image is read and resized once; epochs read arrays, not files."""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from .io import XrayReadError, read_xray


def cache_size_for(img_size: int) -> int:
    """Stored side length: a bit above the training size so random crops keep detail."""
    return int(round(img_size * 8 / 7))


def decode_resized(path: str, size: int) -> np.ndarray:
    arr = read_xray(path)
    return np.asarray(Image.fromarray(arr).resize((size, size), Image.BILINEAR, reducing_gap=3.0))


def _decode_or_error(args):
    path, size = args
    try:
        return decode_resized(path, size), None
    except XrayReadError as e:
        return None, e


def decode_all(
    paths: list[str], size: int, skip_bad: bool = False, workers: int | None = None, desc: str = "decoding"
) -> tuple[np.ndarray, list[int], list[XrayReadError]]:
    """Decode `paths` into one (N, size, size) uint8 array.

    Returns the array, the indices of `paths` it holds, and the read errors. Without `skip_bad`
    the first unreadable file raises its XrayReadError.
    """
    workers = workers if workers is not None else min(4, os.cpu_count() or 1)
    jobs = [(p, size) for p in paths]
    if workers > 1 and len(paths) >= 64:
        with ProcessPoolExecutor(workers) as ex:
            results = list(tqdm(ex.map(_decode_or_error, jobs, chunksize=16), total=len(jobs), desc=desc, leave=False))
    else:
        results = [_decode_or_error(j) for j in tqdm(jobs, desc=desc, leave=False)]
    kept, errors, arrays = [], [], []
    for i, (arr, err) in enumerate(results):
        if err is not None:
            if not skip_bad:
                raise err
            errors.append(err)
            continue
        kept.append(i)
        arrays.append(arr)
    stack = np.stack(arrays) if arrays else np.zeros((0, size, size), np.uint8)
    return stack, kept, errors
