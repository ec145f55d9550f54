"""Read any chest X-ray file into a uint8 grayscale array, or fail naming the file and the reason."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import ChestXrayError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom"}
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


def is_dicom(path: Path) -> bool:
    if path.suffix.lower() in {".dcm", ".dicom"}:
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


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


def _read_dicom(path: Path) -> np.ndarray:
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(path)
        _check_size(path, int(getattr(ds, "Columns", 0) or 0), int(getattr(ds, "Rows", 0) or 0),
                    int(getattr(ds, "NumberOfFrames", 1) or 1))
        arr = ds.pixel_array
    except XrayReadError:
        raise
    except Exception as e:  # pydicom raises many types for bad files
        raise XrayReadError(path, f"cannot decode DICOM: {e}") from e
    if arr.ndim == 3 and getattr(ds, "SamplesPerPixel", 1) == 1:
        arr = arr[0]  # multi-frame: the first frame
    if arr.ndim == 3:
        arr = arr.astype(np.float64).mean(axis=-1)
    else:
        arr = apply_modality_lut(arr, ds)
        arr = apply_voi_lut(arr, ds)  # window centre/width or VOI LUT when present
    out = to_uint8(np.asarray(arr))
    if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        out = 255 - out  # MONOCHROME1: low values are white
    return out


def _read_raster(path: Path) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            # Pillow warns above its own limit and raises above twice that; ours is checked first
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        n = re.search(r"\((\d+) pixels\)", str(e))
        size = f"of {int(n.group(1)):,} pixels " if n else ""
        raise XrayReadError(path, f"image {size}is larger than the {_LIMIT} limit (from its header; not decoded)") from e
    except UnidentifiedImageError as e:
        raise XrayReadError(path, "not a recognised image format (corrupt or not an image)") from e
    except Exception as e:  # Pillow's plugins raise many types on malformed headers
        raise XrayReadError(path, f"cannot read image header: {e}") from e
    try:
        with im:
            _check_size(path, *im.size)  # only the first frame of a multi-page file is decoded
            im.load()
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
    arr = _read_dicom(path) if is_dicom(path) else _read_raster(path)
    if arr.ndim != 2 or min(arr.shape) < 8:
        raise XrayReadError(path, f"unexpected image shape {arr.shape}")
    return np.ascontiguousarray(arr)
