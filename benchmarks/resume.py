"""Kill -9 during training, resume, and compare with an uninterrupted run of the same seed.

    .venv/bin/python benchmarks/resume.py [--data DIR_OR_CSV] [--out runs/resume] [train flags...]

Without --data it makes a synthetic phantom set. For each precision mode (`--deterministic --precision
32-true`, and the defaults) it trains once straight through, once killed (SIGKILL, by the
CHESTXRAY_KILL_AFTER hook) after epoch 2 of the head stage and resumed, and once killed after epoch 1 of
fine-tuning and resumed; it prints the final stage, validation threshold, test ROC-AUC and accuracy of each,
whether metrics.json is byte-identical to the straight run's, and the wall times.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _common import ROOT

CLI = [sys.executable, "-c", "from chestxray.cli import main; main()"]
MODES = {"deterministic fp32": ["--deterministic", "--precision", "32-true"], "defaults": []}
KILLS = {"straight": None, "killed in head, resumed": "head:2", "killed in finetune, resumed": "finetune:1"}


def train(args: list[str], kill: str | None) -> float:
    env = {**os.environ, **({"CHESTXRAY_KILL_AFTER": kill} if kill else {})}
    t = time.time()
    res = subprocess.run([*CLI, "train", *args, "--quiet"], env=env, capture_output=True, text=True)
    if kill:
        if res.returncode != -9:
            raise SystemExit(f"expected a SIGKILL, got {res.returncode}: {res.stderr[-2000:]}")
        out = args[args.index("--out") + 1]
        res = subprocess.run([*CLI, "train", "--resume", out, "--quiet"], capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(res.stderr[-3000:])
    return time.time() - t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None)
    ap.add_argument("--out", default=str(ROOT / "runs" / "resume"))
    args, flags = ap.parse_known_args(argv)
    out = Path(args.out)
    data = args.data
    if data is None:
        from chestxray.data.synthetic import make_dataset

        data = str(make_dataset(out / "phantoms", {"covid": 30, "normal": 40, "pneumonia": 30}, size=128, seed=3))
    flags = flags or ["--img-size", "96", "--epochs-head", "4", "--epochs-finetune", "3", "--patience", "10", "--bootstrap", "0"]
    rows = []
    for mode, mode_flags in MODES.items():
        straight = None
        for name, kill in KILLS.items():
            run = out / f"{mode.split()[0]}-{name.split(',')[0].replace(' ', '-')}"
            wall = train(["--data", data, "--out", str(run), "--overwrite", *flags, *mode_flags], kill)
            text = (run / "metrics.json").read_text()
            m = json.loads(text)
            straight = straight or text
            b = m["binary"]["at_val_threshold"]
            rows.append({"mode": mode, "run": name, "final_stage": m["final_stage"], "threshold": m["val_threshold"],
                         "roc_auc": b["roc_auc"], "accuracy": b["accuracy"], "identical": text == straight, "wall_s": wall})
    print(f"data: {data}; flags: {' '.join(flags)}")
    print(f"{'mode':20s} {'run':30s} {'final':9s} {'threshold':>10s} {'ROC-AUC':>8s} {'accuracy':>9s} {'identical':>10s} {'wall s':>7s}")
    for r in rows:
        print(f"{r['mode']:20s} {r['run']:30s} {r['final_stage']:9s} {r['threshold']:10.4f} {r['roc_auc']:8.4f} {r['accuracy']:9.4f} "
              f"{str(r['identical']):>10s} {r['wall_s']:7.1f}")
    (out / "resume.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
