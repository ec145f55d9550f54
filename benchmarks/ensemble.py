"""Seed spread and a seed ensemble, from runs of benchmarks/generalization.py that differ only in --seed
(or an ensemble across recipes, from runs that differ in their recipe flags).

    .venv/bin/python benchmarks/ensemble.py runs/gen-baseline runs/gen-seed1 runs/gen-seed2
    .venv/bin/python benchmarks/ensemble.py runs/gen-lite2 runs/gen-multiclass-unfreeze2

Each folder must hold A-cxr-nih-cohen/predictions-test.csv and A-on-kermany/predictions-all.csv (written by
training and by `chestxray evaluate`). For each member and for the ensemble (the mean of the members'
P(infected), image by image) it prints ROC-AUC with a 95% patient-level bootstrap interval on the
cxr-nih-cohen test split (overall and NIH-only) and on all of kermany-peds-train, then the members' spread.
The ensemble has no validation threshold of its own here, so only ROC-AUC is compared.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from _common import EVALS, ROOT, auc_ci, patients, predictions


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--out", default=str(ROOT / "runs" / "ensemble.json"))
    args = ap.parse_args(argv)
    rows = {}
    for name, (rel, manifest, source) in EVALS.items():
        ids = patients(manifest)
        tables = []
        for run in args.runs:
            t = predictions(Path(run) / rel, source)
            if t is None:
                return 2
            tables.append(t)
        paths = tables[0].index
        if any(not t.index.equals(paths) for t in tables):
            print(f"{name}: the runs predicted different images", file=sys.stderr)
            return 2
        y = (tables[0]["label"] != "normal").astype(int).to_numpy()
        groups = [ids.get(p, p) for p in paths]
        members = [auc_ci(y, t["p_infected"].to_numpy(), groups, args.bootstrap) for t in tables]
        mean_p = np.mean([t["p_infected"].to_numpy() for t in tables], axis=0)
        rows[name] = {"n": int(len(y)), "n_infected": int(y.sum()), "members": members,
                      "ensemble": auc_ci(y, mean_p, groups, args.bootstrap)}
    print(f"members: {', '.join(args.runs)}")
    print(f"{'evaluation':26s} {'n (inf)':>11s} " + " ".join(f"{'member ' + str(i + 1):>22s}" for i in range(len(args.runs)))
          + f" {'member range':>13s} {'ensemble':>22s}")
    for name, r in rows.items():
        cells = " ".join(f"{a:.3f} [{c[0]:.3f}, {c[1]:.3f}]" for a, c in r["members"])
        aucs = [a for a, _ in r["members"]]
        e, ec = r["ensemble"]
        print(f"{name:26s} {r['n']:5d} ({r['n_infected']:4d}) {cells} {max(aucs) - min(aucs):13.3f} {e:.3f} [{ec[0]:.3f}, {ec[1]:.3f}]")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"runs": args.runs, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
