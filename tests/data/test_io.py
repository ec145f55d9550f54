

import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from chestxray.data.io import XrayReadError, read_xray
from tests.helpers import invoke, png_header_only, write_dicom


def gradient(h=40, w=50, hi=255, dtype=np.uint8):
    return (np.linspace(0, hi, w)[None, :].repeat(h, 0)).astype(dtype)


def test_8bit_png_roundtrip(tmp_path):
    a = gradient()
    Image.fromarray(a).save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_xray(tmp_path / "a.png"), a)


def test_16bit_png_scaled_to_full_range(tmp_path):
    a = gradient(hi=4000, dtype=np.uint16)
    Image.fromarray(a).save(tmp_path / "a16.png")
    assert Image.open(tmp_path / "a16.png").mode.startswith("I")
    out = read_xray(tmp_path / "a16.png")
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
    assert np.all(np.diff(out[0].astype(int)) >= 0)  # order kept


def test_rgba_and_rgb_become_grayscale(tmp_path):
    g = gradient()
    rgba = np.dstack([g, g, g, np.full_like(g, 255)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    Image.fromarray(rgba[..., :3], "RGB").save(tmp_path / "b.jpg", quality=95)
    np.testing.assert_array_equal(read_xray(tmp_path / "a.png"), g)
    assert np.abs(read_xray(tmp_path / "b.jpg").astype(int) - g).max() <= 6


def test_tiff(tmp_path):
    a = gradient()
    Image.fromarray(a).save(tmp_path / "a.tif")
    np.testing.assert_array_equal(read_xray(tmp_path / "a.tif"), a)


def test_dicom_monochrome2_and_monochrome1_inverted(tmp_path):
    a = gradient(hi=1000, dtype=np.uint16)
    write_dicom(tmp_path / "m2.dcm", a, "MONOCHROME2")
    write_dicom(tmp_path / "m1.dcm", a, "MONOCHROME1")
    m2, m1 = read_xray(tmp_path / "m2.dcm"), read_xray(tmp_path / "m1.dcm")
    assert m2[0, 0] == 0 and m2[0, -1] == 255
    np.testing.assert_array_equal(m1, 255 - m2)


def test_dicom_window_applied(tmp_path):
    a = gradient(hi=1000, dtype=np.uint16)
    write_dicom(tmp_path / "w.dcm", a, window=(500, 200))  # shows 400..600 only
    out = read_xray(tmp_path / "w.dcm")
    row = out[0]
    cols = np.linspace(0, 1000, a.shape[1])
    assert row[cols < 390].max() == 0 and row[cols > 610].min() == 255
    assert 0 < row[np.argmin(np.abs(cols - 500))] < 255


def test_dicom_without_suffix_detected(tmp_path):
    write_dicom(tmp_path / "noext", gradient(hi=1000, dtype=np.uint16))
    assert read_xray(tmp_path / "noext").max() == 255


@pytest.mark.parametrize(
    "content,reason",
    [(b"", "empty file"), (b"this is not an image at all", "not a recognised image"), (None, "file not found")],
)
def test_bad_files_name_the_file_and_reason(tmp_path, content, reason):
    p = tmp_path / "bad.png"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(XrayReadError) as e:
        read_xray(p)
    assert str(p) in str(e.value) and reason in str(e.value)


def test_truncated_png(tmp_path):
    p = tmp_path / "trunc.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200), dtype=np.uint8)).save(p)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(XrayReadError, match="trunc.png"):
        read_xray(p)


def test_corrupt_dicom(tmp_path):
    p = tmp_path / "bad.dcm"
    p.write_bytes(b"\0" * 128 + b"DICM" + b"garbage" * 10)
    with pytest.raises(XrayReadError, match="bad.dcm.*DICOM"):
        read_xray(p)


def test_exif_orientation_is_applied(tmp_path):
    """A photo of a film stored sideways with EXIF orientation 6 reads as its upright copy."""
    upright = np.zeros((40, 60), np.uint8)
    upright[:10, :] = 255  # a bright band at the top
    Image.fromarray(upright).save(tmp_path / "upright.jpg", quality=95)
    stored = np.rot90(upright, k=1)  # orientation 6: the viewer turns it 90 degrees clockwise to show it upright
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.ascontiguousarray(stored)).save(tmp_path / "sideways.jpg", quality=95, exif=exif)
    a, b = read_xray(tmp_path / "upright.jpg"), read_xray(tmp_path / "sideways.jpg")
    assert a.shape == b.shape == (40, 60)
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 3
    assert b[:10].mean() > 200 and b[-10:].mean() < 50


def test_huge_png_header_is_a_read_error(tmp_path):
    from chestxray.data.io import XrayReadError, read_xray

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header_only(20000, 20000))
    assert bomb.stat().st_size == 45
    with pytest.raises(XrayReadError, match=r"bomb\.png: image of 400,000,000 pixels is larger than the 64,000,000-pixel limit"):
        read_xray(bomb)
    mid = tmp_path / "mid.png"
    mid.write_bytes(png_header_only(9000, 9000))  # above our limit, below Pillow's error threshold
    with pytest.raises(XrayReadError, match=r"mid\.png: image of 9000 x 9000 pixels is larger"):
        read_xray(mid)


def test_limit_is_checked_before_decoding(tmp_path, monkeypatch):
    from chestxray.data import io
    from tests.helpers import write_dicom

    Image.fromarray(np.zeros((100, 120), np.uint8)).save(tmp_path / "a.png")
    write_dicom(tmp_path / "a.dcm", np.zeros((100, 120), np.uint16))
    monkeypatch.setattr(io, "MAX_PIXELS", 100 * 120 - 1)
    for name in ("a.png", "a.dcm"):
        with pytest.raises(io.XrayReadError, match=f"{name}: image of 120 x 100 pixels is larger"):
            io.read_xray(tmp_path / name)
    monkeypatch.setattr(io, "MAX_PIXELS", 100 * 120)
    assert io.read_xray(tmp_path / "a.png").shape == (100, 120)


def test_huge_image_in_predict_and_data_check(relative_runs, tiny_data, tmp_path):
    _, runs = relative_runs
    folder = tmp_path / "imgs"
    folder.mkdir()
    shutil.copy(tiny_data / "test" / "covid" / next(p.name for p in (tiny_data / "test" / "covid").iterdir()), folder / "ok.png")
    (folder / "bomb.png").write_bytes(png_header_only(20000, 20000))
    res = invoke("predict", runs[0], folder, "--out", tmp_path / "p.csv")
    assert res.exit_code == 2 and "bomb.png" in res.output and "Traceback" not in res.output
    res = invoke("predict", runs[0], folder, "--out", tmp_path / "p.csv", "--skip-bad")
    assert res.exit_code == 0, res.output
    assert "skipped:" in res.output and "bomb.png" in res.output and len(pd.read_csv(tmp_path / "p.csv")) == 1
    data = tmp_path / "d"
    shutil.copytree(tiny_data / "train", data / "train")
    (data / "train" / "normal" / "bomb.png").write_bytes(png_header_only(20000, 20000))
    res = invoke("data", "check", data)
    assert res.exit_code == 1 and "UNREADABLE" in res.output and "bomb.png: image of 400,000,000 pixels" in res.output
