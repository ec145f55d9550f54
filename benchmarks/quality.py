"""Quality benchmark: the default recipe on ../shared/data/cxr-nih-cohen, head stage vs fine-tuned, on test.

    .venv/bin/python benchmarks/quality.py [--data PATH] [--out runs/quality] [any `chestxray train` flag]

Uses the dataset's labels.csv manifest (patient ids and sources; the train/val/test split is the
dataset's own patient-level split). Prints test metrics of the best head checkpoint and of the best
fine-tuned checkpoint side by side, per source, and the wall time. Research figures, not clinical ones.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from _common import ROOT

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "cxr-nih-cohen" / "labels.csv"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--out", default=str(ROOT / "runs" / "quality"))
    args, extra = ap.parse_known_args(argv)
    if not Path(args.data).exists():
        print(f"{args.data} not found: this benchmark needs the shared cxr-nih-cohen data", file=sys.stderr)
        return 2
    from typer.testing import CliRunner

    from chestxray.cli import app

    t0 = time.time()
    res = CliRunner().invoke(app, ["train", "--data", args.data, "--out", args.out, "--quiet", *extra])
    print(res.output)
    if res.exit_code != 0:
        if res.exception:
            raise res.exception
        return res.exit_code
    wall = time.time() - t0
    m = json.loads((Path(args.out) / "metrics.json").read_text())
    keys = ["roc_auc", "pr_auc", "accuracy", "f1_infected", "sensitivity", "specificity"]
    stages = m["stages"]
    print(f"\ncxr-nih-cohen test split (n={m['binary']['at_0.5']['n']}), infected vs normal, threshold 0.5")
    print(f"{'metric':14s}" + "".join(f"{s:>12s}" for s in stages))
    for k in keys:
        print(f"{k:14s}" + "".join(f"{stages[s]['test'][k]:12.3f}" for s in stages))
    print(f"{'val roc_auc':14s}" + "".join(f"{stages[s]['val']['roc_auc']:12.3f}" for s in stages))
    print(f"\nfinal model: {m['final_stage']} (validation score {m['stages'][m['final_stage']]['score']:.3f});"
          f" at the validation-chosen threshold {m['val_threshold']:.3f}:")
    b = m["binary"]["at_val_threshold"]
    print("  " + ", ".join(f"{k}={b[k]:.3f}" for k in keys))
    def f(v):
        return "n/a" if v is None else f"{v:.3f}"

    for src, sm in m.get("per_source", {}).items():
        print(f"  source {src}: n={sm['n']} (infected {sm['n_infected']}), roc_auc={f(sm['roc_auc'])}, "
              f"accuracy={f(sm['accuracy'])}, sensitivity={f(sm['sensitivity'])}, specificity={f(sm['specificity'])}")
    print(f"\nwall time {wall / 60:.1f} min; run directory {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
