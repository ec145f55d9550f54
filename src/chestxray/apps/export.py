"""`chestxray export`: a run's model as one ONNX file, verified against PyTorch before it is written.

The graph takes the decoded uint8 image and does the rest of the contract's arithmetic itself
(scaling, mean and std, temperature, P(infected)); the contract travels in the file's metadata
(`onnx_model.metadata`). Verification runs PyTorch and onnxruntime on the same real images (the run's
validation split unless images are given) and refuses to write the file when P(infected) differs by
more than the tolerance anywhere.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data.datamodule import decode_split
from ..data.sources import Sample, evaluation_samples
from ..errors import ChestXrayError
from ..evaluation.model_card import model_card
from ..files import atomic_path, sha256
from ..models.load import load_predictor
from ..models.lungs import largest_difference
from ..models.onnx_model import (
    CONTRACT_KEY,
    INPUT,
    LUNG_INPUT,
    LUNG_OUTPUT,
    LUNG_PREFIX,
    OUTPUTS,
    OnnxPredictor,
    metadata,
)
from ..models.predictor import Predictor, contract_outputs, run_directory
from ..rundir import RunDir, read_metrics

log = logging.getLogger(__name__)

OPSET = 18  # onnxruntime >= 1.14 runs it on CPU
TOLERANCE = 1e-4  # largest accepted difference in P(infected) between PyTorch and onnxruntime
VERIFY_IMAGES = 256


class ExportError(ChestXrayError):
    pass


class ContractGraph(nn.Module):
    """uint8 (N, 1, S, S) -> logits, probabilities, P(infected), pooled features: the Predictor's arithmetic."""

    def __init__(self, predictor: Predictor):
        super().__init__()
        self.model = predictor.torch_model("export")
        self.scheme = predictor.scheme
        self.preprocessing = predictor.preprocessing
        self.temperature = float(predictor.temperature)

    def forward(self, image: torch.Tensor):
        # normalisation (one channel broadcast to three) and the test-time views, as the Predictor does
        logits, features = contract_outputs(self.model, self.preprocessing.model_views(image))
        scaled = logits / self.temperature
        return logits, self.scheme.probabilities(scaled), self.scheme.p_infected(scaled), features


class SegmenterGraph(nn.Module):
    """The lung segmenter's part of an exported graph: normalised float (N, 3, s, s) -> lung logits (N, 1, s, s)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor):
        return self.net(image)


def onnx_graph(module: nn.Module, example: torch.Tensor, path: Path, outputs: list[str]) -> None:
    """`module` as an ONNX graph at `path`: one input `image`, batch size free.

    Written by torch's TorchScript-based exporter (`dynamo=False`, deprecated in favour of torch.export's but present in
    the pinned torch): on these networks it writes the same numbers about 5 to 9 times faster (the lung segmenter in
    3.4 s against 30 s here), and every file is verified against PyTorch before it is kept."""
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():  # the exporter narrates each step
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)  # constants (mean, std) taken as constants
        warnings.filterwarnings("ignore", ".*dynamo=False.*|.*TorchScript.*|.*deprecated.*")
        warnings.filterwarnings("ignore", ".*Constant folding.*")  # a Slice of the test-time views: left unfolded, same numbers
        torch.onnx.export(module, (example,), str(path), input_names=[INPUT], output_names=outputs, opset_version=OPSET,
                          dynamo=False, dynamic_axes={INPUT: {0: "batch"}, **{name: {0: "batch"} for name in outputs}})


def with_segmenter(model, predictor: Predictor, folder: Path):
    """The classifier's graph with the predictor's lung segmenter beside it (inputs and outputs named LUNG_PREFIX...)."""
    import onnx

    seg = predictor.segmenter
    side = seg.img_size
    path = folder / "segmenter.onnx"
    onnx_graph(SegmenterGraph(copy.deepcopy(seg.net).float()).eval(), torch.zeros(2, 3, side, side), path, ["logits"])
    lungs = onnx.compose.add_prefix(onnx.load(str(path)), LUNG_PREFIX)
    if [i.name for i in lungs.graph.input] != [LUNG_INPUT] or [o.name for o in lungs.graph.output] != [LUNG_OUTPUT]:
        raise ExportError(f"the lung segmenter's graph has inputs {[i.name for i in lungs.graph.input]} and outputs "
                          f"{[o.name for o in lungs.graph.output]}, not [{LUNG_INPUT}] and [{LUNG_OUTPUT}]")
    merged = onnx.compose.merge_models(model, lungs, io_map=[])
    # each input gets a default (an initializer of the same name, one blank image), so that either part runs fed alone
    for name, shape, dtype in ((INPUT, (1, 1, predictor.preprocessing.img_size, predictor.preprocessing.img_size), np.uint8),
                               (LUNG_INPUT, (1, 3, side, side), np.float32)):
        merged.graph.initializer.append(onnx.numpy_helper.from_array(np.zeros(shape, dtype), name))
    return merged


def verification_samples(predictor: Predictor, images: list[str] | None, limit: int) -> list[Sample]:
    """The given images, or the run's validation images (from its split.csv), at most `limit`."""
    if images:
        return [Sample(p, None) for p in images][:limit]
    split_csv = RunDir(run_directory(predictor.checkpoint)).split
    if not split_csv.exists():
        raise ExportError(f"{split_csv}: not found, so there are no validation images to verify the export on; "
                          "give images with --images")
    return evaluation_samples(split_csv, "val")[1][:limit]


