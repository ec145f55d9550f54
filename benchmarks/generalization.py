"""Generalization benchmark: one recipe, in-domain and cross-domain, side by side.

    .venv/bin/python benchmarks/generalization.py [--out runs/generalization] [--kermany-images 1500]
        [--skip-reverse | --skip-forward] [--without-nih-pneumonia] [any `chestxray train` flag, applied to both trainings]

- A: trained on ../shared/data/cxr-nih-cohen (its own patient-level split) -> its test split (overall and
  NIH-only), and -> all of ../shared/data/kermany-peds-train (another hospital, children, another device).
- B: trained on a patient-level subset of kermany-peds-train (`--kermany-images`, carved into train / val /
  held-out test, patient-level and stratified) -> its held-out part, and -> the NIH rows of the
  cxr-nih-cohen test split (normal vs pneumonia).
- `--without-nih-pneumonia`: a data ablation, not a recipe: A trains without cxr-nih-cohen's NIH pneumonia
  images (train and val); its test split, NIH pneumonia included, is scored as it is.

Every row gives ROC-AUC with a 95% patient-level bootstrap interval, and sensitivity and specificity at the
model's stored (validation-chosen) threshold. Writes RUN/generalization.json. Research figures only.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import time
from pathlib import Path

from _common import CXR, KERMANY, ROOT, absolute_rows, flag_options, write_rows


def kermany_subset(out: Path, n_images: int, seed: int) -> Path:
    """A patient-level subset of about `n_images` images, split train / val / test (patient-level, stratified)."""
    from chestxray.data.check import split_manifest

    fields, rows = absolute_rows(KERMANY)
    by_patient: dict[str, list[dict]] = {}
    for r in rows:
        by_patient.setdefault(r["patient_id"], []).append(r)
    patients = sorted(by_patient)
    random.Random(seed).shuffle(patients)
    chosen = []
    for p in patients:
        if len(chosen) >= n_images:
            break
        chosen += by_patient[p]
    pool = write_rows(out / "kermany-subset.csv", [f for f in fields if f != "split"], chosen)
    split_manifest(pool, out / "kermany-split.csv", val=0.15, test=0.2, seed=seed)
    return out / "kermany-split.csv"


def without_nih_pneumonia(out: Path) -> Path:
    """cxr-nih-cohen with its NIH pneumonia images left out of training (and so of the validation carved from it);
    the test split as it is."""
    fields, rows = absolute_rows(CXR)
    with open(CXR, newline="") as f:
        splits = [Path(r["path"]).parts[0] for r in csv.DictReader(f)]
    keep = [{**r, "split": sp} for r, sp in zip(rows, splits)
            if not (sp != "test" and r["source"].startswith("nih") and r["label"] == "pneumonia")]
    return write_rows(out / "cxr-nih-cohen-without-nih-pneumonia.csv", fields + ["split"], keep)


def nih_test_rows(out: Path) -> Path:
    """The NIH rows (normal vs pneumonia) of the cxr-nih-cohen test split, as a manifest without splits."""
    fields, rows = absolute_rows(CXR)
    keep = [r for r in rows if Path(r["path"]).parts and "/test/" in r["path"] and r["source"].startswith("nih")
            and r["label"] in ("normal", "pneumonia")]
    return write_rows(out / "cxr-nih-test.csv", [f for f in fields if f != "split"], keep)


def row(name: str, m: dict, source: str | None = None) -> dict:
    b = m["per_source"][source] if source else m["binary"]["at_val_threshold"]
    ci = (b.get("ci95") or {}).get("roc_auc") or [None, None]
    out = {"evaluation": name, "n": b["n"], "n_infected": b["n_infected"], "roc_auc": b["roc_auc"], "roc_auc_ci95": ci,
           "sensitivity": b["sensitivity"], "specificity": b["specificity"], "threshold": b["threshold"]}
    ood = m.get("out_of_distribution")
    if ood and not source:
        out["flagged_unlike_training"] = ood.get("fraction_flagged")
    return out


def train(data: Path, out: Path, flags: list[str]) -> Path:
    """The recipe (`chestxray train` flags) trained through the public API."""
    import chestxray

    chestxray.train(data, out, overwrite=out.exists(), **flag_options(flags))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "runs" / "generalization"))
    ap.add_argument("--kermany-images", type=int, default=1500, help="images of kermany-peds-train that B trains on (with its val and test)")
    ap.add_argument("--skip-reverse", action="store_true", help="only A (trained on cxr-nih-cohen)")
    ap.add_argument("--skip-forward", action="store_true", help="only B (trained on the kermany-peds-train subset)")
    ap.add_argument("--seed", type=int, default=42, help="seed of both trainings and of the kermany subset")
    ap.add_argument("--without-nih-pneumonia", action="store_true",
                    help="A trains without the NIH pneumonia images of cxr-nih-cohen (its test split unchanged)")
    args, flags = ap.parse_known_args(argv)
    flags += ["--seed", str(args.seed)]
    if not CXR.exists() or not KERMANY.exists():
        print(f"this benchmark needs {CXR} and {KERMANY}", file=sys.stderr)
        return 2
    from chestxray import evaluate as evaluate_run

    out = Path(args.out)
    rows, times = [], {}
    if not args.skip_forward:
        t0 = time.time()
        run_a = train(without_nih_pneumonia(out) if args.without_nih_pneumonia else CXR, out / "A-cxr-nih-cohen", flags)
        m = json.loads((run_a / "metrics.json").read_text())
        nih = next(s for s in m["per_source"] if s.startswith("nih"))
        rows += [row("A cxr-nih-cohen -> its test (in-domain)", m), row("A cxr-nih-cohen -> its test, NIH only", m, nih)]
        ext, _ = evaluate_run(run_a, KERMANY, out=out / "A-on-kermany", bootstrap=1000, overwrite=True)
        rows.append(row("A cxr-nih-cohen -> all kermany-peds-train (cross-domain)", ext))
        times["A"] = time.time() - t0
    if not args.skip_reverse:
        t0 = time.time()
        run_b = train(kermany_subset(out, args.kermany_images, args.seed), out / "B-kermany", flags)
        rows.append(row("B kermany subset -> its held-out part (in-domain)", json.loads((run_b / "metrics.json").read_text())))
        back, _ = evaluate_run(run_b, nih_test_rows(out), out=out / "B-on-cxr-nih", bootstrap=1000, overwrite=True)
        rows.append(row("B kermany subset -> cxr-nih-cohen test, NIH rows (cross-domain)", back))
        times["B"] = time.time() - t0

    def f(v):
        return "  n/a" if v is None else f"{v:.3f}"

    print(f"\nrecipe flags: {' '.join(flags) or '(defaults)'}" + (" (A without NIH pneumonia)" if args.without_nih_pneumonia else ""))
    print(f"{'evaluation':62s} {'n (inf)':>11s} {'ROC-AUC [95% CI]':>24s} {'sens':>6s} {'spec':>6s} {'flagged':>8s}")
    for r in rows:
        ci = r["roc_auc_ci95"]
        auc = f"{f(r['roc_auc'])} [{f(ci[0]).strip()}, {f(ci[1]).strip()}]"
        flagged = r.get("flagged_unlike_training")
        print(f"{r['evaluation']:62s} {r['n']:5d} ({r['n_infected']:4d}) {auc:>24s} {f(r['sensitivity']):>6s} {f(r['specificity']):>6s} "
              f"{'' if flagged is None else f'{flagged:.2f}':>8s}")
    print("wall time: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in times.items()))
    (out / "generalization.json").write_text(json.dumps({"flags": flags, "without_nih_pneumonia": args.without_nih_pneumonia, "rows": rows, "wall_s": times}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
