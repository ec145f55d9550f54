"""Which runtime runs a model: PyTorch, or onnxruntime through a run's own verified export."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from ..data.cache import default_cache_dir
from ..errors import ChestXrayError
from ..files import atomic_path, file_lock, sha256
from ..models.load import load_predictor
from ..models.lungs import PACKAGED, LungModel, LungModelError, default_lung_model, largest_difference
from ..models.onnx_model import OnnxLungModel, OnnxPredictor
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
        return onnx_beside(path)
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


def onnx_beside(ckpt: Path) -> OnnxPredictor:
    """The model of checkpoints/best.onnx: the checkpoint's ONNX export, made on first use by `chestxray export`'s own
    code (so verified against PyTorch on the run's validation images, within its tolerance in P(infected)), and made
    again when the checkpoint it came from has changed."""
    out = ckpt.with_suffix(".onnx")
    if out.exists():
        try:
            predictor = OnnxPredictor.load(out)
            made_from = (predictor.export.get("source_checkpoint") or {}).get("sha256")
        except (CheckpointError, OSError, ValueError):
            predictor, made_from = None, None
        if made_from == sha256(ckpt):
            return predictor
        log.warning("%s: not the export of %s as it is now; exporting again", out, ckpt)
    log.info("exporting %s for onnxruntime (once; verified against PyTorch on the run's validation images)", ckpt)
    r = export_onnx(ckpt, out)
    log.info("verified on %d images: largest difference in P(infected) %.1e; written %s", r["n_images"],
             r["max_abs_diff_p_infected"], out)
    return OnnxPredictor.load(out)


def lung_model_on(predictor: Predictor, path: str | Path | None = None) -> LungModel:
    """The lung check's segmenter (the packaged one, or the file at `path`) on the runtime that runs `predictor`: on
    onnxruntime for an exported model (`onnx_lungs`), so that a prediction there never imports timm or torchvision."""
    if isinstance(predictor, OnnxPredictor):
        return onnx_lungs(path)
    return default_lung_model(path)


_ONNX_LUNGS: dict[str, OnnxLungModel] = {}


def onnx_lungs(path: str | Path | None = None) -> OnnxLungModel:
    """The segmenter at `path` (None: the packaged one) as an ONNX graph run by onnxruntime: exported once into the
    cache (`$CHESTXRAY_CACHE/lungs/<the file's SHA-256>.onnx`) and kept only if its P(lung) is within LUNG_TOLERANCE of
    PyTorch's on generated chest phantoms; loaded once per process."""
    import onnxruntime as ort

    src = Path(path) if path else PACKAGED
    if not src.is_file():
        raise LungModelError(f"{src}: no lung segmenter there (train one with `chestxray lungs train`)")
    digest = sha256(src)
    if digest not in _ONNX_LUNGS:
        if src == PACKAGED and digest != json.loads(src.with_suffix(".json").read_text())["sha256"]:
            LungModel.load(src)  # raises: the packaged file is not the one recorded
        out = default_cache_dir() / "lungs" / f"{digest}.onnx"
        options = ort.SessionOptions()
        options.log_severity_level = 3
        with file_lock(out.with_suffix(".lock")):
            if not out.exists():
                export_lungs(default_lung_model(path), out)
            try:
                session = ort.InferenceSession(str(out), options, providers=["CPUExecutionProvider"])
            except Exception as e:  # a damaged cache file: made again, once
                log.warning("%s: onnxruntime cannot load it (%s); exporting the segmenter again", out, e)
                export_lungs(default_lung_model(path), out)
                session = ort.InferenceSession(str(out), options, providers=["CPUExecutionProvider"])
        side = int(session.get_inputs()[0].shape[-1])
        _ONNX_LUNGS[digest] = OnnxLungModel(net=None, img_size=side, path=src.resolve(), session=session,
                                            names=(session.get_inputs()[0].name, session.get_outputs()[0].name))
    return _ONNX_LUNGS[digest]


LUNG_TOLERANCE = 1e-4  # largest accepted difference in P(lung) between PyTorch and onnxruntime


def export_lungs(model: LungModel, out: Path) -> None:
    """`model`'s network as an ONNX graph at `out`, verified against PyTorch on generated phantoms before it is kept."""
    import copy
    import tempfile

    import numpy as np
    import onnxruntime as ort
    import torch

    from ..data.synthetic import phantom
    from .export import SegmenterGraph, onnx_graph

    log.info("exporting the lung segmenter %s for onnxruntime (once)", model.path)
    rng = np.random.default_rng(0)
    images = [phantom(rng, label, 256)[0] for label in ("normal", "pneumonia", "covid", "normal")]
    with tempfile.TemporaryDirectory() as work:
        tmp = Path(work) / "lungs.onnx"
        side = model.img_size
        onnx_graph(SegmenterGraph(copy.deepcopy(model.net).float()).eval(), torch.zeros(2, 3, side, side), tmp, ["logits"])
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        ours = OnnxLungModel(net=None, img_size=side, session=session, names=("image", "logits"))
        diff = largest_difference(ours, model, images)
        if diff > LUNG_TOLERANCE:
            raise LungModelError(f"{model.path}: its ONNX export differs from PyTorch by {diff:.1e} in P(lung) "
                                 f"(tolerance {LUNG_TOLERANCE:.0e}); use --engine torch")
        with atomic_path(out) as final:
            final.write_bytes(tmp.read_bytes())