def _data_summary(predictor: Predictor) -> dict:
    metrics = RunDir(run_directory(predictor.checkpoint)).metrics
    counts = read_metrics(metrics)[0].class_counts if metrics.exists() else None
    return {"data": predictor.meta.get("data_resolved"), "class_counts": counts}


def export_onnx(run: str | Path, out: str | Path, images: list[str] | None = None, tolerance: float = TOLERANCE,
                limit: int = VERIFY_IMAGES, skip_bad: bool = False) -> dict:
    """Write RUN's model to OUT (.onnx) once onnxruntime agrees with PyTorch on real images; return the figures."""
    import onnx

    t0 = time.time()
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise ExportError(f"{out}: the output name must end in .onnx")
    if out.is_dir():
        raise ExportError(f"{out}: is a folder; give a file name such as {out / 'model.onnx'}")
    predictor = load_predictor(run)
    graph = ContractGraph(predictor).eval()
    samples = verification_samples(predictor, images, limit)
    raw = decode_split(samples, predictor.preprocessing.img_size, skip_bad, "reading verification images")
    if not len(raw.samples):
        raise ExportError("no readable images to verify the export on")
    decoded = predictor.with_lung_input(raw)
    side = predictor.preprocessing.img_size
    example = torch.zeros(2, 1, side, side, dtype=torch.uint8)
    out.parent.mkdir(parents=True, exist_ok=True)
    # written beside OUT and renamed into place only once verified; removed on any failure
    with atomic_path(out) as tmp, tempfile.TemporaryDirectory() as work:
        onnx_graph(graph, example, tmp, list(OUTPUTS))
        model = onnx.load(str(tmp))
        if predictor.preprocessing.lung_input:
            model = with_segmenter(model, predictor, Path(work))
        model.producer_name = "chestxray"
        model.doc_string = (f"chestxray {predictor.meta.get('model_name')} ({predictor.scheme.task}), research use only. "
                            f"Input '{INPUT}': uint8 (batch, 1, {side}, {side}); contract in metadata '{CONTRACT_KEY}'.")
        source_sha = sha256(predictor.checkpoint)
        for key, value in metadata(predictor, source_sha, _data_summary(predictor), model_card(predictor)).items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(model, str(tmp))
        exported = OnnxPredictor.load(tmp)
        p_torch = predictor.p_infected(predictor.logits(decoded.images))
        # each runtime's own lung input (its segmenter, then the crop or mask) where the model has one
        onnx_decoded = exported.with_lung_input(raw)
        p_onnx = exported.p_infected(exported.logits(onnx_decoded.images))
        lung_diff = None if decoded.lung_fields is None else largest_difference(predictor.segmenter, exported.segmenter, raw.images)
        p_graph = exported.run_graph(decoded.images, "p_infected").astype(np.float64)
        diff = float(max(np.abs(p_torch - p_onnx).max(), np.abs(p_torch - p_graph).max()))
        disagree = int((predictor.decide(p_torch) != predictor.decide(p_onnx)).sum())
        if not diff <= tolerance:  # NaN fails too
            raise ExportError(f"{out}: not written: onnxruntime and PyTorch differ by {diff:.2e} in P(infected) on "
                              f"{len(p_torch)} images (tolerance {tolerance:.0e})")
    return {"path": str(out), "n_images": len(p_torch), "max_abs_diff_p_infected": diff, "decisions_differing": disagree,
            "max_abs_diff_lung_probability": lung_diff,
            "tolerance": tolerance, "opset": OPSET, "source_checkpoint": str(predictor.checkpoint), "source_sha256": source_sha,
            "bytes": out.stat().st_size, "skipped": [str(e) for e in decoded.errors], "seconds": time.time() - t0}
