"""Plots written into a run directory: learning curves, ROC, PR, confusion matrix."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import precision_recall_curve, roc_curve  # noqa: E402


def _title(title: str, note: str | None) -> str:
    return f"{title}\n{note}" if note else title


def learning_curves(history: pd.DataFrame, path: Path, note: str | None = None) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for stage, df in history.groupby("stage", sort=False):
        for col, style in (("train_loss", "-"), ("val_loss", "--")):
            if col in df:
                axes[0].plot(df["global_epoch"], df[col], style, label=f"{stage} {col}")
        if "val_auc" in df:
            axes[1].plot(df["global_epoch"], df["val_auc"], "o-", label=f"{stage} val_auc")
        for col in sorted(c for c in df if c.startswith("val_auc_source/")):  # per source, where several are validated
            axes[1].plot(df["global_epoch"], df[col], ".:", label=f"{stage} {col.split('/', 1)[1][:30]}")
    axes[0].set(xlabel="epoch (both stages)", ylabel="loss", title=_title("Loss", note))
    axes[1].set(xlabel="epoch (both stages)", ylabel="ROC-AUC", title=_title("Validation ROC-AUC", note))
    for ax in axes:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def roc_pr(y: np.ndarray, p: np.ndarray, outdir: Path, label: str, note: str | None = None) -> None:
    if y.min() == y.max():
        return
    fpr, tpr, _ = roc_curve(y, p)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(fpr, tpr, label=label)
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=_title("ROC (infected vs normal)", note))
    ax.legend()
    fig.tight_layout()
    fig.savefig(outdir / "roc.png", dpi=100)
    plt.close(fig)
    prec, rec, _ = precision_recall_curve(y, p)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(rec, prec, label=label)
    ax.axhline(y.mean(), ls=":", color="grey")
    ax.set(xlabel="recall (sensitivity)", ylabel="precision", title=_title("Precision-recall", note))
    ax.legend()
    fig.tight_layout()
    fig.savefig(outdir / "pr.png", dpi=100)
    plt.close(fig)


def reliability(calibration: dict, path: Path, note: str | None = None) -> None:
    """Reliability diagram of P(infected): observed fraction infected against mean predicted probability."""
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfect calibration")
    series = [("bins", f"ECE {calibration['ece']:.3f}" + (" (temperature-scaled)" if "bins_uncalibrated" in calibration else ""))]
    if "bins_uncalibrated" in calibration:
        series.append(("bins_uncalibrated", f"ECE {calibration['ece_uncalibrated']:.3f} (before scaling)"))
    for key, label in series:
        bins = calibration[key]
        ax.plot([b["mean_p"] for b in bins], [b["frac_infected"] for b in bins], "o-", label=label)
    ax.set(xlabel="mean predicted P(infected)", ylabel="fraction infected", xlim=(0, 1), ylim=(0, 1),
           title=_title("Reliability", note))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def count_colour(count: int, largest: int) -> str:
    """Text colour readable on its cell: white on the darker half of the Blues map, black on the lighter."""
    return "white" if largest > 0 and count > largest / 2 else "black"


def confusion(cm: list[list[int]], labels: list[str], path: Path, title: str) -> None:
    cm = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 2.5, 1.2 * len(labels) + 2))
    ax.imshow(cm, cmap="Blues", vmin=0, vmax=max(1, cm.max()))
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color=count_colour(cm[i, j], cm.max()))
    ax.set_xticks(range(len(labels)), labels, rotation=30)
    ax.set_yticks(range(len(labels)), labels)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
