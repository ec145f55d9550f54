"""Out-of-distribution benchmark: how well a run's flag separates another site's images from its own.

    .venv/bin/python benchmarks/ood.py --run runs/generalization/A-cxr-nih-cohen
        [--external ../shared/data/kermany-peds-train]

Scores the run's validation and test images (from its split.csv) and every image of the external data,
then prints the fraction flagged at the stored threshold and at thresholds set at other quantiles of the
validation scores, and the ROC-AUC of the score for telling external images from the run's own test
images. Research figures only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from _common import ROOT, default_run


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default=None)
    ap.add_argument("--external", default=str(ROOT.parent / "shared" / "data" / "kermany-peds-train"))
    args = ap.parse_args(argv)
    args.run = str(default_run(args.run))  # the default run, trained once if missing
    from sklearn.metrics import roc_auc_score

    import chestxray
    from chestxray.data.sources import Sample, load_samples

    predictor = chestxray.load(args.run).predictor  # the public API's model, its contract underneath
    split = pd.read_csv(Path(args.run) / "split.csv", keep_default_na=False)
    scores = {}
    for name in ("val", "test"):
        samples = [Sample(p, lab) for p, lab in zip(split[split.split == name].path, split[split.split == name].label)]
        scores[name] = predictor.ood_scores(predictor.forward(predictor.decode(samples).images)[1])
    external = [s for v in load_samples(args.external).values() for s in v]
    scores["external"] = predictor.ood_scores(predictor.forward(predictor.decode(external).images)[1])
    print(f"{args.run}: OOD flag on its test split ({len(scores['test'])}) and on {args.external} ({len(scores['external'])})")
    print(f"{'threshold':34s} {'own test flagged':>17s} {'external flagged':>17s}")
    rows = [(f"stored ({100 * predictor.ood.quantile:g}th pct of validation)", predictor.ood.threshold)]
    rows += [(f"{q:g}th percentile of validation", float(np.quantile(scores["val"], q / 100))) for q in (99, 95, 90)
             if q != round(100 * predictor.ood.quantile)]
    for name, t in rows:
        print(f"{name:34s} {np.mean(scores['test'] > t):17.3f} {np.mean(scores['external'] > t):17.3f}")
    y = np.r_[np.zeros(len(scores["test"])), np.ones(len(scores["external"]))]
    print(f"ROC-AUC of the score, external vs own test images: {roc_auc_score(y, np.r_[scores['test'], scores['external']]):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
