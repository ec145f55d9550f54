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
