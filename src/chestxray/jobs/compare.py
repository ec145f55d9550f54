"""Compare runs on the same images: one table, one ROC plot, DeLong tests of AUC differences."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..config import BOOTSTRAP_RESAMPLES, Config
from ..data.sources import DataError, evaluation_samples, patient_groups
from ..errors import ChestXrayError
from ..evaluation.intervals import bootstrap_ci, delong_test
from ..evaluation.metrics import binary_metrics
from ..files import write_text
from ..models.load import load_predictor


def compare_runs(
    runs: list[Path], data: str | None, split: str | None, out: Path, n_boot: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> dict:
    """`split` None: the test split, or all of `data` where it has no splits."""
    if len(runs) < 2:
        raise ChestXrayError("compare needs at least two runs")
    loaded = [load_predictor(r) for r in runs]
    data = data or str(loaded[0].training_data)
    split, samples = evaluation_samples(data, split)
    y, ps, rows = None, [], []
    for run, lm in zip(runs, loaded):
        dec = lm.decode(samples, desc=f"reading {split}")
        p = lm.p_infected(lm.forward(dec.images, desc=f"scoring with {run}")[0])
        y_run = np.array([lm.scheme.is_infected(s.label) for s in samples])
        if y is not None and not np.array_equal(y, y_run):
            raise DataError(f"{run}: its Normal class differs from the first run's; the runs cannot be compared")
        y = y_run
        ps.append(p)
        cfg = Config.of_run(lm.meta.get("config"))
        m = binary_metrics(y, p, lm.threshold)
        groups = patient_groups(samples)
        ci = bootstrap_ci(y, p, {"t": lm.threshold}, groups, n_boot, seed)["t"] if n_boot else {}
        rows.append({"run": str(run), "model": lm.meta.get("model_name"), "loss": cfg.loss.loss,
                     "stage": lm.meta.get("stage"), "threshold": lm.threshold, **{k: m[k] for k in
                     ("roc_auc", "pr_auc", "accuracy", "sensitivity", "specificity", "f1_infected")},
                     "roc_auc_ci95": ci.get("roc_auc")})
    tests = [{"run_1": str(runs[0]), "run_2": str(runs[i]), **delong_test(y, ps[0], ps[i])} for i in range(1, len(runs))]
    out.mkdir(parents=True, exist_ok=True)
    _roc_plot(y, ps, [f"{r['model']} {r['loss']} ({Path(r['run']).name})" for r in rows], out / "roc_compare.png")
    result = {"data": str(data), "split": split, "n": int(len(y)), "n_infected": int(y.sum()), "runs": rows,
              "delong_vs_first": tests, "note": "Research tool, not a diagnostic device."}
    write_text(out / "compare.json", json.dumps(result, indent=2))
    return result


def _roc_plot(y, ps, labels, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_auc_score, roc_curve

    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    for p, label in zip(ps, labels):
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, label=f"{label}: AUC {roc_auc_score(y, p):.3f}")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC, infected vs normal")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
