"""Which output of a three-class model carries over to another site: ROC-AUC of each score, side by side.

    .venv/bin/python benchmarks/class_scores.py runs/gen-multiclass [runs/gen-multiclass-seed1 ...]

Each folder is an output of `benchmarks/generalization.py --task multiclass` (A-cxr-nih-cohen/predictions-test.csv
and A-on-kermany/predictions-all.csv, with p_covid, p_normal and p_pneumonia columns). For each run it scores
infected vs normal, on the cxr-nih-cohen test split (overall and NIH-only) and on all of kermany-peds-train,
with the model's P(infected) = 1 - P(normal) and with each class output alone: P(covid), P(pneumonia), and
P(pneumonia) / (P(pneumonia) + P(normal)) (pneumonia against normal only). ROC-AUC with a 95% patient-level
bootstrap interval. A look at what a model learned, not a recipe: kermany-peds-train is data this project
has looked at, so a score chosen here would be chosen on the figure it is judged by.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from _common import EVALS, ROOT, auc_ci, patients, predictions

SCORES = {
    "1 - P(normal) (the model's P(infected))": lambda t: t["p_infected"],
    "P(covid)": lambda t: t["p_covid"],
    "P(pneumonia)": lambda t: t["p_pneumonia"],
    "P(pneumonia) / (P(pneumonia) + P(normal))": lambda t: t["p_pneumonia"] / (t["p_pneumonia"] + t["p_normal"]),
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--out", default=str(ROOT / "runs" / "class-scores.json"))
    args = ap.parse_args(argv)
    result = {}
    for run in args.runs:
        result[run] = {}
        for name, (rel, manifest, source) in EVALS.items():
            t = predictions(Path(run) / rel, source)
            if t is None:
                return 2
            if "p_covid" not in t:
                print(f"{Path(run) / rel}: no p_covid column; this needs a --task multiclass run", file=sys.stderr)
                return 2
            ids = patients(manifest)
            y = (t["label"] != "normal").astype(int).to_numpy()
            groups = [ids.get(p, p) for p in t.index]
            result[run][name] = {score: auc_ci(y, fn(t).to_numpy(), groups, args.bootstrap) for score, fn in SCORES.items()}
    for run, evals in result.items():
        print(f"\n{run}\n{'score':44s} " + " ".join(f"{ev:>26s}" for ev in evals))
        for score in SCORES:
            print(f"{score:44s} " + " ".join(f"{a:.3f} [{c[0]:.3f}, {c[1]:.3f}]".rjust(26) for a, c in (evals[ev][score] for ev in evals)))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
