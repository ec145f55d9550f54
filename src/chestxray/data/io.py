"""Read any chest X-ray file into a uint8 grayscale array, or fail naming the file and the reason."""

from __future__ import annotations

import os
import re
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ChestXrayError

# The one list of readable formats, for every command (train, data check, predict, evaluate...): a file with one
# of these suffixes is an image; a file with another suffix or none is one where its first bytes say so
# (`is_image_file`), as DICOM files from a PACS often have no extension.
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".dcm", ".dicom"}
SIGNATURES = ((b"\x89PNG\r\n\x1a\n", ".png"), (b"\xff\xd8\xff", ".jpg"), (b"II*\x00", ".tif"), (b"MM\x00*", ".tif"),
              (b"BM", ".bmp"))


def sniff(head: bytes) -> str | None:
    """The suffix of the image format a file's first 132 bytes are in, or None."""
    if len(head) >= 132 and head[128:132] == b"DICM":
        return ".dcm"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return ".webp"
    for magic, suffix in SIGNATURES:
        if head.startswith(magic):
            return suffix
    return None
# The largest image decoded, checked from the header before any pixel is read. Chest radiographs are at
# most about 4,300 x 4,300 (18.5 Mpx); anything above this is a mistake or a decompression bomb.
MAX_PIXELS = 64_000_000
_LIMIT = f"{MAX_PIXELS:,}-pixel"


class XrayReadError(ChestXrayError):
    """An image file that cannot be read as an X-ray."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def _head(path: Path) -> bytes:
    """The first 132 bytes of `path` (as far as a DICOM file's magic); empty where it cannot be read."""
    try:
        with open(path, "rb") as f:
            return f.read(132)
    except OSError:
        return b""


def is_dicom(path: Path) -> bool:
    if path.suffix.lower() in {".dcm", ".dicom"}:
        return True
    head = _head(path)
    return len(head) == 132 and head[128:132] == b"DICM"


def is_image_file(path: str | Path) -> bool:
    """Is `path` a file to read as an image: a known suffix, or (any other suffix) a PNG, JPEG, TIFF, BMP,
    WebP or DICOM header? Hidden files (`.DS_Store`, `._name`) never are."""
    path = Path(path)
    if path.name.startswith(".") or not path.is_file():
        return False
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return True
    return sniff(_head(path)) is not None


def list_images(folder: str | Path) -> list[Path]:
    """Every image file under `folder` (recursively, sorted), by `is_image_file`."""
    return sorted(p for p in Path(folder).rglob("*") if is_image_file(p))


def to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale any numeric array to the full uint8 range (min-max), keeping uint8 input as is."""
    if arr.dtype == np.uint8:
        return arr
    arr = arr.astype(np.float64)
    lo, hi = float(np.min(arr)), float(np.max(arr))
    if not np.isfinite(lo) or not np.isfinite(hi):
        arr = np.nan_to_num(arr)
        lo, hi = float(np.min(arr)), float(np.max(arr))
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    return np.round((arr - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _check_size(path: Path, width: int, height: int, frames: int = 1) -> None:
    if width * height * max(1, frames) > MAX_PIXELS:
        raise XrayReadError(
            path, f"image of {width} x {height} pixels{f' x {frames} frames' if frames > 1 else ''} is larger than "
            f"the {_LIMIT} limit (from its header; not decoded)"
        )


# Compressed pixel data: pydicom decodes through python-gdcm (JPEG Baseline, JPEG Lossless, JPEG-LS,
# JPEG 2000; BSD-licensed, one wheel) and its own RLE decoder. 12-bit JPEG Extended, which pydicom does
# not hand to GDCM, is decoded by imagecodecs (libjpeg-turbo, BSD). pylibjpeg's libjpeg plugin would cover
# the JPEG family too, but it is GPL-3.0, which this Apache-2.0 project does not take as a dependency.
JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
_quiet = False


def _quiet_decoders() -> None:
    """Keep pydicom's and GDCM's own messages off the terminal: a bad file is reported once, by us."""
    global _quiet
    if _quiet:
        return
    import logging

    logging.getLogger("pydicom").setLevel(logging.CRITICAL)  # it logs decode failures with tracebacks; we raise them
    try:
        import gdcm

        gdcm.Trace.WarningOff()
        gdcm.Trace.ErrorOff()
        gdcm.Trace.DebugOff()
    except ImportError:
        pass
    _quiet = True


@contextmanager
def _native_stderr_silenced(active: bool = True):
    """The C decoders (OpenJPEG inside GDCM) print to file descriptor 2 themselves; point it at /dev/null
    while they run, so that a bad file is reported once, by us."""
    if not active:
        yield
        return
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    with open(os.devnull, "wb") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _parse_dicom(path: Path):
    """The dataset at `path`; files without the 128-byte preamble and 'DICM' are read with force=True, and
    a missing Transfer Syntax UID is inferred from how the file parsed."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError:
        ds = pydicom.dcmread(path, force=True)
        if not len(ds):
            raise XrayReadError(path, "not DICOM: no preamble and no data elements") from None
    meta = ds.file_meta
    if "TransferSyntaxUID" not in meta:
        implicit = getattr(ds, "original_encoding", (None, None))[0]
        little = getattr(ds, "original_encoding", (None, True))[1]
        meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else
                                  ExplicitVRLittleEndian if little is not False else ExplicitVRBigEndian)
    return ds


