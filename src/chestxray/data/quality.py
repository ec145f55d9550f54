"""Is a decoded image a radiograph at all, as far as its grey levels tell: a blank, constant or nearly constant
image (an all-black or all-white file, a failed export, a screenshot of an empty viewer) gets no diagnosis.

The figure is the spread of the middle 98% of the pixels (1st to 99th percentile) on the stored image. A chest
film spans most of the grey range; on the shared sets (benchmarks/image_quality.py) the smallest spread of any
of ~8,400 real films is far above QUALITY_MIN_SPREAD, so the flag does not fire on them.
"""

from __future__ import annotations

import numpy as np

QUALITY_MIN_SPREAD = 20  # grey levels (of 255) between the 1st and the 99th percentile; below: no label
OK = "ok"


def spread(image: np.ndarray) -> int:
    """Grey levels between the 1st and the 99th percentile of a uint8 image."""
    lo, hi = np.percentile(image, (1, 99))
    return int(round(float(hi) - float(lo)))


def image_quality(image: np.ndarray) -> str:
    """'ok', or why the image gets no label (the reason names the measured figure)."""
    s = spread(image)
    if s == 0:
        return f"blank: {float(np.mean(image)):.0f} of 255 almost everywhere, no radiograph to read"
    if s < QUALITY_MIN_SPREAD:
        return (f"almost constant: 98% of its pixels within {s} grey levels (a radiograph spans at least "
                f"{QUALITY_MIN_SPREAD}); no radiograph to read")
    return OK


def quality_of(images) -> np.ndarray:
    """`image_quality` of each image of a sequence (a decoded split's ImageStore, or a list of arrays)."""
    return np.array([image_quality(np.asarray(images[i])) for i in range(len(images))], dtype=object)
