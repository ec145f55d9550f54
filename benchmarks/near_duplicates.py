"""Near-duplicate detection across datasets (`chestxray data merge`): how far a perceptual hash moves when an image is
re-encoded, against how close two distinct radiographs come.

Takes N films of each shared dataset, makes copies as other datasets re-publish them (JPEG at quality 75, resized to
224 px, converted to 3-channel PNG, cropped by 3% at each edge, brightened by gamma 0.8), and prints, per hash, the
distance from each film to its copies (largest and 99th percentile: a threshold must reach these) and from each film to
its nearest other film (smallest and 1st percentile: a threshold must stay below these).

    .venv/bin/python benchmarks/near_duplicates.py [--n 300] [--out runs/near_duplicates.json]
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from _common import RUNS, SHARED, machine
from chestxray.data.io import list_images, read_xray

SETS = ["cxr-nih-cohen", "kermany-peds-train", "covid-radiography-sample"]


def copies(im: Image.Image) -> dict[str, Image.Image]:
    def jpeg(x, q):
        buf = io.BytesIO()
        x.save(buf, "JPEG", quality=q)
        return Image.open(io.BytesIO(buf.getvalue())).convert("L")

    w, h = im.size
    c = int(0.03 * min(w, h))
    lut = [round(255 * (i / 255) ** 0.8) for i in range(256)]
    return {"jpeg q75": jpeg(im, 75), "resized to 224": im.resize((224, 224), Image.BILINEAR),
            "3-channel png": im.convert("RGB").convert("L"), "cropped 3%": im.crop((c, c, w - c, h - c)),
            "gamma 0.8": im.point(lut)}


def hashes(images: list[Image.Image]) -> dict[str, np.ndarray]:
    import imagehash

    out = {"phash 64": [], "phash 256": [], "dhash 256 (data check)": []}
    for im in images:
        out["phash 64"].append(np.packbits(imagehash.phash(im, 8).hash))
        out["phash 256"].append(np.packbits(imagehash.phash(im, 16).hash))
        out["dhash 256 (data check)"].append(np.packbits(imagehash.dhash(im, 16).hash))
    return {k: np.stack(v) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=300, help="films per shared dataset")
    ap.add_argument("--out", default=str(RUNS / "near_duplicates.json"))
    args = ap.parse_args()
    films = []
    for name in SETS:
        paths = list_images(SHARED / name)
        step = max(1, len(paths) // args.n)
        films += [Image.fromarray(read_xray(str(p))) for p in paths[::step][: args.n]]
    print(f"{machine()}\n{len(films)} films of {', '.join(SETS)}")
    base = hashes(films)
    result = {"n_films": len(films), "hashes": {}}
    for kind, h in base.items():
        bits = h.shape[1] * 8
        d = np.array([[int(np.unpackbits(a ^ b).sum()) for b in h] for a in h[: min(len(h), 900)]])
        np.fill_diagonal(d, bits)
        nearest = d.min(1)
        row = {"bits": bits, "nearest_other_film": {"min": int(nearest.min()), "p01": float(np.percentile(nearest, 1)),
                                                    "median": float(np.median(nearest))}, "copies": {}}
        result["hashes"][kind] = row
    made = {k: [] for k in copies(films[0])}
    for im in films:
        for k, c in copies(im).items():
            made[k].append(c)
    for k, ims in made.items():
        hc = hashes(ims)
        for kind, h in hc.items():
            dist = np.unpackbits(base[kind] ^ h, axis=1).sum(1)
            result["hashes"][kind]["copies"][k] = {"max": int(dist.max()), "p99": float(np.percentile(dist, 99)),
                                                   "median": float(np.median(dist))}
    for kind, row in result["hashes"].items():
        n = row["nearest_other_film"]
        print(f"\n{kind} ({row['bits']} bits): nearest other film min {n['min']}, 1st percentile {n['p01']:.0f}, "
              f"median {n['median']:.0f}")
        for k, c in row["copies"].items():
            print(f"  copy {k:16s} max {c['max']:3d}  p99 {c['p99']:5.1f}  median {c['median']:5.1f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