def _pixels(path: Path, ds) -> np.ndarray:
    """The stored pixel values of a single-frame dataset (after decompression, before any LUT)."""
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise XrayReadError(path, "DICOM without pixel data (not an image: a report, a DICOMDIR or a structured document)")
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        raise XrayReadError(path, f"multi-frame DICOM ({frames} frames): expected a single radiograph")
    _check_size(path, int(getattr(ds, "Columns", 0) or 0), int(getattr(ds, "Rows", 0) or 0))
    syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
    try:
        with _native_stderr_silenced(ds.file_meta.TransferSyntaxUID.is_compressed):
            return ds.pixel_array
    except Exception as e:  # pydicom raises many types for bad files
        if syntax == JPEG_EXTENDED and getattr(ds, "SamplesPerPixel", 1) == 1:
            return _jpeg_extended(path, ds)
        raise XrayReadError(path, f"cannot decode DICOM pixel data ({getattr(ds.file_meta.get('TransferSyntaxUID'), 'name', syntax or 'unknown transfer syntax')}): "
                                  f"{str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__}") from e


def _jpeg_extended(path: Path, ds) -> np.ndarray:
    import imagecodecs
    from pydicom.encaps import generate_frames

    try:
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
        arr = imagecodecs.jpeg_decode(frame)
    except Exception as e:
        raise XrayReadError(path, f"cannot decode DICOM JPEG Extended pixel data: {e}") from e
    if arr.shape != (int(ds.Rows), int(ds.Columns)):
        raise XrayReadError(path, f"JPEG Extended frame is {arr.shape}, the header says {ds.Rows} x {ds.Columns}")
    return arr


def _read_dicom(path: Path) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    _quiet_decoders()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns on every non-conformant element; one error is enough
        try:
            ds = _parse_dicom(path)
            arr = _pixels(path, ds)
            # elements are parsed lazily: a malformed one raises here, not at dcmread
            photometric = str(getattr(ds, "PhotometricInterpretation", "")).upper()
            if arr.ndim == 3:  # colour: RGB (pydicom converts YBR to RGB) or a palette
                arr = arr[..., :3].astype(np.float64).mean(axis=-1)
            else:
                arr = apply_modality_lut(arr, ds)
                arr = apply_voi_lut(arr, ds)  # window centre/width or VOI LUT when present
            out = to_uint8(np.asarray(arr))
        except XrayReadError:
            raise
        except Exception as e:  # pydicom raises many types for bad files
            raise XrayReadError(path, f"cannot decode DICOM: {type(e).__name__}: {e}") from e
    if photometric == "MONOCHROME1":
        out = 255 - out  # MONOCHROME1: low values are white
    return out


def _parses_as_dicom_image(path: Path) -> bool:
    """Does a file that no raster format recognises parse as a DICOM dataset with image rows and pixel data?"""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _quiet_decoders()
            ds = _parse_dicom(path)
        return "Rows" in ds and any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))
    except Exception:
        return False


def _read_raster(path: Path) -> np.ndarray:
    with open(path, "rb") as f:
        tiff = f.read(4) in (b"II*\x00", b"MM\x00*")  # libtiff prints its complaints itself: silenced below
    try:
        with warnings.catch_warnings(), _native_stderr_silenced(tiff):
            # Pillow warns above its own limit and raises above twice that; ours is checked first
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        n = re.search(r"\((\d+) pixels\)", str(e))
        size = f"of {int(n.group(1)):,} pixels " if n else ""
        raise XrayReadError(path, f"image {size}is larger than the {_LIMIT} limit (from its header; not decoded)") from e
    except UnidentifiedImageError as e:
        if _parses_as_dicom_image(path):  # DICOM without the preamble and 'DICM'
            return _read_dicom(path)
        raise XrayReadError(path, "not a recognised image format (corrupt or not an image)") from e
    except Exception as e:  # Pillow's plugins raise many types on malformed headers
        raise XrayReadError(path, f"cannot read image header: {e}") from e
    try:
        with im:
            _check_size(path, *im.size)  # only the first frame of a multi-page file is decoded
            with _native_stderr_silenced(tiff):
                im.load()
            im = ImageOps.exif_transpose(im)  # a photo of a film stored sideways, with EXIF orientation 6 or 8
            if im.mode in ("RGB", "RGBA", "P", "LA", "PA", "CMYK", "YCbCr", "1", "L"):
                return np.asarray(im.convert("L"), dtype=np.uint8)
            # 16-bit and 32-bit integer or float single-channel images
            arr = np.asarray(im)
    except XrayReadError:
        raise
    except Exception as e:  # truncated or corrupt pixel data: OSError, SyntaxError, ValueError, ...
        raise XrayReadError(path, f"cannot decode image: {e}") from e
    if arr.ndim == 3:
        arr = arr[..., :3].astype(np.float64).mean(axis=-1)
    return to_uint8(arr)


def read_xray(path: str | Path) -> np.ndarray:
    """Return the image at `path` as a 2-D uint8 array (0 = black).

    Handles 8/16-bit PNG, JPEG, TIFF, RGB/RGBA (converted to grayscale) and DICOM
    (modality and VOI LUT applied, MONOCHROME1 inverted). Raises XrayReadError otherwise.
    """
    path = Path(path)
    if not path.exists():
        raise XrayReadError(path, "file not found")
    if path.is_dir():
        raise XrayReadError(path, "is a directory, not an image")
    if path.stat().st_size == 0:
        raise XrayReadError(path, "empty file (0 bytes)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's and pydicom's complaints about a file: it reads, or it raises one error
        arr = _read_dicom(path) if is_dicom(path) else _read_raster(path)
    if arr.ndim != 2 or min(arr.shape) < 8:
        raise XrayReadError(path, f"unexpected image shape {arr.shape}")
    return np.ascontiguousarray(arr)
