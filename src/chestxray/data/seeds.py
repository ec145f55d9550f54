"""Small valid X-ray files in every format the reader takes: seeds for the fuzz test and the fuzz benchmark."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image


def _dicom(arr: np.ndarray, rle: bool = False, monochrome1: bool = False) -> bytes:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, RLELossless

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage
    meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("seed.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.PixelData = arr.astype(np.uint16).tobytes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if rle:
            ds.compress(RLELossless)
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def seed_files(side: int = 48) -> dict[str, bytes]:
    """name (with its usual suffix) -> bytes of a small valid image: a gradient with a disc, like a phantom."""
    y, x = np.mgrid[:side, :side]
    disc = ((x - side / 2) ** 2 + (y - side / 2) ** 2 < (side / 3) ** 2)
    img8 = (x * 255 // (side - 1)).astype(np.uint8) // 2 + disc.astype(np.uint8) * 100
    img12 = img8.astype(np.uint16) * 16
    out = {}
    for name, im, fmt in (("seed.png", Image.fromarray(img8), "PNG"), ("seed16.png", Image.fromarray((img12 * 16).astype(np.uint16)), "PNG"),
                          ("seed.jpg", Image.fromarray(img8), "JPEG"), ("seed.tif", Image.fromarray(img8), "TIFF"),
                          ("seedrgb.png", Image.fromarray(np.stack([img8] * 3, -1)), "PNG"), ("seed.bmp", Image.fromarray(img8), "BMP")):
        buf = io.BytesIO()
        im.save(buf, format=fmt)
        out[name] = buf.getvalue()
    out["seed.dcm"] = _dicom(img12)
    out["seed_rle.dcm"] = _dicom(img12, rle=True)
    out["seed_mono1.dcm"] = _dicom(img12, monochrome1=True)
    return out
