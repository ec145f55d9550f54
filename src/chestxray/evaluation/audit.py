"""A shortcut audit: does the model still separate the classes when it cannot see the lungs?

The same images are shown to the model four ways: as they are; with the lung fields hidden; with only
the lung fields kept; with the borders and corners (where markers, rulers and burnt-in text live)
hidden. The lung fields are each image's own, found by the lung segmenter (`mask_source` 'lungs': hidden grown by 2%
of the side so that no rim is left, kept grown by 5%), or a fixed pair of ellipses where the lungs of a frontal
radiograph lie ('ellipse', for comparison, and for an image where the segmenter finds no plausible pair). A model that keeps a high ROC-AUC with the lungs hidden is using something other than the
lungs (source, device, text, patient size): DeGrave et al. 2021, "AI for radiographic COVID-19 detection
selects shortcuts over signal".
"""

from __future__ import annotations

import numpy as np
import torch

from ..config import BOOTSTRAP_RESAMPLES
from ..data.datamodule import DecodedSplit
from ..data.sources import patient_groups
from ..models.predictor import Predictor
from .intervals import bootstrap_auc_ci
from .metrics import binary_metrics

HIDDEN_LUNGS_SUSPICIOUS = 0.70  # ROC-AUC with the lungs hidden at or above this: signals outside the lungs
BORDER = 0.12  # fraction of the side masked at each edge in the 'borders hidden' condition


def lung_mask(side: int) -> np.ndarray:
    """Two ellipses where the lung fields of a frontal chest radiograph lie (True inside)."""
    yy, xx = np.mgrid[0:side, 0:side] / side
    left = ((xx - 0.30) / 0.17) ** 2 + ((yy - 0.47) / 0.30) ** 2 <= 1
    right = ((xx - 0.70) / 0.17) ** 2 + ((yy - 0.47) / 0.30) ** 2 <= 1
    return left | right


def border_mask(side: int) -> np.ndarray:
    b = max(1, int(round(BORDER * side)))
    m = np.zeros((side, side), bool)
    m[:b], m[-b:], m[:, :b], m[:, -b:] = True, True, True, True
    return m


CONDITIONS = {
    "original": "the images as they are",
    "lungs_hidden": "lung fields hidden",
    "lungs_only": "only the lung fields kept",
    "borders_hidden": f"borders and corners hidden ({int(BORDER * 100)}% at each edge)",
}
MASK_SOURCES = ("lungs", "ellipse")
HIDE_GROW, KEEP_GROW = 0.02, 0.05  # per-image lungs: grown by these fractions of the side before hiding / keeping


def masked(images, hide: np.ndarray | list[np.ndarray]) -> np.ndarray:
    """A copy of the images with the `hide` region (one for all, or one per image) filled with each image's median grey."""
    out = np.stack([np.asarray(images[i]) for i in range(len(images))]) if len(images) else np.zeros((0, 1, 1), np.uint8)
    fill = np.median(out.reshape(len(out), -1), axis=1).astype(np.uint8) if len(out) else np.zeros(0, np.uint8)
    for i in range(len(out)):
        out[i][hide if isinstance(hide, np.ndarray) else hide[i]] = fill[i]
    return out


def regions(images, side: int, mask_source: str, lungs=None, fields: list | None = None
            ) -> tuple[dict[str, object], int]:
    """The region hidden under each condition (one mask, or one per image) and how many images fell back to the
    ellipses (per-image lungs where the segmenter found no plausible pair). `fields`: the segmenter's lung fields
    (models.lungs.LungFields) of the images where the caller has them, else `lungs` finds them."""
    ellipse = lung_mask(side)
    if mask_source == "ellipse":
        return {"lungs_hidden": ellipse, "lungs_only": ~ellipse, "borders_hidden": border_mask(side)}, 0
    from ..models.lungs import dilated

    if fields is None:
        fields = lungs.fields([np.asarray(images[i]) for i in range(len(images))])
    hidden, kept, fallback = [], [], 0
    for f in fields:
        m = f.mask
        if not f.found:
            m, fallback = ellipse if m.shape == ellipse.shape else lung_mask(m.shape[0]), fallback + 1
        hidden.append(dilated(m, HIDE_GROW))
        kept.append(~dilated(m, KEEP_GROW))
    return {"lungs_hidden": hidden, "lungs_only": kept, "borders_hidden": border_mask(side)}, fallback


