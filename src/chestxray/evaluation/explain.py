"""Grad-CAM overlays (pytorch-grad-cam) for the predicted class, in eval mode, batched."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..data.datamodule import DecodedDataset, make_loader
from ..data.sources import Sample
from ..models.backbones import spec_for
from ..models.lungs import LUNG_DILATION, dilated
from ..models.predictor import Predictor


def cam_target_layer(model: nn.Module) -> nn.Module:
    """The last convolutional stage of the backbone (where Grad-CAM keeps spatial detail), from its registry entry."""
    return spec_for(model).cam_layer(model)


def _targets(loaded: Predictor, logits: torch.Tensor):
    from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget, ClassifierOutputTarget

    scheme = loaded.scheme
    if scheme.task == "binary":
        return [BinaryClassifierOutputTarget(int(v >= loaded.threshold)) for v in loaded.p_infected(logits)]
    return [ClassifierOutputTarget(int(i)) for i in logits.argmax(1)]


def gradcam(loaded: Predictor, images, batch_size: int = 16) -> tuple[np.ndarray, torch.Tensor, np.ndarray]:
    """(CAMs in [0, 1] of shape (N, S, S), logits, the model-size grayscale images in [0, 1])."""
    from pytorch_grad_cam import GradCAM

    model = loaded.torch_model("Grad-CAM").eval()
    prep = loaded.preprocessing
    ds = DecodedDataset(images, None, prep.eval_transform())
    cams, logits, shown = [], [], []
    with GradCAM(model=model, target_layers=[cam_target_layer(model)]) as cam:
        for x8, _, _ in make_loader(ds, batch_size, train=False):
            x = prep.model_input(x8)
            with torch.no_grad():
                out = model(x).float()
            # gradients must reach the target layer even where the backbone is frozen (requires_grad off)
            cams.append(cam(input_tensor=x.requires_grad_(True), targets=_targets(loaded, out)))
            logits.append(out)
            shown.append(x8[:, 0].numpy() / 255.0)
    return np.concatenate(cams), torch.cat(logits), np.concatenate(shown)


def overlay(gray: np.ndarray, cam: np.ndarray) -> np.ndarray:
    from pytorch_grad_cam.utils.image import show_cam_on_image

    rgb = np.repeat(gray[..., None], 3, axis=2).astype(np.float32)
    return show_cam_on_image(rgb, cam.astype(np.float32), use_rgb=True)


def explain_paths(loaded: Predictor, paths: list[str], out: Path, skip_bad: bool = False) -> pd.DataFrame:
    """Write DIR/<name>_gradcam.png for each image and DIR/explanations.csv; return the table."""
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    split = loaded.decode([Sample(p, None) for p in paths], skip_bad)
    cams, logits, gray = gradcam(loaded, split.images)
    p = loaded.p_infected(logits)
    rows = []
    used: set[str] = set()
    for i, s in enumerate(split.samples):
        name = Path(s.path).stem
        while name in used:  # same file name in different folders
            name += "_"
        used.add(name)
        Image.fromarray(overlay(gray[i], cams[i])).save(out / f"{name}_gradcam.png")
        rows.append({"path": s.path, "overlay": str(out / f"{name}_gradcam.png"), "p_infected": round(float(p[i]), 6),
                     "predicted": str(loaded.decide(p[i : i + 1])[0])})
    df = pd.DataFrame(rows)
    df.to_csv(out / "explanations.csv", index=False)
    return df


def cam_grid_png(overlays: list, captions: list[str], title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(1, len(overlays))
    cols = min(4, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, img, cap in zip(axes.ravel(), overlays, captions):
        ax.imshow(img)
        ax.set_title(cap, fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def cam_caption(name: str, label: str, p_infected: float, threshold: float) -> str:
    predicted = "infected" if p_infected >= threshold else "normal"
    return f"{name[:28]}\ntrue {label}, predicted {predicted}\nP(inf) {p_infected:.2f} vs threshold {threshold:.2f}"


def cam_examples(
    loaded: Predictor, images, samples: list[Sample], logits: torch.Tensor, n: int = 4
) -> list[tuple[bytes, str]]:
    """Grad-CAM grids of up to `n` correct and `n` wrong predictions (the most confident of each).

    `logits` are the model's raw outputs on `images`, already computed by the caller.
    """
    if not len(samples):
        return []
    p = loaded.p_infected(logits)
    y = np.array([loaded.scheme.is_infected(s.label) for s in samples])
    pred = (p >= loaded.threshold).astype(int)
    confidence = np.abs(p - loaded.threshold)
    out = []
    for title, mask in (("correct", pred == y), ("wrong", pred != y)):
        idx = [int(i) for i in np.argsort(-confidence) if mask[i]][:n]
        if not idx:
            continue
        cams, _, gray = gradcam(loaded, [images[i] for i in idx])
        overlays = [overlay(g, c) for g, c in zip(gray, cams)]
        captions = [cam_caption(Path(samples[i].path).name, samples[i].label, float(p[i]), loaded.threshold) for i in idx]
        out.append((cam_grid_png(overlays, captions, f"{title} predictions"), f"Grad-CAM, {title} predictions"))
    return out


def attention_inside(cams: np.ndarray, masks: list[np.ndarray], fraction: float = LUNG_DILATION) -> np.ndarray:
    """Per image, the share of its Grad-CAM mass inside its dilated lung fields (cams and masks of the same size); NaN
    where the CAM is zero everywhere."""
    out = []
    for cam, mask in zip(cams, masks):
        total = float(cam.sum())
        out.append(float(cam[dilated(mask, fraction)].sum()) / total if total > 0 else float("nan"))
    return np.array(out)


def attention_in_lungs(loaded: Predictor, images, lungs) -> np.ndarray:
    """The share of each image's Grad-CAM (for its predicted class) inside its dilated lung fields, the lungs found by
    the segmenter `lungs` on the very image the model saw."""
    cams, _, shown = gradcam(loaded, images)
    masks = lungs.masks([(s * 255).round().astype(np.uint8) for s in shown])
    return attention_inside(cams, masks)


def attention_summary(share: np.ndarray, labels: list[str | None], sources: list[str | None]) -> dict:
    """The distribution of the attention share overall, per class and per source, and the fraction of images whose
    attention lies mostly (more than half) outside the lungs."""
    def describe(v: np.ndarray) -> dict:
        zero = int((~np.isfinite(v)).sum())  # a CAM that is zero everywhere has no share to measure
        v = v[np.isfinite(v)]
        if not len(v):
            return {"n": 0, "n_zero_cam": zero}
        return {"n": int(len(v)), "n_zero_cam": zero, "median": float(np.median(v)), "q25": float(np.percentile(v, 25)),
                "q75": float(np.percentile(v, 75)), "mostly_outside": float((v < 0.5).mean())}

    share = np.asarray(share, float)
    out = {"dilation_fraction_of_side": LUNG_DILATION, "overall": describe(share)}
    for key, values in (("per_class", labels), ("per_source", sources)):
        names = sorted({v for v in values if v})
        if names:
            out[key] = {n: describe(share[np.array([v == n for v in values])]) for n in names}
    return out
