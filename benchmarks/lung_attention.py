"""Where a model looks, measured against each image's own lungs: the shortcut audit with the segmenter's lung fields
beside the fixed ellipses, and the share of Grad-CAM inside the dilated lung fields, per class and source, in-domain
(the run's test split) and on kermany-peds-train (a patient-level subset).

    .venv/bin/python benchmarks/lung_attention.py [--run RUN] [--head-only] [--kermany-patients 400] [--out runs/lung_attention.json]

--run: a trained run [default: the default run, trained through chestxray.train where missing]. --head-only: train
and use a head-only run of the default recipe on cxr-nih-cohen instead (minutes, not half an hour, on a CPU).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

import chestxray
from _common import CXR, KERMANY, RUNS, default_run, head_only_run, machine
from chestxray.jobs.audit import audit_run


def kermany_subset(out: Path, patients: int, seed: int = 0) -> Path:
    df = pd.read_csv(KERMANY)
    keep = set(np.random.default_rng(seed).choice(df["patient_id"].unique(), size=patients, replace=False))
    sub = df[df["patient_id"].isin(keep)].copy()
    sub["path"] = [str((KERMANY.parent / p).resolve()) for p in sub["path"]]
    out.parent.mkdir(parents=True, exist_ok=True)
    sub.to_csv(out, index=False)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default=None)
    ap.add_argument("--head-only", action="store_true")
    ap.add_argument("--kermany-patients", type=int, default=400)
    ap.add_argument("--out", default=str(RUNS / "lung_attention.json"))
    args = ap.parse_args()
    run = head_only_run() if args.head_only else default_run(args.run)
    sub = kermany_subset(RUNS / "kermany-subset.csv", args.kermany_patients)
    print(f"{machine()}\nrun: {run}")
    rows = {}
    for name, data, split in (("cxr-nih-cohen test", CXR, "test"), (f"kermany-peds-train, {args.kermany_patients} patients", sub, None)):
        audits = {src: audit_run(run, data, split, RUNS / "lung_attention" / f"{name[:5]}-{src}", 1000, mask_source=src)[0]
                  for src in ("ellipse", "lungs")}
        metrics, _ = chestxray.evaluate(run, data, split=split, out=RUNS / "lung_attention" / f"{name[:5]}-eval",
                                        bootstrap=0, attention=True, overwrite=True)
        rows[name] = {"audit": {src: {k: {"roc_auc": v["roc_auc"], "roc_auc_ci95": v["roc_auc_ci95"]} for k, v in a["conditions"].items()}
                                | {"n_ellipse_fallback": a["n_ellipse_fallback"]} for src, a in audits.items()},
                      "attention": metrics["attention"], "lungs": {k: metrics["lungs"][k] for k in ("n", "n_not_found")}}
        print(f"\n{name} ({audits['lungs']['n']} images)")
        for cond in ("original", "lungs_hidden", "lungs_only", "borders_hidden"):
            cells = []
            for src in ("ellipse", "lungs"):
                c = audits[src]["conditions"][cond]
                ci = c["roc_auc_ci95"]
                cells.append(f"{c['roc_auc']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]")
            print(f"  audit {cond:15s} ellipse {cells[0]:24s} own lungs {cells[1]}")
        a = metrics["attention"]
        for group, d in [("all", a["overall"]), *[(k, v) for key in ("per_class", "per_source") for k, v in (a.get(key) or {}).items()]]:
            if d.get("n"):
                print(f"  attention {group:28s} n={d['n']:4d} median {d['median']:.2f} [{d['q25']:.2f}, {d['q75']:.2f}] "
                      f"mostly outside {d['mostly_outside']:.0%}")
    Path(args.out).write_text(json.dumps({"run": str(run), "machine": machine(), "rows": rows}, indent=2))
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