def audit(predictor: Predictor, split: DecodedSplit, n_boot: int = BOOTSTRAP_RESAMPLES, seed: int = 0,
          original: torch.Tensor | None = None, mask_source: str = "lungs", lungs=None,
          lung_fields: list | None = None) -> dict:
    """ROC-AUC (with 95% intervals) of the model under each masking condition, and a plain verdict.

    `original`: the predictor's logits on the images as they are, where the caller has them (one pass fewer).
    `mask_source`: 'lungs' (each image's own, by the segmenter `lungs`, the packaged one where None; or from
    `lung_fields`, its fields of these images, where the caller has them) or 'ellipse'."""
    if mask_source not in MASK_SOURCES:
        raise ValueError(f"mask_source must be one of {MASK_SOURCES}; got {mask_source!r}")
    if mask_source == "lungs" and lungs is None and lung_fields is None:
        from ..models.lungs import default_lung_model

        lungs = default_lung_model()
    y = np.array([predictor.scheme.is_infected(s.label) for s in split.samples])
    groups = patient_groups(split.samples)
    side = split.images.side if hasattr(split.images, "side") else np.asarray(split.images[0]).shape[0]
    hide, fallback = regions(split.images, side, mask_source, lungs, lung_fields)
    results = {}
    for name, description in CONDITIONS.items():
        if name == "original" and original is not None:
            logits = original
        else:
            images = split.images if name == "original" else masked(split.images, hide[name])
            logits = predictor.forward(images, desc=f"shortcut audit, {description}")[0]
        p = predictor.p_infected(logits)
        m = binary_metrics(y, p, predictor.threshold)
        ci = bootstrap_auc_ci(y, p, groups, n_boot, seed) if n_boot else [None, None]
        results[name] = {"description": description, "roc_auc": m["roc_auc"], "roc_auc_ci95": ci,
                         "sensitivity": m["sensitivity"], "specificity": m["specificity"]}
    hidden, original = results["lungs_hidden"]["roc_auc"], results["original"]["roc_auc"]
    suspected = hidden is not None and hidden >= HIDDEN_LUNGS_SUSPICIOUS
    if hidden is None:
        verdict = "Not enough of both classes to audit."
    elif suspected:
        verdict = (f"Shortcut suspected: with the lung fields hidden the model still separates infected from normal "
                   f"(ROC-AUC {hidden:.3f}, against {original:.3f} on the full images). It uses signals outside the "
                   "lungs, such as the image's source, device, markers or text; its figures overstate what it knows "
                   "about the lungs.")
    else:
        verdict = (f"With the lung fields hidden the model separates the classes poorly (ROC-AUC {hidden:.3f}, against "
                   f"{original:.3f} on the full images): no sign here that it relies mainly on signals outside the "
                   "lungs. This masking test cannot rule out subtler shortcuts.")
    border = results["borders_hidden"]["roc_auc"]
    if border is not None and original is not None and original - border > 0.05:
        verdict += f" Hiding the borders alone lowers ROC-AUC by {original - border:.3f}: text or markers at the edges matter to it."
    return {"conditions": results, "shortcut_suspected": bool(suspected), "verdict": verdict,
            "threshold_hidden_lungs": HIDDEN_LUNGS_SUSPICIOUS, "n": int(len(y)), "n_infected": int(y.sum()),
            "mask_source": mask_source, "n_ellipse_fallback": int(fallback)}
