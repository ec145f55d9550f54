"""report.html: one self-contained file (images embedded) with the evidence a reviewer asks for."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import yaml

from ..files import write_text
from ..notices import RESEARCH_NOTE, SYNTHETIC_NOTE
from ..rundir import RunDir

KEYS = ("roc_auc", "pr_auc", "accuracy", "sensitivity", "specificity", "precision", "f1_infected", "macro_f1")

CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222;line-height:1.4}
h1{margin-bottom:.2em} table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
td,th{border:1px solid #ccc;padding:.25em .5em;text-align:right} th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left} .warn{background:#fff3cd;border:1px solid #e0c36c;padding:.6em 1em}
.synthetic{background:#f8d7da;border:1px solid #d9534f;padding:.6em 1em;font-weight:bold}
img{max-width:100%} .grid{display:flex;flex-wrap:wrap;gap:1em} .grid img{max-width:520px}
pre{background:#f6f6f6;padding:.8em;font-size:.8em;overflow:auto;max-height:320px}
.ci{color:#666;font-size:.85em}
"""


def _img(path: Path) -> str:
    if not path.exists():
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(path.stem)}">'


def _png_bytes_img(data: bytes, alt: str) -> str:
    return f'<img src="data:image/png;base64,{base64.b64encode(data).decode()}" alt="{html.escape(alt)}">'


