"""Metrics as terminal text: one table row per split or stage, one line of 95% intervals."""

from __future__ import annotations

SUMMARY_KEYS = ("accuracy", "sensitivity", "specificity", "precision", "f1_infected", "macro_f1", "roc_auc", "pr_auc")


def ci_line(metrics: dict, name: str = "at_val_threshold") -> str:
    """One line of 95% intervals for the main metrics of one operating point."""
    b = metrics.get("bootstrap", {})
    ci = metrics["binary"][name].get("ci95") or {}
    if not ci:
        return ""
    parts = [f"{k} [{_fmt(ci[k][0]).strip()}, {_fmt(ci[k][1]).strip()}]"
             for k in ("roc_auc", "accuracy", "sensitivity", "specificity", "f1_infected") if k in ci]
    return f"95% CI ({b.get('resamples')} {b.get('unit')}-level bootstrap resamples, seed {b.get('seed')}): " + ", ".join(parts)


def _fmt(v) -> str:
    return "  n/a" if v is None else f"{v:.3f}"


def summary_table(rows: dict[str, dict]) -> str:
    """rows: name -> binary metrics dict. One line per row, one column per metric."""
    head = f"{'':28s}" + "".join(f"{k[:11]:>12s}" for k in SUMMARY_KEYS)
    lines = [head]
    for name, m in rows.items():
        lines.append(f"{name[:28]:28s}" + "".join(f"{_fmt(m.get(k)):>12s}" for k in SUMMARY_KEYS))
    lines += [f"{name.strip()}: ROC-AUC and PR-AUC {m['auc_note']}" for name, m in rows.items() if m.get("auc_note")]
    return "\n".join(lines)
