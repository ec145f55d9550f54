import os
import time

import numpy as np
import pytest
from PIL import Image

from chestxray.data.cache import DecodedCache
from chestxray.data.io import XrayReadError


def _write(p, value):
    Image.fromarray(np.full((40, 30), value, np.uint8)).save(p)


def test_decoded_once_and_rebuilt_only_when_changed(tmp_path):
    paths = []
    for i in range(5):
        p = tmp_path / f"{i}.png"
        _write(p, 10 * i)
        paths.append(str(p))
    cache = DecodedCache(tmp_path / "c", 16)
    store, kept, errors = cache.get(paths)
    assert kept == list(range(5)) and not errors
    assert store[3].shape == (16, 16) and store[3][0, 0] == 30
    assert len(list(cache.dir.glob("shard-*.npy"))) == 1
    again, _, _ = DecodedCache(tmp_path / "c", 16).get(paths)
    assert len(list(cache.dir.glob("shard-*.npy"))) == 1  # nothing decoded again
    assert isinstance(again.refs[0][0], np.memmap)
    time.sleep(0.01)
    _write(tmp_path / "2.png", 200)
    os.utime(tmp_path / "2.png", ns=(time.time_ns(), time.time_ns() + 10**9))
    changed, _, _ = DecodedCache(tmp_path / "c", 16).get(paths)
    shards = list(cache.dir.glob("shard-*.npy"))
    assert len(shards) == 2 and np.load(sorted(shards, key=os.path.getmtime)[-1]).shape[0] == 1  # one image
    assert changed[2][0, 0] == 200 and changed[1][0, 0] == 10
    other, _, _ = DecodedCache(tmp_path / "c", 24).get(paths)  # another size: its own store
    assert other[0].shape == (24, 24)


def test_unreadable_files(tmp_path):
    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    _write(good, 5)
    bad.write_bytes(b"nope")
    cache = DecodedCache(tmp_path / "c", 16)
    with pytest.raises(XrayReadError, match="bad.png"):
        cache.get([str(good), str(bad)])
    store, kept, errors = cache.get([str(bad), str(good)], skip_bad=True)
    assert kept == [1] and len(store) == 1 and errors[0].path == str(bad)


def test_only_the_shards_a_request_needs_are_checked(tmp_path, monkeypatch):
    """A corrupt shard that holds none of the requested images is neither hashed nor removed; asked for, it is
    found, removed and its images decoded again."""
    import chestxray.data.cache as cache_mod

    first, second = [], []
    for i in range(3):
        for group, name in ((first, "a"), (second, "b")):
            p = tmp_path / f"{name}{i}.png"
            _write(p, 10 * i + (100 if name == "b" else 0))
            group.append(str(p))
    DecodedCache(tmp_path / "c", 16).get(first)
    DecodedCache(tmp_path / "c", 16).get(second)
    shards = sorted((tmp_path / "c" / "decoded" / "16").glob("shard-*.npy"), key=os.path.getmtime)
    corrupt = shards[0]  # the first request's images
    data = bytearray(corrupt.read_bytes())
    data[-1] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    cache_mod._VERIFIED.clear()
    hashed = []
    real = cache_mod.sha256
    monkeypatch.setattr(cache_mod, "sha256", lambda p: hashed.append(p.name) or real(p))
    store, _, _ = DecodedCache(tmp_path / "c", 16).get(second)
    assert hashed == [shards[1].name] and corrupt.exists()  # only the shard holding the wanted images
    assert store[1][0, 0] == 110
    store, _, _ = DecodedCache(tmp_path / "c", 16).get(first)
    assert not corrupt.exists() and store[2][0, 0] == 20  # found corrupt when wanted, decoded again
