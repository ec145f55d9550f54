"""What several test modules use: the CLI runner, small file writers, and the flags of the runs tests train."""

from __future__ import annotations

import csv
import struct
import zlib
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from chestxray.cli import app

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cxr-nih-cohen"
runner = CliRunner()
# the runs tests train: tiny (64 px) so that they stay fast
HEAD = ["--img-size", "64", "--batch-size", "16", "--stages", "head", "--epochs-head", "2", "--bootstrap", "0", "--quiet"]
FAST = ["--img-size", "64", "--batch-size", "16", "--epochs-head", "2", "--epochs-finetune", "1", "--quiet"]
TINY_RUN = ["--img-size", "64", "--batch-size", "16", "--epochs-head", "2", "--epochs-finetune", "1", "--calibrate",
            "--bootstrap", "0", "--quiet"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def png_header_only(width: int, height: int) -> bytes:
    """A 45-byte PNG: signature, an IHDR claiming width x height, IEND, and no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + chunk(b"IEND", b"")


def write_manifest(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def manifest_rows(tiny_data: Path) -> list[dict]:
    rows = list(csv.DictReader(open(tiny_data / "manifest.csv")))
    for r in rows:
        r["path"] = str(tiny_data / r["path"])
    return rows


def write_dicom(path, arr, photometric="MONOCHROME2", window=None, slope=1, intercept=0):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = arr.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
