"""Property-based tests of the X-ray reader (Hypothesis): truncated, bit-flipped and garbage bytes built from
valid PNG, JPEG, TIFF, BMP and DICOM seeds. Only XrayReadError escapes; what decodes is a sane image.
The longer, time-limited and memory-limited run is benchmarks/fuzz_readers.py."""

import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chestxray.data.io import MAX_PIXELS, XrayReadError, read_xray
from chestxray.data.seeds import seed_files

SEEDS = seed_files()
NAMES = sorted(SEEDS)


@st.composite
def mutated(draw):
    name = draw(st.sampled_from(NAMES))
    data = bytearray(SEEDS[name])
    kind = draw(st.sampled_from(["truncate", "flip", "overwrite", "insert", "garbage", "header"]))
    if kind == "truncate":
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif kind == "flip":
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
    elif kind == "overwrite":
        i = draw(st.integers(0, len(data) - 1))
        chunk = draw(st.binary(min_size=1, max_size=32))
        data[i: i + len(chunk)] = chunk
    elif kind == "insert":
        i = draw(st.integers(0, len(data)))
        data[i:i] = draw(st.binary(min_size=1, max_size=64))
    elif kind == "garbage":
        data = bytearray(draw(st.binary(min_size=0, max_size=2048)))
    else:  # a header field set to a large number: dimensions, lengths, counts (the first 400 bytes hold them)
        i = draw(st.integers(0, min(400, len(data) - 4)))
        fmt = draw(st.sampled_from([">I", "<I", "<H2x"]))
        big = [0, 65535, 50_000] if fmt == "<H2x" else [0, 65535, 100_000, 2 ** 31 - 1, 2 ** 32 - 1]
        data[i: i + 4] = struct.pack(fmt, draw(st.sampled_from(big)))
    return name, bytes(data)


@pytest.mark.slow
@settings(max_examples=1000, deadline=5000, derandomize=True, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=mutated())
def test_only_the_readers_error_escapes(case, tmp_path):
    name, data = case
    path = tmp_path / name
    path.write_bytes(data)
    try:
        arr = read_xray(path)
    except XrayReadError as e:
        assert str(path) in str(e)
        return
    assert arr.ndim == 2 and arr.dtype == np.uint8 and min(arr.shape) >= 8 and arr.size <= MAX_PIXELS


@pytest.mark.parametrize("name", NAMES)
def test_every_seed_is_a_valid_image(name, tmp_path):
    (tmp_path / name).write_bytes(SEEDS[name])
    arr = read_xray(tmp_path / name)
    assert arr.shape == (48, 48) and arr.max() > arr.min()


@pytest.mark.parametrize("changes", [[(94, 21)], [(54, 3)], [(54, 3), (80, 1)]], ids=["samples-per-pixel", "fax3", "strip-read"])
def test_decoders_print_nothing_themselves(tmp_path, capfd, changes):
    """libtiff prints its complaints on stderr by itself (these byte changes to the TIFF seed, found by the fuzz
    benchmark, made it print); a bad file must be one error, from the reader, and nothing else."""
    data = bytearray(SEEDS["seed.tif"])
    for i, v in changes:
        data[i] = v
    (tmp_path / "x.tif").write_bytes(bytes(data))
    try:
        read_xray(tmp_path / "x.tif")
    except XrayReadError:
        pass
    out, err = capfd.readouterr()
    assert not out and not err, err[:500]
