"""The image-quality flag (chestxray.data.quality) measured on real films and on generated non-films.

For each shared dataset: how many images the flag fires on (it must be none), and the smallest grey-level
spread (1st-99th percentile) of any film, beside the flag's threshold. Then the generated blank, constant and
nearly constant images, each of which must be flagged. Images are read and resized as predict reads them
(224 px model: the 256 px stored side), through the decoded-image cache.

    .venv/bin/python benchmarks/image_quality.py [--data-root ../shared/data] [--img-size 224]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from chestxray.data.datamodule import decode_split
from chestxray.data.io import list_images
from chestxray.data.quality import QUALITY_MIN_SPREAD, image_quality, spread
from chestxray.data.sources import Sample

SETS = ["cxr-nih-cohen", "kermany-peds-train", "covid-radiography-sample", "lung-masks/images"]


def generated(side: int = 256) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    noise = lambda mean, sd: np.clip(rng.normal(mean, sd, (side, side)), 0, 255).astype(np.uint8)  # noqa: E731
    return {"all white": np.full((side, side), 255, np.uint8), "all black": np.zeros((side, side), np.uint8),
            "mid grey": np.full((side, side), 128, np.uint8), "grey with noise sd 2": noise(128, 2),
            "black with a white label": np.pad(np.full((12, 40), 255, np.uint8), ((0, side - 12), (0, side - 40))),
            "white with noise sd 3": noise(250, 3)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-root", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--img-size", type=int, default=224)
    args = ap.parse_args()
    print(f"flag threshold: spread < {QUALITY_MIN_SPREAD} grey levels (1st-99th percentile)")
    print(f"{'dataset':28s} {'images':>7s} {'flagged':>8s} {'min spread':>11s} {'1st pct':>8s} {'median':>7s}")
    for name in SETS:
        folder = Path(args.data_root) / name
        if not folder.exists():
            print(f"{name:28s} missing")
            continue
        t = time.time()
        split = decode_split([Sample(str(p), None) for p in list_images(folder)], args.img_size, True, f"reading {name}")
        spreads = np.array([spread(np.asarray(split.images[i])) for i in range(len(split.images))])
        flagged = sum(image_quality(np.asarray(split.images[i])) != "ok" for i in range(len(split.images)))
        print(f"{name:28s} {len(spreads):7d} {flagged:8d} {spreads.min():11d} {np.percentile(spreads, 1):8.0f} "
              f"{np.median(spreads):7.0f}   ({time.time() - t:.0f} s)")
    for name, image in generated().items():
        print(f"generated: {name:26s} spread {spread(image):3d}  -> {image_quality(image)}")


if __name__ == "__main__":
    main()
