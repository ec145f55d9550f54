"""One entry point for every trained model: a run directory, its checkpoints/best.ckpt, or an exported .onnx file."""

from __future__ import annotations

from pathlib import Path

from .onnx_model import OnnxPredictor
from .predictor import Predictor, checkpoint_path


def load_predictor(model: str | Path) -> Predictor:
    """The Predictor of `model`; an exported file runs on onnxruntime, everything else on PyTorch
    (`engines.load_on` runs a run directory on onnxruntime too)."""
    path = checkpoint_path(model)
    if path.suffix.lower() == ".onnx":
        return OnnxPredictor.load(path)
    return Predictor.load(path)
