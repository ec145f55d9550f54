"""What the commands print, formatted in one place: summaries, prediction and comparison tables, the audit."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pandas as pd

from ..evaluation.summary import ci_line, summary_table

SCREENFUL = 20  # predictions shown on the terminal; the file has them all


def tail(path: str, width: int) -> str:
    return path if len(path) <= width else "..." + path[-(width - 3):]


def ci(m: dict, key: str) -> str:
    """A figure with its 95% interval, where it has one."""
    c = (m.get("ci95") or {}).get(key)
    if m.get(key) is None:
        return "n/a"
    return f"{m[key]:.3f}" + (f" [{c[0]:.3f}, {c[1]:.3f}]" if c and c[0] is not None else "")


def evaluation(metrics: dict) -> str:
    """The operating points and sources of an evaluation, its intervals and calibration."""
    split = metrics["split"]
    rows = {f"{split} @{k[3:]}": v for k, v in metrics["binary"].items()}
    rows.update({f"  {k}": v for k, v in metrics.get("per_source", {}).items()})
    cal = metrics["calibration"]
    return "\n".join([summary_table(rows), ci_line(metrics), f"ECE {cal['ece']:.3f}" + (
        f" (temperature {cal['temperature']:.2f}; before scaling {cal['ece_uncalibrated']:.3f})" if "ece_uncalibrated" in cal else "")])


def audit(result: dict) -> str:
    source = result.get("mask_source", "ellipse")
    lungs = ("each image's own lung fields (segmenter" + (f"; {result['n_ellipse_fallback']} image(s) without a plausible "
             "pair fell back to the ellipses" if result.get("n_ellipse_fallback") else "") + ")") if source == "lungs" else "fixed ellipses"
    lines = [f"\nshortcut audit ({result['n']} images, {result['n_infected']} infected; lung fields: {lungs}):"]
    for r in result["conditions"].values():
        c = r["roc_auc_ci95"] or [None, None]
        auc = "n/a" if r["roc_auc"] is None else f"{r['roc_auc']:.3f}"
        lines.append(f"  {r['description']:52s} ROC-AUC {auc}" + (f" [{c[0]:.3f}, {c[1]:.3f}]" if c[0] is not None else ""))
    lines.append(result["verdict"])
    return "\n".join(lines)


def attention(a: dict) -> str:
    """The share of Grad-CAM inside the dilated lung fields: median [quartiles] and images mostly outside, by group."""
    def row(name: str, d: dict) -> str:
        if not d.get("n"):
            return f"  {name:24s} n/a"
        return (f"  {name:24s} n={d['n']:4d}  median {d['median']:.2f} [{d['q25']:.2f}, {d['q75']:.2f}]  "
                f"mostly outside the lungs: {d['mostly_outside']:.0%}")
    lines = ["Grad-CAM inside the dilated lung fields:", row("all", a["overall"])]
    for key in ("per_class", "per_source"):
        lines += [row(name, d) for name, d in (a.get(key) or {}).items()]
    return "\n".join(lines)


def lung_overlap(sources: dict, prefix: str = "") -> str:
    """Dice and IoU of the lung segmenter per source, with intervals; sources it was not trained on said so."""
    def with_ci(f: dict, key: str) -> str:
        c = f.get(f"{key}_ci95") or [None, None]
        return f"{f[key]:.3f}" + (f" [{c[0]:.3f}, {c[1]:.3f}]" if c[0] is not None else "")

    return "\n".join(f"{prefix}{source:10s} n={f['n']:3d}  Dice {with_ci(f, 'dice')}  IoU {with_ci(f, 'iou')}"
                     + ("" if f["trained_on"] else "  (external: not trained on)") for source, f in sources.items())


def adaptation(r: dict) -> str:
    return "\n".join(f"  {name:6s} ROC-AUC {ci(r[name], 'roc_auc')}  sensitivity {ci(r[name], 'sensitivity')}  "
                     f"specificity {ci(r[name], 'specificity')}" for name in ("before", "after"))


def predictions(df: pd.DataFrame, threshold: float, rule: str, out: str, to_stdout: bool) -> str:
    """The first screenful of a predictions table, the counts, and what got no decision or is unlike training."""
    shown = df.head(SCREENFUL)
    width = min(60, max(len(p) for p in shown["path"]))
    ood = "out_of_distribution" in df
    lines = [f"{'P(infected)':>11s}  {'threshold':>9s}  {'predicted':9s}  {'unlike training' if ood else ''}  path"]
    lines += [f"{r.p_infected:11.3f}  {r.threshold:9.3f}  {r.predicted or '(none)':9s}  "
              f"{('YES' if r.out_of_distribution else 'no').ljust(15) if ood else ''}  {tail(r.path, width)}" for r in shown.itertuples()]
    if len(df) > SCREENFUL:
        lines.append(f"... and {len(df) - SCREENFUL} more" + ("" if to_stdout else f" (all in {out})"))
    n_inf, n_normal = int((df["predicted"] == "infected").sum()), int((df["predicted"] == "normal").sum())
    lines.append(f"{len(df)} image{'s' if len(df) != 1 else ''}: {n_inf} predicted infected, {n_normal} normal (threshold {threshold:.3f}, "
                 f"{rule or 'chosen on validation'}). Research tool, not a diagnostic device.")
    unread = df[df["image_quality"] != "ok"]
    if len(unread):
        lines.append(f"{len(unread)} image(s) got no decision (image_quality): " + "; ".join(
            f"{tail(r.path, 40)}: {r.image_quality}" for r in unread.head(3).itertuples()) + (" ..." if len(unread) > 3 else ""))
    if "lungs_found" in df and not df["lungs_found"].all():
        lines.append(f"{int((~df['lungs_found']).sum())} image(s): no plausible pair of lung fields found (lungs_found; "
                     "lung_fields says what was found): not a frontal chest X-ray as the model knows one.")
    if ood and df["out_of_distribution"].any():
        lines.append(f"{int(df['out_of_distribution'].sum())} image(s) are unlike the training data: the model's output "
                     "there is not supported by its validation figures.")
    if not to_stdout:
        lines.append(f"written: {out}")
    return "\n".join(lines)


def comparison(r: dict) -> str:
    lines = [f"{r['data']} split {r['split']}: {r['n']} images, {r['n_infected']} infected",
             f"{'run':32s} {'model':18s} {'loss':6s} {'ROC-AUC [95% CI]':>24s} {'acc':>7s} {'sens':>7s} {'spec':>7s} {'F1':>7s}"]
    for row in r["runs"]:
        c = row["roc_auc_ci95"]
        auc = f"{row['roc_auc']:.3f}" + (f" [{c[0]:.3f}, {c[1]:.3f}]" if c and c[0] is not None else "")
        lines.append(f"{Path(row['run']).name[:32]:32s} {str(row['model'])[:18]:18s} {str(row['loss'])[:6]:6s} {auc:>24s} "
                     f"{row['accuracy']:7.3f} {row['sensitivity']:7.3f} {row['specificity']:7.3f} {row['f1_infected']:7.3f}")
    for t in r["delong_vs_first"]:
        lines.append(f"DeLong {Path(t['run_2']).name} - {Path(t['run_1']).name}: AUC difference {-t['difference']:+.3f} "
                     f"(95% CI [{-t['ci95'][1]:+.3f}, {-t['ci95'][0]:+.3f}]), p = {t['p_value']:.3g}")
    return "\n".join(lines)


def data_check(r: dict) -> str:
    lines = [f"{split:11s} {info['n']:6d} images  " + ", ".join(f"{k}: {v}" for k, v in sorted(info["classes"].items()))
             for split, info in r["splits"].items()]
    if len(r.get("per_source") or {}) > 1:
        lines += [f"source {src}: " + ", ".join(f"{k}: {v}" for k, v in c.items()) for src, c in r["per_source"].items()]
    lines.append("modes: " + ", ".join(f"{k}: {v}" for k, v in sorted(r["modes"].items())))
    lines += [f"{k}: min {v['min']}, median {v['median']}, max {v['max']}" for k, v in r["sizes"].items()]
    lines += [f"NOTE {w}" for w in r["warnings"]]
    lines += [f"UNREADABLE {u['reason']}" for u in r["unreadable"]]
    lines += [f"LEAK {d['kind']}: {d['a']} ({d['split_a']}) ~ {d['b']} ({d['split_b']})" for d in r["duplicates_across_splits"]]
    lines += [f"LEAK patient {pid} in {', '.join(splits)}" for pid, splits in r["patients_in_several_splits"].items()]
    lines += [f"CONFLICT {d['kind']} with two labels in {d['split_a']}: {d['a']} ({d['label_a']}) ~ {d['b']} ({d['label_b']})"
              for d in r["conflicting_labels"]]
    return "\n".join(lines)


def imported(r) -> str:
    """What `data import` read, mapped and skipped."""
    lines = [f"{r.format} at {r.root}: read {r.read}, imported {len(r.rows)}"]
    lines += ["mapping (dataset -> class; override with --map NAME=CLASS):"]
    lines += [f"  {k} -> {v}" for k, v in sorted(r.mapping.items())]
    lines += ["images per split and class:"] + [f"  {k}: {dict(sorted(v.items()))}" for k, v in r.counts().items()]
    if r.skipped:
        lines += ["skipped:"] + [f"  {n:6d}  {reason}" for reason, n in r.skipped.most_common()]
    lines += [f"note: {n}" for n in r.notes]
    return "\n".join(lines)


def merged(r) -> str:
    """What `data merge` kept, found and dropped."""
    lines = [f"dataset {k}: " + ", ".join(f"{c}: {n}" for c, n in v.items()) for k, v in r.per_dataset.items()]
    kinds = Counter(d["kind"].split(" (")[0] + ", " + d["action"].split(" (")[0].split(",")[0] for d in r.duplicates)
    lines += [f"copies: {n} pair(s) {k}" for k, n in sorted(kinds.items())]
    lines += [f"dropped: {n} row(s): {reason}" for reason, n in r.dropped.most_common()]
    lines += ["splits: " + ", ".join(f"{k}: {v}" for k, v in sorted(r.splits.items()))]
    lines += [f"note: {n}" for n in r.notes]
    return "\n".join(lines)


def crossval(r: dict) -> str:
    """The crossval table: each held-out part, then the mean over those scored whole."""
    def f(v):
        return "  n/a" if v is None else f"{v:.3f}"

    def ci(v):
        return "" if not v or v[0] is None else f" [{v[0]:.3f}, {v[1]:.3f}]"

    lines = [f"{'held out':40s} {'n (inf)':>11s} {'ROC-AUC [95% CI]':>24s} {'sensitivity':>12s} {'specificity':>12s}"
             + ("  in-distribution ROC-AUC" if r["by"] == "source" else "")]
    for row in r["folds"]:
        auc = f(row["roc_auc"]) + ci(row["roc_auc_ci95"]) if row["scored_whole"] else "one class: n/a"
        line = (f"{row['held_out'][:40]:40s} {row['n']:5d} ({row['n_infected']:4d}) {auc:>24s} {f(row['sensitivity']):>12s} "
                f"{f(row['specificity']):>12s}")
        if "in_distribution_roc_auc" in row:
            line += f"  {f(row['in_distribution_roc_auc'])}{ci(row['in_distribution_roc_auc_ci95'])}"
        lines.append(line)
    lines.append(f"mean ROC-AUC over the {r['n_scored']} part(s) scored whole: {f(r['mean_roc_auc'])}")
    return "\n".join(lines)
