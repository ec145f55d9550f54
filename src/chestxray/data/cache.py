"""Decoded-image cache: every image is read and resized once into a memory-mapped uint8 store on disk.

Layout: CACHE_DIR/decoded/<side>/shard-<id>.npy (N, side, side) uint8, with shard-<id>.json listing the
key of each row. A key hashes the file's absolute path, size, modification time and the stored side,
so a changed file (or another size) is decoded again and an unchanged one never is. New images go to a
new shard; old shards stay valid. Building holds a file lock, so when several processes (DDP ranks)
share a cache one builds and the others wait, then read.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..files import DiskFullError, file_lock, sha256
from .io import XrayReadError, read_xray

log = logging.getLogger("chestxray")
CHUNK = 256  # images decoded per batch of work while building (bounds memory)


def default_cache_dir() -> Path:
    return Path(os.environ.get("CHESTXRAY_CACHE", Path.home() / ".cache" / "chestxray"))


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


READER_VERSION = 2  # raised when read_xray decodes a file differently (2: EXIF orientation applied)


def file_key(path: str, size: int) -> str:
    p = Path(path).resolve()
    try:
        st = p.stat()
        sig = f"{p}|{st.st_size}|{st.st_mtime_ns}|{size}|{READER_VERSION}"
    except OSError:
        sig = f"{p}|missing|{size}|{READER_VERSION}"
    return hashlib.sha1(sig.encode()).hexdigest()


_VERIFIED: set[tuple[str, int, int]] = set()  # shards whose checksum this process has checked: (path, size, mtime)


def shard_problem(npy: Path, record: dict) -> str | None:
    """Why a cache shard cannot be used (size or SHA-256 unlike the record written with it), or None.
    Shards from before checksums were recorded pass on their size alone when they have none."""
    st = npy.stat()
    if "bytes" in record and st.st_size != record["bytes"]:
        return f"{st.st_size:,} bytes, {record['bytes']:,} when it was written (truncated)"
    key = (str(npy), st.st_size, st.st_mtime_ns)
    if "sha256" in record and key not in _VERIFIED:
        if sha256(npy) != record["sha256"]:
            return "its SHA-256 differs from the one recorded when it was written (corrupt)"
        _VERIFIED.add(key)
    return None


class ImageStore:
    """A read-only sequence of (side, side) uint8 images spread over memory-mapped shards."""

    def __init__(self, refs: list[tuple[np.ndarray, int]], side: int):
        self.refs = refs
        self.side = side

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, i):
        """One image, or (given a slice) a store of those images."""
        if isinstance(i, slice):
            return ImageStore(self.refs[i], self.side)
        shard, row = self.refs[i]
        return shard[row]


class DecodedCache:
    def __init__(self, root: str | Path | None, side: int):
        self.side = side
        self.dir = Path(root or default_cache_dir()) / "decoded" / str(side)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._shards: dict[str, np.ndarray] = {}

    def _index(self, wanted: set[str]) -> dict[str, tuple[str, int]]:
        """key -> (shard, row) over the shards that pass their size and checksum records (others are removed,
        so their images are decoded again). Only shards holding a `wanted` key are checked (and hashed): a large
        cache costs a one-image prediction nothing; the others are checked when they are wanted."""
        index = {}
        for meta in sorted(self.dir.glob("shard-*.json")):
            name = meta.stem
            npy = self.dir / f"{name}.npy"
            try:
                record = json.loads(meta.read_text())
            except (OSError, ValueError):
                record = None
            if record is not None and npy.exists() and wanted.isdisjoint(record["keys"]):
                continue
            problem = "its key list is unreadable" if record is None else "its image file is missing" if not npy.exists() \
                else shard_problem(npy, record)
            if problem:
                log.warning("decoded-image cache shard %s: %s; removed, its images will be decoded again", npy, problem)
                npy.unlink(missing_ok=True)
                meta.unlink(missing_ok=True)
                continue
            for row, key in enumerate(record["keys"]):
                index[key] = (name, row)
        return index

    def _shard(self, name: str) -> np.ndarray:
        if name not in self._shards:
            self._shards[name] = np.load(self.dir / f"{name}.npy", mmap_mode="r")
        return self._shards[name]

    def _build(self, paths: list[str], keys: list[str], workers: int, desc: str) -> dict[str, XrayReadError]:
        """Decode `paths` into one new shard; return the read errors by key."""
        name = f"shard-{uuid.uuid4().hex[:12]}"
        tmp = self.dir / f".{name}.npy.tmp"
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), self.side, self.side))
        try:  # reserve the blocks now: a full disk is an error here, not a SIGBUS while writing the memory map
            with open(tmp, "r+b") as f:
                os.posix_fallocate(f.fileno(), 0, os.path.getsize(tmp))
        except OSError as e:
            del out
            tmp.unlink(missing_ok=True)
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFullError(f"{self.dir}: no space left for {len(paths)} decoded images "
                                    f"({len(paths) * self.side * self.side / 2 ** 20:.0f} MB); the cached images are unchanged. "
                                    "Free space or give --cache-dir elsewhere") from e
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # filesystems without fallocate: go on
                raise
        errors, ok_keys = {}, []
        log.info("%s: decoding %d images into the cache at %s", desc, len(paths), self.dir)
        bar = tqdm(total=len(paths), desc=desc, leave=False, disable=None)  # no bar when not a terminal
        pool = ProcessPoolExecutor(workers) if workers > 1 and len(paths) >= 64 else None
        try:
            row = 0
            for start in range(0, len(paths), CHUNK):
                jobs = [(p, self.side) for p in paths[start : start + CHUNK]]
                results = pool.map(_decode_or_error, jobs, chunksize=8) if pool else map(_decode_or_error, jobs)
                for key, (arr, err) in zip(keys[start : start + CHUNK], results):
                    bar.update()
                    if err is not None:
                        errors[key] = err
                        continue
                    out[row] = arr
                    ok_keys.append(key)
                    row += 1
        finally:
            bar.close()
            if pool:
                pool.shutdown()
        out.flush()
        del out
        if ok_keys:
            if len(ok_keys) < len(paths):  # unreadable files: keep a trimmed copy
                np.save(self.dir / f".{name}.trim.npy", np.load(tmp, mmap_mode="r")[: len(ok_keys)])
                os.replace(self.dir / f".{name}.trim.npy", tmp)
            os.replace(tmp, self.dir / f"{name}.npy")
            tmp_meta = self.dir / f".{name}.json.tmp"
            shard = self.dir / f"{name}.npy"
            tmp_meta.write_text(json.dumps({"keys": ok_keys, "bytes": shard.stat().st_size, "sha256": sha256(shard)}))
            os.replace(tmp_meta, self.dir / f"{name}.json")  # the shard exists once its key list does
        tmp.unlink(missing_ok=True)
        return errors

    def get(
        self, paths: list[str], skip_bad: bool = False, workers: int | None = None, desc: str = "decoding"
    ) -> tuple[ImageStore, list[int], list[XrayReadError]]:
        """The images of `paths` (decoding those not cached), the indices kept, and the read errors.

        Without `skip_bad` the first unreadable file raises its XrayReadError.
        """
        workers = workers if workers is not None else min(4, os.cpu_count() or 1)
        keys = [file_key(p, self.side) for p in paths]
        with file_lock(self.dir / ".lock"):
            index = self._index(set(keys))
            missing = sorted({k: p for k, p in zip(keys, paths) if k not in index}.items(), key=lambda kp: kp[1])
            errors = {}
            if missing:
                errors = self._build([p for _, p in missing], [k for k, _ in missing], workers, desc)
                index = self._index(set(keys))
        refs, kept, errs = [], [], []
        for i, k in enumerate(keys):
            if k in index:
                name, row = index[k]
                refs.append((self._shard(name), row))
                kept.append(i)
            else:
                err = errors.get(k) or XrayReadError(paths[i], "unreadable (not in the decoded cache)")
                if not skip_bad:
                    raise err
                errs.append(err)
        return ImageStore(refs, self.side), kept, errs


def decode_all(
    paths: list[str], size: int, skip_bad: bool = False, workers: int | None = None, desc: str = "decoding",
    cache_dir: str | Path | None = None,
) -> tuple[ImageStore, list[int], list[XrayReadError]]:
    """Decoded (size, size) images of `paths` via the on-disk cache; see DecodedCache.get."""
    return DecodedCache(cache_dir, size).get(paths, skip_bad, workers, desc)
