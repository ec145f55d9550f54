"""Test-time views, each alone and averaged, on one trained run: in-domain and on kermany-peds-train.

    .venv/bin/python benchmarks/tta.py runs/generalization/A-cxr-nih-cohen [--bootstrap 1000]

The run's weights are scored on the cxr-nih-cohen test split (overall and NIH-only) and on all of
kermany-peds-train, once per test-time view of `--tta views` (the image, centre crops of 90% and 80%, a
10% black border, gamma 0.8 and 1.25), and for the averages of view sets: `views` (all six) and the
intensity-only set (the image and the two gammas). Test-time views change no training step, so a
model trained with `--tta views` has these weights; only its stored threshold (chosen on validation
from the averaged logits) would differ, so only ROC-AUC is compared. ROC-AUC with a 95% patient-level
bootstrap interval. Research figures only; kermany-peds-train is a data set this project has looked at.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from _common import SHARED, auc_ci, default_run

SETS = {"views (all six)": [0, 1, 2, 3, 4, 5], "intensity only (image, gamma 0.8, 1.25)": [0, 4, 5]}


@torch.no_grad()
def view_logits(predictor, images) -> torch.Tensor:
    """(views, N, outputs) raw logits, one slice per view of TTA_VIEWS['views']."""
    from chestxray.data.datamodule import DecodedDataset, make_loader
    from chestxray.models.predictor import CPU_BATCH

    prep = dataclasses.replace(predictor.preprocessing, tta="views")
    model = predictor.model.eval()
    out = []
    for x, _, _ in make_loader(DecodedDataset(images, None, prep.eval_transform()), CPU_BATCH, train=False):
        out.append(torch.stack([model(v).float() for v in prep.model_views(x)]))
    return torch.cat(out, dim=1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", nargs="?", help="a run directory [default: the default run, trained if missing]")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--out", default=None, help="JSON of the figures [default: RUN/tta.json]")
    args = ap.parse_args(argv)
    args.run = str(default_run(args.run))  # the default run, trained once if missing
    import chestxray
    from chestxray.data.sources import evaluation_samples, patient_groups
    from chestxray.data.transforms import TTA_VIEWS

    predictor = chestxray.load(args.run).predictor  # the public API's model, its contract underneath
    names = [f"zoom {z:g}, gamma {g:g}" for z, g in TTA_VIEWS["views"]]
    evals = {}
    t0 = time.time()
    for name, data, split in (("cxr-nih-cohen test", SHARED / "cxr-nih-cohen" / "labels.csv", "test"),
                              ("kermany-peds-train", SHARED / "kermany-peds-train" / "labels.csv", None)):
        _, samples = evaluation_samples(data, split)
        decoded = predictor.decode(samples, False, desc=f"reading {name}")
        evals[name] = (decoded.samples, view_logits(predictor, decoded.images))
    test_samples, test_logits = evals["cxr-nih-cohen test"]
    nih = [i for i, s in enumerate(test_samples) if (s.source or "").startswith("nih")]
    evals["cxr-nih-cohen test, NIH only"] = ([test_samples[i] for i in nih], test_logits[:, nih])

    candidates = {**{n: [i] for i, n in enumerate(names)}, **SETS}
    rows = []
    for cand, idx in candidates.items():
        row = {"views": cand}
        for ev, (samples, logits) in evals.items():
            y = np.array([predictor.scheme.is_infected(s.label) for s in samples])
            auc, ci = auc_ci(y, predictor.p_infected(logits[idx].mean(0)), patient_groups(samples), args.bootstrap)
            row[ev] = {"roc_auc": auc, "ci95": ci}
        rows.append(row)

    def f(v):
        return "  n/a" if v is None else f"{v:.3f}"

    print(f"\nrun: {args.run}\n{'test-time views':42s} " + " ".join(f"{ev:>26s}" for ev in evals))
    for r in rows:
        cells = [f"{f(r[ev]['roc_auc'])} [{f(r[ev]['ci95'][0])}, {f(r[ev]['ci95'][1])}]" for ev in evals]
        print(f"{r['views']:42s} " + " ".join(f"{c:>26s}" for c in cells))
    print(f"wall time: {(time.time() - t0) / 60:.1f} min")
    out = Path(args.out) if args.out else Path(args.run) / "tta.json"
    out.write_text(json.dumps({"run": str(args.run), "rows": rows, "n": {ev: len(s) for ev, (s, _) in evals.items()}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
