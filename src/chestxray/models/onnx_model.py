"""The model contract in an ONNX file, and a Predictor that runs it on onnxruntime.

An exported file holds the network with its input normalisation, temperature and P(infected) inside
the graph, and the rest of the contract (classes, task scheme, preprocessing, operating points and the
threshold in use, the out-of-distribution density, where it came from) as JSON in the metadata key
`chestxray.contract`. The file alone is enough to predict as `chestxray predict RUN` does.

Graph input `image`: uint8, shape (batch, 1, img_size, img_size): the decoded grayscale image after the
preprocessing's resize rule (and per-image intensity step, if any). Outputs: `logits` (before
temperature), `probabilities` (per output, temperature applied), `p_infected` (batch,), `features`
(pooled backbone features, for the out-of-distribution score).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.datamodule import DecodedDataset, make_loader
from ..data.labels import TaskScheme
from ..data.transforms import Preprocessing
from .ood import FeatureDensity
from .predictor import BATCH_SIZE, CheckpointError, Predictor

log = logging.getLogger("chestxray")

ONNX_FORMAT = "chestxray-onnx-1"
CONTRACT_KEY = "chestxray.contract"
FORMAT_KEY = "chestxray.format"
INPUT = "image"
OUTPUTS = ("logits", "probabilities", "p_infected", "features")


def contract(predictor: Predictor, source_sha256: str, data_summary: dict | None = None, card: str | None = None) -> dict:
    """Everything a consumer needs besides the graph, as plain JSON values."""
    meta = predictor.meta
    ood = predictor.ood
    return {
        "format": ONNX_FORMAT,
        "scheme": predictor.scheme.to_dict(),
        "output_names": list(predictor.scheme.output_names),
        "preprocessing": predictor.preprocessing.to_dict(),
        "input": {"name": INPUT, "dtype": "uint8", "shape": ["batch", 1, predictor.preprocessing.img_size,
                                                             predictor.preprocessing.img_size]},
        "outputs": list(OUTPUTS),
        "temperature": predictor.temperature,
        "threshold": predictor.threshold,
        "threshold_rule": predictor.threshold_rule,
        "thresholds": predictor.thresholds,
        "model_name": meta.get("model_name"),
        "timm_name": meta.get("timm_name"),
        "stage": meta.get("stage"),
        "weights_origin": meta.get("weights_origin"),
        "synthetic": bool(meta.get("synthetic")),
        "data": meta.get("data_resolved"),
        "data_summary": data_summary or {},
        "config": meta.get("config"),
        "source_checkpoint": {"path": str(predictor.checkpoint) if predictor.checkpoint else None, "sha256": source_sha256},
        "ood": None if ood is None else {
            "method": ood.to_dict()["method"], "mean": ood.mean.tolist(), "components": ood.components.tolist(),
            "precision": ood.precision.tolist(), "residual_var": ood.residual_var, "threshold": ood.threshold,
            "quantile": ood.quantile},
        "model_card": card,
        "note": "Research use only; not a diagnostic device.",
    }


def read_contract(path: str | Path) -> dict:
    """The contract stored in an exported file (refuses files that are not chestxray exports)."""
    import onnx

    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf raises several types on garbage
        raise CheckpointError(f"{path}: not a readable ONNX file ({type(e).__name__}: {e})") from e
    props = {p.key: p.value for p in model.metadata_props}
    if props.get(FORMAT_KEY) != ONNX_FORMAT or CONTRACT_KEY not in props:
        raise CheckpointError(f"{path}: an ONNX file without a chestxray contract (write it with `chestxray export`)")
    return json.loads(props[CONTRACT_KEY])


@dataclass
class OnnxPredictor(Predictor):
    """A Predictor whose forward pass runs on onnxruntime; every other number (temperature, threshold,
    decisions, out-of-distribution flag) goes through the same code as the PyTorch one."""

    session: object = None

    @classmethod
    def load(cls, path: str | Path) -> "OnnxPredictor":
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: no such ONNX file")
        c = read_contract(path)
        try:
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as e:
            raise CheckpointError(f"{path}: onnxruntime cannot load it ({e})") from e
        ood = c.get("ood")
        density = None if not ood else FeatureDensity(
            np.asarray(ood["mean"], np.float64), np.asarray(ood["components"], np.float64),
            np.asarray(ood["precision"], np.float64), float(ood["residual_var"]), float(ood["threshold"]),
            float(ood["quantile"]))
        own = {"scheme", "preprocessing", "threshold", "threshold_rule", "thresholds", "temperature", "ood"}
        meta = {k: v for k, v in c.items() if k not in own}
        return cls(None, TaskScheme.from_dict(c["scheme"]), Preprocessing.from_dict(c["preprocessing"]),
                   float(c["threshold"]), dict(c.get("thresholds") or {}), c.get("threshold_rule", ""),
                   float(c.get("temperature", 1.0)), meta, path.resolve(), density, session)

    def run_graph(self, images, *names: str, desc: str | None = None) -> np.ndarray | tuple[np.ndarray, ...]:
        """The graph's named outputs for decoded (N, S, S) uint8 images, in batches of the usual size."""
        from tqdm.auto import tqdm

        ds = DecodedDataset(images, None, self.preprocessing.eval_transform())
        if desc:
            log.info("%s: %d image(s) (onnxruntime)", desc, len(ds))
        parts = []
        with tqdm(total=len(ds), desc=desc, unit="img", leave=False, disable=None if desc else True) as bar:
            for x, _, _ in make_loader(ds, BATCH_SIZE, train=False):
                parts.append(self.session.run(list(names), {INPUT: x.numpy()}))
                bar.update(len(x))
        if not parts:
            empty = {"logits": (0, self.scheme.num_outputs), "probabilities": (0, self.scheme.num_outputs), "p_infected": (0,)}
            outs = tuple(np.zeros(empty.get(n, (0, 0)), np.float32) for n in names)
        else:
            outs = tuple(np.concatenate([p[i] for p in parts]) for i in range(len(names)))
        return outs[0] if len(names) == 1 else outs

    def forward(self, images, desc: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        logits, feats = self.run_graph(images, "logits", "features", desc=desc)
        return torch.from_numpy(logits).float(), torch.from_numpy(feats).float()

    def save(self, path: Path) -> None:
        raise CheckpointError(f"{self.checkpoint}: an exported ONNX model cannot be saved as a training checkpoint")