def _v(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _cell(m: dict, k: str) -> str:
    """A table cell: the value, and its 95% interval below it when there is one."""
    if k in ("roc_auc", "pr_auc") and m.get("auc_note"):
        return f"<td>{html.escape(m['auc_note'])}</td>"
    c = (m.get("ci95") or {}).get(k)
    extra = f'<br><span class="ci">[{_v(c[0])}, {_v(c[1])}]</span>' if c and c[0] is not None else ""
    return f"<td>{_v(m.get(k))}{extra}</td>"


def metrics_table(binary: dict, thresholds: dict) -> str:
    rows = ["<tr><th>operating point</th><th>threshold</th>" + "".join(f"<th>{k}</th>" for k in KEYS) + "</tr>"]
    for name, m in binary.items():
        cells = "".join(_cell(m, k) for k in KEYS)
        rows.append(f"<tr><td>{html.escape(name[3:])}</td><td>{m['threshold']:.3f}</td>{cells}</tr>")
    return "<table>" + "".join(rows) + "</table>"


def ood_line(ood: dict) -> str:
    """One sentence on the images unlike the training data (terminal and report)."""
    text = (f"{ood['n_flagged']} of {ood['n']} images "
            f"({100 * ood['fraction_flagged']:.1f}%) are unlike the training data (score above the "
            f"{100 * ood['quantile_of_validation']:g}th percentile of validation images)")
    m = ood.get("in_distribution")
    if m:
        text += (f"; on the other {m['n']}: ROC-AUC {_v(m['roc_auc'])}, sensitivity {_v(m['sensitivity'])}, "
                 f"specificity {_v(m['specificity'])} at the validation threshold")
    return text + "."


def lungs_line(lungs: dict) -> str:
    """One sentence on the images without a plausible pair of lung fields (terminal, report, card)."""
    text = (f"{lungs['n_not_found']} of {lungs['n']} images ({100 * lungs['fraction_not_found']:.1f}%) have no plausible "
            "pair of lung fields by the lung segmenter (lungs_found in the predictions file)")
    if lungs.get("not_found_by_label"):
        text += " (" + ", ".join(f"{k}: {v}" for k, v in sorted(lungs["not_found_by_label"].items())) + ")"
    return text + "; they stay in the figures."


def lungs_section(lungs: dict | None) -> list[str]:
    if not lungs:
        return []
    cls = "warn" if lungs["fraction_not_found"] > 0.05 else ""
    return ["<h3>Lung check</h3>", f'<p class="{cls}">{html.escape(lungs_line(lungs))} Such an image (a lateral view, another '
            "body part, a screenshot) is not a frontal chest film as the model knows one.</p>"]


def attention_section(a: dict | None) -> list[str]:
    if not a:
        return []
    rows = [("all", a["overall"])] + [(k, v) for key in ("per_class", "per_source") for k, v in (a.get(key) or {}).items()]
    cells = "".join(f"<tr><td>{html.escape(name)}</td><td>{d.get('n', 0)}</td><td>{_v(d.get('median'))}</td>"
                    f"<td>{_v(d.get('q25'))} to {_v(d.get('q75'))}</td><td>{_v(d.get('mostly_outside'))}</td></tr>" for name, d in rows)
    return ["<h3>Grad-CAM inside the lungs</h3>",
            "<p>The share of each image's Grad-CAM mass inside its lung fields (found by the lung segmenter, grown by "
            f"{100 * a['dilation_fraction_of_side']:g}% of the side). Attention mostly outside the lungs is a hint of a "
            "shortcut, not proof; attention inside them is not proof of the opposite.</p>",
            "<table><tr><th>group</th><th>n</th><th>median share</th><th>quartiles</th><th>mostly outside</th></tr>"
            + cells + "</table>"]


def ood_section(ood: dict | None) -> list[str]:
    if not ood:
        return []
    cls = "warn" if ood["fraction_flagged"] > 0.1 else ""
    return ["<h3>Images unlike the training data</h3>",
            f'<p class="{cls}">{html.escape(ood_line(ood))} A flagged image is outside what the validation '
            "figures support; the model's output there is not evidence of anything.</p>"]


def audit_section(audit: dict | None) -> list[str]:
    if not audit:
        return []
    rows = ["<tr><th>images shown to the model</th><th>ROC-AUC</th><th>95% CI</th></tr>"]
    for name, r in audit["conditions"].items():
        ci = r.get("roc_auc_ci95") or [None, None]
        rows.append(f"<tr><td>{html.escape(r['description'])}</td><td>{_v(r['roc_auc'])}</td><td>[{_v(ci[0])}, {_v(ci[1])}]</td></tr>")
    source = ("each image's own lung fields, by the lung segmenter" if audit.get("mask_source") == "lungs"
              else "a fixed pair of ellipses where the lungs of a frontal film lie")
    return ["<h3>Shortcut audit</h3>", f"<p>Lung fields: {source}.</p>", "<table>" + "".join(rows) + "</table>",
            f'<p class="{"warn" if audit["shortcut_suspected"] else ""}">{html.escape(audit["verdict"])}</p>']


def header_section(metrics: dict) -> list[str]:
    """Title, what was evaluated, and the research (and synthetic or external) notes."""
    parts = [f"<h1>chestxray report</h1><p>{html.escape(str(metrics.get('data')))}, split <b>{html.escape(str(metrics.get('split')))}</b>"
             f", model {html.escape(str(metrics.get('model')))}"
             + (f", final stage {html.escape(str(metrics['final_stage']))}" if metrics.get("final_stage") else "") + "</p>",
             f'<p class="warn"><b>{RESEARCH_NOTE}</b> These figures describe this dataset and split only.</p>']
    if metrics.get("synthetic"):
        parts.append(f'<p class="synthetic">{SYNTHETIC_NOTE}</p>')
    if metrics.get("external"):
        parts.append('<p class="warn"><b>External evaluation:</b> this data was not the training data of the model.</p>')
    return parts


def data_section(metrics: dict) -> list[str]:
    """Class counts per split and what was evaluated."""
    parts = ["<h2>Data</h2>"]
    counts = metrics.get("class_counts")
    if counts:
        classes = sorted({c for v in counts.values() for c in v})
        parts.append("<table><tr><th>split</th>" + "".join(f"<th>{c}</th>" for c in classes) + "</tr>"
                     + "".join(f"<tr><td>{s}</td>" + "".join(f"<td>{v.get(c, 0)}</td>" for c in classes) + "</tr>" for s, v in counts.items())
                     + "</table>")
    b0 = metrics["binary"]["at_0.5"]
    parts.append(f"<p>Evaluated: {b0['n']} images, {b0['n_infected']} infected, {b0['n_normal']} normal.")
    if metrics.get("unreadable_skipped"):
        parts.append(f" Skipped as unreadable: {len(metrics['unreadable_skipped'])}.")
    parts.append("</p>")
    return parts


def metrics_section(metrics: dict) -> list[str]:
    """The operating points, each stage's best checkpoint, the per-source rows and calibration."""
    boot = metrics.get("bootstrap", {})
    parts = ["<h2>Metrics (infected vs normal)</h2>",
             f"<p>Thresholds other than 0.5 were chosen on the validation split and are only reported here. "
             f"Brackets: 95% bootstrap intervals ({boot.get('resamples')} {boot.get('unit')}-level resamples, seed {boot.get('seed')}).</p>",
             metrics_table(metrics["binary"], metrics.get("operating_points", {}))]
    if metrics.get("stages"):
        parts.append("<h3>Each stage's best checkpoint (threshold 0.5)</h3><table><tr><th>stage / split</th>"
                     + "".join(f"<th>{k}</th>" for k in KEYS) + "</tr>")
        for stage, r in metrics["stages"].items():
            for split in ("val", "test"):
                if split in r:
                    parts.append(f"<tr><td>{stage} / {split}</td>" + "".join(f"<td>{_v(r[split].get(k))}</td>" for k in KEYS) + "</tr>")
        parts.append("</table>")
    if metrics.get("per_source"):
        parts.append("<h3>Per source (validation threshold)</h3><table><tr><th>source</th><th>n</th><th>infected</th>"
                     + "".join(f"<th>{k}</th>" for k in KEYS) + "</tr>")
        for src, m in metrics["per_source"].items():
            parts.append(f"<tr><td>{html.escape(src)}</td><td>{m['n']}</td><td>{m['n_infected']}</td>"
                         + "".join(_cell(m, k) for k in KEYS) + "</tr>")
        parts.append("</table>")
    cal = metrics.get("calibration", {})
    if cal:
        line = f"Expected calibration error {cal['ece']:.3f}"
        if "ece_uncalibrated" in cal:
            line += f" after temperature scaling (T = {cal['temperature']:.2f}, fitted on validation); {cal['ece_uncalibrated']:.3f} before"
        parts.append(f"<p>{line}.</p>")
    return parts


def figures_section(plots: Path, cam_pngs: list[tuple[bytes, str]]) -> list[str]:
    """The curves and the Grad-CAM grids, embedded."""
    parts = ["<h2>Curves</h2><div class='grid'>"]
    for name in ("learning_curves", "roc", "pr", "confusion", "reliability", "confusion_multiclass"):
        parts.append(_img(plots / f"{name}.png"))
    parts.append("</div>")
    if cam_pngs:
        parts.append("<h2>Grad-CAM</h2><p>Where the model looked, for the predicted class. Heat on text, markers or "
                     "borders rather than the lungs is a warning sign.</p>")
        parts += [f"<p>{_png_bytes_img(data, alt)}</p>" for data, alt in cam_pngs]
    return parts


def caveats_section(metrics: dict) -> list[str]:
    caveats = [
        "A research tool, not a diagnostic device: nothing here is evidence of clinical performance.",
        f"The evaluated split has {metrics['binary']['at_0.5']['n']} images; read every figure with its interval.",
        "Datasets that draw classes from different sources let a model learn the source instead of the disease: compare the per-source rows and validate externally.",
    ]
    if metrics.get("synthetic"):
        caveats.insert(0, SYNTHETIC_NOTE)
    else:
        caveats.append("Labels mined from reports (as in NIH ChestX-ray) are noisy.")
    return ["<h2>Caveats</h2><ul>"] + [f"<li>{html.escape(c)}</li>" for c in caveats] + ["</ul>"]


def write_report(outdir: Path, metrics: dict, config: dict | None = None, cam_pngs: list[tuple[bytes, str]] = ()) -> Path:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>chestxray report</title><style>{CSS}</style></head><body>"]
    parts += header_section(metrics)
    parts += data_section(metrics)
    parts += metrics_section(metrics)
    parts += ood_section(metrics.get("out_of_distribution"))
    parts += lungs_section(metrics.get("lungs"))
    parts += attention_section(metrics.get("attention"))
    parts += audit_section(metrics.get("audit"))
    parts += figures_section(RunDir(outdir).plots, cam_pngs)
    parts += caveats_section(metrics)
    if config:
        parts.append(f"<h2>Configuration</h2><pre>{html.escape(yaml.safe_dump(config, sort_keys=False))}</pre>")
    parts.append("</body></html>")
    path = RunDir(outdir).report
    write_text(path, "\n".join(parts))
    return path
