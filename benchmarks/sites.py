"""Many sites, one model: the shared data merged through the importers, leave-one-site-out with and without
`--balance source`, and the recipe trained on all sites, scored per source on held-out patients.

    .venv/bin/python benchmarks/sites.py [--root runs] [--full-loso] [--skip-all]

Steps (each skipped where its output exists, so a second call only prints the tables; a crossval resumes per fold):
1. `chestxray data import covid-radiography ../shared/data/covid-radiography-sample --out ROOT/sites/crd.csv`
2. `chestxray data merge ROOT/sites/crd.csv cxr-nih-cohen/labels.csv kermany-peds-train/labels.csv
   --out ROOT/sites/merged.csv` (cross-dataset copies reported and dropped, patient-level split where none)
3. `chestxray crossval --data merged.csv --by source --stages head` into ROOT/cv-head, and the same with
   `--balance source` into ROOT/cv-head-balance (the default recipe's head stage; `--full-loso`: the whole default
   recipe, head and fine-tuning, into ROOT/cv-default and ROOT/cv-default-balance)
4. `chestxray train --data merged.csv --balance source`, head stage only (ROOT/all-head-balance) and the whole default
   recipe (ROOT/all-balance); their test splits are held-out patients of every source, scored per source.

Prints the leave-one-site-out tables side by side and the per-source test figures; writes ROOT/sites.json.
Research figures only: each source is one site with its own age, device, label quality and class mix.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from _common import CXR, KERMANY, ROOT, SHARED

CRD = SHARED / "covid-radiography-sample"
CLI = [sys.executable, "-c", "from chestxray.cli import main; main()"]


def run(args: list, done: Path) -> str:
    """Run a chestxray command unless `done` exists; the wall time it took, or 'existing'."""
    if done.exists():
        return "existing"
    print("$ chestxray " + " ".join(map(str, args)), flush=True)
    t = time.perf_counter()
    if subprocess.run([*CLI, *map(str, args)]).returncode:
        raise SystemExit(f"failed: chestxray {' '.join(map(str, args))}")
    return f"{(time.perf_counter() - t) / 60:.1f} min"


def ci(v) -> str:
    return f" [{v[0]:.3f}, {v[1]:.3f}]" if v and v[0] is not None else ""


def f3(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def loso_table(variants: dict[str, dict]) -> None:
    names = list(variants)
    print("\n| held-out source (classes, images) | " + " | ".join(
        f"{n}: ROC-AUC | sens / spec | in-distribution" for n in names) + " |")
    print("|---|" + "---|---|---|" * len(names))
    first = variants[names[0]]["folds"]
    for i, f in enumerate(first):
        cells = []
        for n in names:
            r = variants[n]["folds"][i]
            cells += [f3(r["roc_auc"]) + ci(r["roc_auc_ci95"]) if r["scored_whole"] else "(one class)",
                      f"{f3(r['sensitivity'])} / {f3(r['specificity'])}",
                      f3(r.get("in_distribution_roc_auc"))]
        print(f"| {f['held_out']} ({', '.join(f['classes'])}; {f['n']}) | " + " | ".join(cells) + " |")
    print("| **mean over sources scored whole** | " + " | ".join(
        f"**{f3(variants[n]['mean_roc_auc'])}** (n = {variants[n]['n_scored']}) | | " for n in names) + "|")


def per_source_table(runs: dict[str, Path]) -> dict:
    out = {}
    print("\n| test split of the merged data, by source | " + " | ".join(
        f"{n}: ROC-AUC | sens / spec" for n in runs) + " |")
    print("|---|" + "---|---|" * len(runs))
    metrics = {n: json.loads((r / "metrics.json").read_text()) for n, r in runs.items()}
    for n, m in metrics.items():
        out[n] = {"overall": m["binary"]["at_val_threshold"], "per_source": m.get("per_source", {})}
    sources = sorted({s for m in metrics.values() for s in m.get("per_source", {})})
    for src in ["(all)"] + sources:
        cells = []
        for n, m in metrics.items():
            r = m["binary"]["at_val_threshold"] if src == "(all)" else m["per_source"].get(src)
            if r is None:
                cells += ["-", "-"]
                continue
            c = r.get("ci95") or {}
            cells += [f3(r["roc_auc"]) + ci(c.get("roc_auc")) if r.get("roc_auc") is not None else
                      f"({r['n_infected']} infected, {r['n_normal']} normal)",
                      f"{f3(r['sensitivity'])} / {f3(r['specificity'])}"]
        print(f"| {src} | " + " | ".join(cells) + " |")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=ROOT / "runs")
    ap.add_argument("--full-loso", action="store_true", help="leave-one-site-out with the whole default recipe too")
    ap.add_argument("--skip-all", action="store_true", help="no training on all sites")
    args = ap.parse_args(argv)
    root = args.root
    crd, merged = root / "sites" / "crd.csv", root / "sites" / "merged.csv"
    walls = {"import": run(["data", "import", "covid-radiography", CRD, "--out", crd], crd)}
    walls["merge"] = run(["data", "merge", crd, CXR, KERMANY, "--out", merged], merged)
    loso = {"head": ("cv-head", ["--stages", "head"]), "head, --balance source": ("cv-head-balance", ["--stages", "head", "--balance", "source"])}
    if args.full_loso:
        loso |= {"default": ("cv-default", []), "default, --balance source": ("cv-default-balance", ["--balance", "source"])}
    variants = {}
    for name, (folder, flags) in loso.items():
        walls[folder] = run(["crossval", "--data", merged, "--by", "source", "--out", root / folder, *flags],
                            root / folder / "crossval.json")
        variants[name] = json.loads((root / folder / "crossval.json").read_text())
    print(f"\nleave-one-site-out on {merged} (wall: {walls})")
    loso_table(variants)
    result = {"merged": str(merged), "loso": variants, "wall": walls}
    if not args.skip_all:
        alls = {"head, --balance source": ("all-head-balance", ["--stages", "head"]), "default, --balance source": ("all-balance", [])}
        for name, (folder, flags) in alls.items():
            walls[folder] = run(["train", "--data", merged, "--out", root / folder, "--balance", "source", *flags],
                                root / folder / "metrics.json")
        result["all_sites"] = per_source_table({n: root / f for n, (f, _) in alls.items()})
    (root / "sites.json").write_text(json.dumps(result, indent=1))
    print(f"\nwritten: {root / 'sites.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
