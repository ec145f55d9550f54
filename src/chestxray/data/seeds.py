"""Small valid X-ray files in every format the reader takes, and how to break them: for the fuzz test and
benchmarks/fuzz_readers.py."""

from __future__ import annotations

import io
import random
import struct
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


def mutate(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    """(kind of mutation, the mutated bytes): truncated, bit-flipped, overwritten, inserted, garbage, a header
    field set to a large number, or a chunk repeated."""
    d = bytearray(data)
    kind = rng.choice(["truncate", "flip", "overwrite", "insert", "garbage", "header", "repeat"])
    if kind == "truncate":
        d = d[: rng.randrange(len(d))]
    elif kind == "flip":
        for _ in range(rng.randint(1, 16)):
            i = rng.randrange(len(d))
            d[i] ^= 1 << rng.randrange(8)
    elif kind == "overwrite":
        i = rng.randrange(len(d))
        d[i: i + rng.randint(1, 64)] = rng.randbytes(rng.randint(1, 64))
    elif kind == "insert":
        i = rng.randrange(len(d) + 1)
        d[i:i] = rng.randbytes(rng.randint(1, 256))
    elif kind == "garbage":
        d = bytearray(rng.randbytes(rng.randint(0, 4096)))
    elif kind == "header":
        i = rng.randrange(max(1, min(400, len(d) - 4)))
        fmt = rng.choice([">I", "<I", ">H", "<H"])
        big = rng.choice([0, 1, 65535, 50_000] if "H" in fmt else [0, 65535, 100_000, 2 ** 31 - 1, 2 ** 32 - 1])
        packed = struct.pack(fmt, big)
        d[i: i + len(packed)] = packed
    else:  # a chunk repeated: long runs, duplicated markers
        i = rng.randrange(len(d))
        chunk = d[i: i + rng.randint(1, 64)]
        d[i:i] = chunk * rng.randint(2, 50)
    return kind, bytes(d)
