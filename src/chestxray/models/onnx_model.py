"""The model contract in an ONNX file, and a Predictor that runs it on onnxruntime.

An exported file holds the network with its input normalisation, temperature and P(infected) inside
the graph; the model contract (`Predictor.contract()`: classes, task scheme, preprocessing, operating points and the
threshold in use, the out-of-distribution density, the run's options and data), the same dict the checkpoint stores,
as JSON in the metadata key `chestxray.contract`; what the export itself adds (input and outputs, the checkpoint it
came from) in `chestxray.export`, and the run's model card in `chestxray.model_card`. The file alone is enough to
predict as `chestxray predict RUN` does.

Graph input `image`: uint8, shape (batch, 1, img_size, img_size): the decoded grayscale image after the
preprocessing's resize rule (and per-image intensity step, if any). Outputs: `logits` (before
temperature), `probabilities` (per output, temperature applied), `p_infected` (batch,), `features`
(pooled backbone features, for the out-of-distribution score).

A model that crops to or masks by the lungs (`Preprocessing.lung_input`) carries its lung segmenter in the same graph,
beside the classifier and independent of it: input `lungs.image` (float (batch, 3, s, s), `models.lungs.to_input`),
output `lungs.logits` (batch, 1, s, s). The lung input itself (`models.lungs.lung_input`) runs outside the graph, in
the same code for both runtimes: segmenter, then lung input, then `image`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data.datamodule import DecodedDataset, make_loader
from ..data.transforms import Preprocessing
from .lungs import LungModel
from .predictor import CheckpointError, Predictor

log = logging.getLogger("chestxray")
ONNX_BATCH = 64  # onnxruntime on a CPU: 241 images/s at 64, 226 at 16 (EfficientNet-Lite0, 224 px, 2 cores)

ONNX_FORMAT = "chestxray-onnx-2"
LEGACY_FORMAT = "chestxray-onnx-1"  # before the contract was one dict: its fields and the export's mixed
FORMAT_KEY = "chestxray.format"
CONTRACT_KEY = "chestxray.contract"  # `Predictor.contract()`, the same dict the checkpoint stores
EXPORT_KEY = "chestxray.export"  # the graph's input and outputs, the checkpoint it came from, a summary of its data
CARD_KEY = "chestxray.model_card"  # the run's model card as it was at export
INPUT = "image"
OUTPUTS = ("logits", "probabilities", "p_infected", "features")
LUNG_PREFIX = "lungs."  # the segmenter's part of the graph: its names carry this prefix
LUNG_INPUT, LUNG_OUTPUT = LUNG_PREFIX + "image", LUNG_PREFIX + "logits"


def export_info(predictor: Predictor, source_sha256: str, data_summary: dict | None = None) -> dict:
    """What the file says about itself besides the contract, as plain JSON values."""
    side = predictor.preprocessing.img_size
    lungs = None
    if predictor.preprocessing.lung_input:
        s = predictor.segmenter.img_size
        lungs = {"input": {"name": LUNG_INPUT, "dtype": "float32", "shape": ["batch", 3, s, s]}, "output": LUNG_OUTPUT,
                 "segmenter": predictor.preprocessing.lung_segmenter, "meta": predictor.segmenter.meta}
    return {
        "input": {"name": INPUT, "dtype": "uint8", "shape": ["batch", 1, side, side]},
        "lung_segmenter": lungs,
        "outputs": list(OUTPUTS),
        "output_names": list(predictor.scheme.output_names),
        "source_checkpoint": {"path": str(predictor.checkpoint) if predictor.checkpoint else None, "sha256": source_sha256},
        "data_summary": data_summary or {},
        "note": "Research use only; not a diagnostic device.",
    }


def metadata(predictor: Predictor, source_sha256: str, data_summary: dict | None, card: str | None) -> dict[str, str]:
    """The metadata entries of an exported file."""
    return {FORMAT_KEY: ONNX_FORMAT, CONTRACT_KEY: json.dumps(predictor.contract()),
            EXPORT_KEY: json.dumps(export_info(predictor, source_sha256, data_summary)), CARD_KEY: card or ""}


def read_export(path: str | Path, session=None) -> tuple[dict, dict, str | None]:
    """(the contract, the export's own information, the model card) stored in an exported file; refuses files that
    are not chestxray exports. Files of the earlier format are read into the same shape. `session`: an onnxruntime
    session of the file, whose metadata is read instead (no import of the onnx package, about half a second)."""
    path = Path(path)
    if session is not None:
        props = dict(session.get_modelmeta().custom_metadata_map)
    else:
        import onnx

        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as e:  # protobuf raises several types on garbage
            raise CheckpointError(f"{path}: not a readable ONNX file ({type(e).__name__}: {e})") from e
        props = {p.key: p.value for p in model.metadata_props}
    fmt = props.get(FORMAT_KEY)
    if fmt not in (ONNX_FORMAT, LEGACY_FORMAT) or CONTRACT_KEY not in props:
        raise CheckpointError(f"{path}: an ONNX file without a chestxray contract (write it with `chestxray export`)")
    if fmt == LEGACY_FORMAT:
        return legacy_export(json.loads(props[CONTRACT_KEY]))
    return json.loads(props[CONTRACT_KEY]), json.loads(props.get(EXPORT_KEY) or "{}"), props.get(CARD_KEY) or None


def read_contract(path: str | Path) -> dict:
    """The model contract stored in an exported file."""
    return read_export(path)[0]


def legacy_export(c: dict) -> tuple[dict, dict, str | None]:
    """A chestxray-onnx-1 file's one dict, split as files are written now (its data path was stored as 'data')."""
    meta = {k: c.get(k) for k in ("model_name", "timm_name", "stage", "weights_origin", "config", "synthetic")}
    meta["data_resolved"] = c.get("data")
    contract = {"contract_version": 0, "meta": meta, **{k: c.get(k) for k in (
        "scheme", "preprocessing", "temperature", "threshold", "threshold_rule", "thresholds", "ood")}}
    info = {k: c.get(k) for k in ("input", "outputs", "output_names", "source_checkpoint", "data_summary", "note")}
    return contract, info, c.get("model_card")


@dataclass(kw_only=True)
class OnnxPredictor(Predictor):
    """A Predictor whose forward pass runs on onnxruntime; every other number (temperature, threshold,
    decisions, out-of-distribution flag) goes through the same code as the PyTorch one."""

    session: object = None
    export: dict = field(default_factory=dict)  # `export_info`: input, outputs, source checkpoint, data summary
    card: str | None = None  # the run's model card as it was at export

    @classmethod
    def load(cls, path: str | Path) -> "OnnxPredictor":
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: no such ONNX file")
        try:
            options = ort.SessionOptions()
            options.log_severity_level = 3  # a lung model's inputs have defaults, which onnxruntime warns of at load
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:
            read_export(path)  # a file that is not ONNX at all is named as such
            raise CheckpointError(f"{path}: onnxruntime cannot load it ({e})") from e
        contract, info, card = read_export(path, session)
        segmenter = None
        if Preprocessing.from_dict(contract["preprocessing"]).lung_input:
            lungs = info.get("lung_segmenter")
            names = {i.name for i in (*session.get_inputs(), *session.get_overridable_initializers())}
            if not lungs or LUNG_INPUT not in names:
                raise CheckpointError(f"{path}: the model crops to or masks by the lungs, but the file holds no lung "
                                      "segmenter")
            segmenter = OnnxLungModel(net=None, img_size=int(lungs["input"]["shape"][-1]), meta=lungs.get("meta") or {},
                                      path=path.resolve(), session=session)
        return cls.from_contract(contract, model=None, checkpoint=path.resolve(), session=session, export=info, card=card,
                                 segmenter=segmenter)

    def run_graph(self, images, *names: str, desc: str | None = None) -> np.ndarray | tuple[np.ndarray, ...]:
        """The graph's named outputs for decoded (N, S, S) uint8 images, in batches of ONNX_BATCH."""
        from tqdm.auto import tqdm

        ds = DecodedDataset(images, None, self.preprocessing.eval_transform())
        if desc:
            log.info("%s: %d image(s) (onnxruntime)", desc, len(ds))
        parts = []
        with tqdm(total=len(ds), desc=desc, unit="img", leave=False, disable=None if desc else True) as bar:
            for x, _, _ in make_loader(ds, ONNX_BATCH, train=False):
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


@dataclass
class OnnxLungModel(LungModel):
    """The lung segmenter of an exported file, run by onnxruntime; the rest (input, probabilities at each image's size)
    is LungModel's own code."""

    session: object = None
    names: tuple[str, str] = (LUNG_INPUT, LUNG_OUTPUT)  # the graph's input and output

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run([self.names[1]], {self.names[0]: x.numpy()})[0]).float()
