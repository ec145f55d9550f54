"""The lung check (`lungs_found`: the packaged segmenter finds a plausible pair of lung fields) measured on the shared
films and on generated and transformed images that are not frontal chest films; with `--run` or `--head-only`, beside
it the model's feature-density flag (`out_of_distribution`) on the same images, and how often either fires.

For each shared dataset: how many films the check fails on, and why. Then generated non-films (blank, noise,
gradients, a checkerboard, text, blobs like a hand) and real films turned into what the model does not know (rotated
a quarter turn, flipped upside down, a quarter of the film, inverted grey levels). Images are read and resized as
predict reads them (224 px model: the 256 px stored side), through the decoded-image cache.

    .venv/bin/python benchmarks/lung_flag.py [--img-size 224] [--lung-model FILE] [--run RUN | --head-only]
        [--sets cxr-nih-cohen,kermany-peds-train,...] [--out runs/lung_flag.json]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from _common import RUNS, SHARED, head_only_run, machine
from chestxray.data.datamodule import decode_split
from chestxray.data.io import list_images
from chestxray.data.sources import Sample
from chestxray.models.lungs import default_lung_model, lungs_found

SETS = ["cxr-nih-cohen", "kermany-peds-train", "covid-radiography-sample", "lung-masks/images"]


def generated(side: int = 256, n: int = 4) -> dict[str, list[np.ndarray]]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:side, :side] / side
    out = {"blank (white, black, grey)": [np.full((side, side), v, np.uint8) for v in (255, 0, 128)],
           "noise": [rng.integers(0, 256, (side, side)).astype(np.uint8) for _ in range(n)],
           "gradients": [(255 * g).astype(np.uint8) for g in (xx, yy, (xx + yy) / 2, np.hypot(xx - 0.5, yy - 0.5) / 0.71)],
           "checkerboard": [((((yy * k).astype(int) + (xx * k).astype(int)) % 2) * 255).astype(np.uint8) for k in (4, 8, 16, 32)]}
    texts = []
    for i in range(n):
        im = Image.new("L", (side, side), 255)
        d = ImageDraw.Draw(im)
        for row in range(0, side, 14):
            d.text((4, row), " ".join(f"word{rng.integers(1000)}" for _ in range(5)), fill=0)
        texts.append(np.asarray(im))
    out["text (a screenshot)"] = texts
    hands = []
    for i in range(n):  # a palm and five fingers, bright on dark, as a hand radiograph looks
        im = Image.new("L", (side, side), 20)
        d = ImageDraw.Draw(im)
        d.ellipse([70, 130, 190, 240], fill=170)
        for k in range(5):
            x = 60 + k * 32 + int(rng.integers(-6, 6))
            d.rounded_rectangle([x, 30 + abs(2 - k) * 15, x + 22, 160], radius=10, fill=190)
        hands.append(np.asarray(im))
    out["a hand-like shape"] = hands
    return out


def transformed(films: list[np.ndarray]) -> dict[str, list[np.ndarray]]:
    h = films[0].shape[0]
    return {"films rotated a quarter turn": [np.rot90(f).copy() for f in films],
            "films upside down": [f[::-1].copy() for f in films],
            "a quarter of a film (top left)": [np.asarray(Image.fromarray(f[: h // 2, : f.shape[1] // 2]).resize(f.shape[::-1])) for f in films],
            "films with inverted grey levels": [255 - f for f in films]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--lung-model", default=None)
    ap.add_argument("--films-transformed", type=int, default=50, help="cxr-nih-cohen test films to transform")
    ap.add_argument("--out", default=str(RUNS / "lung_flag.json"))
    ap.add_argument("--sets", default=",".join(SETS), help="comma-separated shared folders to read")
    ap.add_argument("--run", default=None, help="a trained run: its feature-density flag beside the lung check")
    ap.add_argument("--head-only", action="store_true", help="--run: the default recipe's head-only run (benchmarks/_common)")
    args = ap.parse_args()
    model = default_lung_model(args.lung_model)
    predictor = None
    if args.run or args.head_only:
        from chestxray.models.load import load_predictor

        predictor = load_predictor(head_only_run() if args.head_only else args.run)
        args.img_size = predictor.preprocessing.img_size
    print(f"{machine()}\nsegmenter: {model.path}" + (f"\nfeature density of: {predictor.checkpoint}" if predictor else ""))
    rows = {}

    def density(images) -> dict:
        """The model's out-of-distribution flag on the images, and how many either flag fires on."""
        if predictor is None:
            return {}
        flagged = predictor.ood.flag(predictor.ood.score(predictor.forward(images)[1].numpy()))
        return {"ood_flagged": int(flagged.sum()), "ood_flags": flagged}

    def show(name: str, row: dict, found: np.ndarray, extra: str = "") -> None:
        if predictor is not None:
            flags = row.pop("ood_flags")
            row["either_flagged"] = int((flags | ~found).sum())
            extra = f"{row['ood_flagged']:9d} {row['either_flagged']:9d}  " + extra
        print(f"{name:46s} {row['n']:6d} {row['not_found']:9d}  {extra}{row['reasons']}")

    print(f"{'images':46s} {'n':>6s} {'no lungs':>9s}  " + (f"{'density':>9s} {'either':>9s}  " if predictor else "") + "reasons")
    for name in [s.strip() for s in args.sets.split(",") if s.strip()]:
        folder = SHARED / name
        if not folder.exists():
            print(f"{name:46s} missing")
            continue
        t = time.time()
        split = decode_split([Sample(str(p), None) for p in list_images(folder)], args.img_size, True, f"reading {name}")
        found, reasons = lungs_found(model, list(split.images))
        rows[name] = {"n": len(found), "not_found": int((~found).sum()), "reasons": dict(Counter(r for r in reasons if r != "ok")),
                      "not_found_paths": [s.path for s, f in zip(split.samples, found) if not f][:50],
                      **density(split.images), "seconds": time.time() - t}
        show(name, rows[name], found, f"({time.time() - t:.0f} s) ")
    test = decode_split([Sample(str(p), None) for p in list_images(SHARED / "cxr-nih-cohen" / "test")][: args.films_transformed],
                        args.img_size, True, "reading test films")
    made = {**generated(), **transformed([np.asarray(i) for i in test.images])}
    for name, images in made.items():
        found, reasons = lungs_found(model, images)
        key = f"generated: {name}"
        rows[key] = {"n": len(found), "not_found": int((~found).sum()),
                     "reasons": dict(Counter(r for r in reasons if r != "ok")), **density(np.stack(images))}
        show(key, rows[key], found)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"segmenter": str(model.path), "machine": machine(),
                                          "run": str(predictor.checkpoint) if predictor else None, "rows": rows}, indent=2))
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
