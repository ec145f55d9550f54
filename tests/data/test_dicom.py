"""Every DICOM a chest radiograph comes in: pydicom's bundled test files, read from the installed wheel.

Never pydicom.data.get_testdata_file for a name: for a file that is not bundled it downloads. The files
are listed from the package folder, so nothing here reaches the network.
"""

import os
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
import pytest

from chestxray.data.io import XrayReadError, read_xray, to_uint8

FILES = Path(os.path.dirname(pydicom.data.__file__)) / "test_files"
pytestmark = pytest.mark.skipif(not (FILES / "MR_small.dcm").exists(), reason="pydicom's bundled test files are missing")

# lossless encodings of the same pixels decode to the same image
SAME = {
    "MR_small.dcm": ["MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm", "MR_small_bigendian.dcm",
                     "MR_small_expb.dcm", "MR_small_implicit.dcm", "MR_small_padded.dcm"],
    "SC_rgb_rle.dcm": ["SC_rgb_jpeg_gdcm.dcm", "SC_rgb_rle_16bit.dcm", "SC_rgb_rle_32bit.dcm", "SC_rgb_gdcm_KY.dcm"],
    "liver_1frame.dcm": ["liver_expb_1frame.dcm"],
    "rtdose_1frame.dcm": ["rtdose_expb_1frame.dcm", "rtdose_rle_1frame.dcm"],
    "JPGExtended.dcm": ["JPEG-lossy.dcm"],  # the same 12-bit JPEG Extended stream, its header fixed in the first
}
# lossy encodings of SC_rgb_rle's pixels: close
CLOSE = {"SC_rgb_dcmtk_+eb+cr.dcm": 2, "SC_rgb_jpeg_dcmtk.dcm": 3, "SC_rgb_jls_lossy_line.dcm": 3,
         "SC_rgb_jls_lossy_sample.dcm": 3, "SC_ybr_full_422_uncompressed.dcm": 3}
# what cannot be read as one radiograph, and the reason given
REFUSED = {
    "SC_rgb_rle_2frame.dcm": "multi-frame", "SC_rgb_rle_16bit_2frame.dcm": "multi-frame", "SC_rgb_rle_32bit_2frame.dcm": "multi-frame",
    "rtdose.dcm": "multi-frame", "examples_ybr_color.dcm": "multi-frame", "rtdose_rle.dcm": "multi-frame",
    "MR_truncated.dcm": "less than expected", "JPEG2000-embedded-sequence-delimiter.dcm": "cannot decode DICOM pixel data",
    "ExplVR_LitEndNoMeta.dcm": "without pixel data", "ExplVR_BigEndNoMeta.dcm": "without pixel data",
    "waveform_ecg.dcm": "without pixel data", "rtplan.dcm": "without pixel data", "rtplan_truncated.dcm": "without pixel data",
    "test-SR.dcm": "without pixel data", "reportsi.dcm": "without pixel data", "UN_sequence.dcm": "without pixel data",
    "SC_rgb_small_odd.dcm": "unexpected image shape", "SC_rgb_small_odd_jpeg.dcm": "unexpected image shape",
    "SC_rgb_small_odd_big_endian.dcm": "unexpected image shape",
    "meta_missing_tsyntax.dcm": "Missing required element", "nested_priv_SQ.dcm": "Missing required element",
    "badVR.dcm": "cannot decode DICOM",
}


def reference(name: str) -> np.ndarray:
    """pydicom's own decode of the file, through the same documented steps as the reader (independent of it)."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(FILES / name)
        arr = ds.pixel_array
    if arr.ndim == 3:
        arr = arr[..., :3].astype(np.float64).mean(axis=-1)
    else:
        arr = apply_voi_lut(apply_modality_lut(arr, ds), ds)
    out = to_uint8(np.asarray(arr))
    return 255 - out if ds.PhotometricInterpretation == "MONOCHROME1" else out


def single_frame_images() -> list[str]:
    out = []
    for f in sorted(FILES.glob("*.dcm")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ds = pydicom.dcmread(f)
                single = "PixelData" in ds and int(getattr(ds, "NumberOfFrames", 1) or 1) == 1
            except Exception:
                continue
        if single and f.name not in REFUSED:
            out.append(f.name)
    return out


@pytest.mark.parametrize("name", single_frame_images())
def test_every_single_frame_image_decodes_as_pydicom_does(name):
    """The reader's image equals pydicom's reference decode of the same file (where pydicom's plugins decode it)."""
    got = read_xray(FILES / name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(FILES / name)
    assert got.shape == (ds.Rows, ds.Columns) and got.dtype == np.uint8
    try:
        ref = reference(name)
    except Exception:  # pydicom has no plugin for it (12-bit JPEG Extended): checked against its reference values below
        assert str(ds.file_meta.TransferSyntaxUID) == "1.2.840.10008.1.2.4.51", name
        return
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("first,others", SAME.items())
def test_lossless_encodings_decode_to_the_same_image(first, others):
    a = read_xray(FILES / first)
    for other in others:
        np.testing.assert_array_equal(read_xray(FILES / other), a, err_msg=other)


@pytest.mark.parametrize("name,tolerance", CLOSE.items())
def test_lossy_encodings_are_close(name, tolerance):
    diff = np.abs(read_xray(FILES / name).astype(int) - read_xray(FILES / "SC_rgb_rle.dcm").astype(int))
    assert diff.max() <= tolerance


def test_jpeg_extended_12_bit_matches_pydicoms_reference_values():
    """pydicom's pixel reference for JPGExtended.dcm (JPGE_16_12_1_0_1F_M2): arr[420, 140] = 244, arr[230, 120] = 95."""
    from chestxray.data.io import _parse_dicom, _pixels

    for name in ("JPGExtended.dcm", "JPEG-lossy.dcm"):
        raw = _pixels(FILES / name, _parse_dicom(FILES / name))
        assert raw.shape == (1024, 256) and raw[420, 140] == 244 and raw[230, 120] == 95


@pytest.mark.parametrize("name,reason", REFUSED.items())
def test_the_rest_get_a_clear_error(name, reason, capfd):
    if not (FILES / name).exists():
        pytest.skip(f"{name} not bundled with this pydicom")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no raw warning escapes the reader
        with pytest.raises(XrayReadError) as e:
            read_xray(FILES / name)
    assert name in str(e.value) and reason in str(e.value)
    out, err = capfd.readouterr()
    assert not out and not err  # not even the C decoders' own messages


def test_a_file_without_preamble_and_file_meta(tmp_path):
    """Written without the 128-byte preamble, 'DICM' and File Meta: read with force and an inferred transfer syntax."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(FILES / "MR_small.dcm")
        bare = tmp_path / "bare"  # no suffix either: the raster readers refuse it first
        ds.preamble = None
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.save_as(bare, enforce_file_format=False, implicit_vr=False, little_endian=True)
    assert bare.read_bytes()[128:132] != b"DICM"
    np.testing.assert_array_equal(read_xray(bare), read_xray(FILES / "MR_small.dcm"))


def test_warnings_of_a_readable_but_sloppy_file_stay_quiet(capfd):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_xray(FILES / "SC_rgb_jpeg_dcmd.dcm")  # its header says explicit VR and is implicit: pydicom warns
    out, err = capfd.readouterr()
    assert not out and not err
