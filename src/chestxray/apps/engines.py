"""Which runtime runs a model: PyTorch, or onnxruntime through a run's own verified export."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ChestXrayError
from ..files import sha256
from ..models.load import load_predictor
from ..models.onnx_model import OnnxPredictor, read_export
from ..models.predictor import CheckpointError, Predictor, checkpoint_path
from .export import export_onnx

if TYPE_CHECKING:
    import torch

log = logging.getLogger("chestxray")

ENGINES = ("torch", "onnx")


def load_on(model: str | Path, engine: str = "torch", device: str = "cpu") -> Predictor:
    """The Predictor of `model`. An exported file runs on onnxruntime; a run directory or checkpoint on PyTorch, or with
    `engine` 'onnx' on onnxruntime through its verified export kept beside the checkpoint (`onnx_beside`).

    `device`: where PyTorch runs the network ('cpu', 'cuda', 'cuda:1', or 'auto': the first GPU where there is one);
    onnxruntime runs on the CPU."""
    if engine not in ENGINES:
        raise ChestXrayError(f"--engine must be one of {', '.join(ENGINES)}; got '{engine}'")
    target = resolve_device(device)
    path = checkpoint_path(model)
    if (engine == "onnx" or path.suffix.lower() == ".onnx") and target.type != "cpu":
        raise ChestXrayError(f"--device {device}: onnxruntime runs on the CPU here; use --engine torch on a GPU")
    if engine == "onnx" and path.suffix.lower() != ".onnx":
        return OnnxPredictor.load(onnx_beside(path))
    predictor = load_predictor(path)
    if target.type != "cpu" and predictor.model is not None:
        predictor.model.to(target)
    return predictor


def resolve_device(device: str) -> torch.device:
    """'auto' is the first CUDA GPU where there is one, else the CPU; a named GPU must be visible."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        target = torch.device(device)
    except RuntimeError as e:
        raise ChestXrayError(f"--device: '{device}' is not a device (cpu, cuda, cuda:N or auto)") from e
    if target.type == "cuda" and (not torch.cuda.is_available()
                                  or (target.index or 0) >= torch.cuda.device_count()):
        raise ChestXrayError(f"--device {device}: no such CUDA GPU is visible on this machine (use cpu or auto)")
    if target.type not in ("cpu", "cuda"):
        raise ChestXrayError(f"--device {device}: only cpu and cuda are supported for prediction")
    return target


def onnx_beside(ckpt: Path) -> Path:
    """checkpoints/best.onnx: the checkpoint's ONNX export, made on first use by `chestxray export`'s own code (so
    verified against PyTorch on the run's validation images, within its tolerance in P(infected)), and made again
    when the checkpoint it came from has changed."""
    out = ckpt.with_suffix(".onnx")
    if out.exists():
        try:
            made_from = (read_export(out)[1].get("source_checkpoint") or {}).get("sha256")
        except (CheckpointError, OSError, ValueError):
            made_from = None
        if made_from == sha256(ckpt):
            return out
        log.warning("%s: not the export of %s as it is now; exporting again", out, ckpt)
    log.info("exporting %s for onnxruntime (once; verified against PyTorch on the run's validation images)", ckpt)
    r = export_onnx(ckpt, out)
    log.info("verified on %d images: largest difference in P(infected) %.1e; written %s", r["n_images"],
             r["max_abs_diff_p_infected"], out)
    return out
