"""Site recalibration benchmark: a model trained on cxr-nih-cohen, adapted to kermany-peds-train.

    .venv/bin/python benchmarks/adaptation.py --run runs/generalization/A-cxr-nih-cohen [--n 50 100 200]
        [--seeds 0 1 2] [--operating-point sensitivity --target-sensitivity 0.9] [--target-confidence 0.9]

Decodes every kermany-peds-train image and runs the model once, then for each n and seed picks n labelled
images (patient-level, stratified), refits the temperature and the operating point on them, without and
with a refit of the classification layer (`adapt --head`), and measures sensitivity and specificity at the
new threshold, and ROC-AUC, on the images not picked, with 95% patient-level bootstrap intervals (first
seed). Writes RUN/adaptation-<operating point>[-conf<c>].json. Research figures only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from _common import KERMANY, default_run


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default=None)
    ap.add_argument("--data", default=str(KERMANY))
    ap.add_argument("--n", type=int, nargs="+", default=[50, 100, 200])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--operating-point", default="sensitivity", help="best_f1 | youden | sensitivity, chosen on the n images")
    ap.add_argument("--target-sensitivity", type=float, default=0.9)
    ap.add_argument("--target-confidence", type=float, default=0.0,
                    help="c > 0: the threshold reaches the target on new site images with probability c (tolerance bound)")
    ap.add_argument("--bootstrap", type=int, default=1000)
    args = ap.parse_args(argv)
    args.run = str(default_run(args.run))  # the default run, trained once if missing
    import chestxray
    from chestxray.jobs.adapt import adapted_predictor, before_after, load_site, split_site
    from chestxray.models.calibration import ThresholdRule

    t0 = time.time()
    predictor = chestxray.load(args.run).predictor  # the public API's model, its contract underneath
    site = load_site(predictor, args.data)
    rows = []
    for head in (False, True):
        for n in args.n:
            for seed in args.seeds:
                adapt_idx, held = split_site(site.samples, n, seed)
                rule = ThresholdRule(args.operating_point, args.target_sensitivity, args.target_confidence)
                new, logits = adapted_predictor(predictor, site, adapt_idx, head, rule)
                r = before_after(predictor, new, site, logits, held, args.bootstrap if seed == args.seeds[0] else 0, seed)
                rows.append({"head": head, "n": n, "seed": seed, "threshold": new.threshold, **{
                    f"{when}_{k}": r[when][k] for when in ("before", "after") for k in ("roc_auc", "sensitivity", "specificity")},
                    "after_ci95": {k: r["after"]["ci95"].get(k) for k in ("sensitivity", "specificity", "roc_auc")} if r["after"].get("ci95") else None})

    def f(v):
        return "n/a" if v is None else f"{v:.3f}"

    before = rows[0]
    print(f"{args.run} -> {args.data} ({len(site.samples)} labelled images), threshold rule on the n images: "
          f"{args.operating_point}" + (f" {args.target_sensitivity:g}" if args.operating_point == "sensitivity" else "")
          + (f", confidence {args.target_confidence:g}" if args.target_confidence else ""))
    print(f"before (stored threshold {predictor.threshold:.3f}): sensitivity {f(before['before_sensitivity'])}, "
          f"specificity {f(before['before_specificity'])}, ROC-AUC {f(before['before_roc_auc'])}")
    print(f"{'refit':22s} {'n':>5s} {'seed':>4s} {'threshold':>9s} {'sensitivity':>24s} {'specificity':>24s} {'ROC-AUC':>24s}")
    for r in rows:
        ci = r["after_ci95"] or {}

        def with_ci(k):
            c = ci.get(k)
            return f(r[f"after_{k}"]) + (f" [{f(c[0])}, {f(c[1])}]" if c and c[0] is not None else "")

        refit = "temperature+threshold" + ("+head" if r["head"] else "")
        print(f"{refit:22s} {r['n']:5d} {r['seed']:4d} {r['threshold']:9.3f} {with_ci('sensitivity'):>24s} "
              f"{with_ci('specificity'):>24s} {with_ci('roc_auc'):>24s}")
    for head in (False, True):
        for n in args.n:
            part = [r for r in rows if r["n"] == n and r["head"] == head]
            print(f"{'with' if head else 'without'} head refit, n={n}: mean over {len(part)} seeds: sensitivity "
                  f"{np.mean([r['after_sensitivity'] for r in part]):.3f}, specificity {np.mean([r['after_specificity'] for r in part]):.3f}, "
                  f"ROC-AUC {np.mean([r['after_roc_auc'] for r in part]):.3f}")
    print(f"wall time {(time.time() - t0) / 60:.1f} min")
    suffix = f"-conf{args.target_confidence:g}" if args.target_confidence else ""
    out = Path(args.run) / f"adaptation-{args.operating_point}{suffix}.json"
    out.write_text(json.dumps({"data": args.data, "operating_point": args.operating_point,
                               "target_sensitivity": args.target_sensitivity,
                               "target_confidence": args.target_confidence, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
