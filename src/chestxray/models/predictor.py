"""The model contract: one object with everything needed to use a trained model correctly.

A Predictor holds the network, the task scheme, the preprocessing (input size, mean, std, resize rule),
the temperature fitted on validation, and the operating points chosen on validation with the one in
use. Every consumer (training's final decisions, evaluate, compare, predict, explain, the report) gets
its logits and probabilities here, so they all see the same numbers: the decisions a run stores are
taken on the forward pass that `predict` runs.
"""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from ..data.datamodule import DecodedDataset, DecodedSplit, decode_split, make_loader
from ..data.labels import TaskScheme
from ..data.quality import OK, quality_of
from ..data.sources import Sample
from ..data.transforms import Preprocessing
from ..errors import ChestXrayError
from ..files import load_checked, save_checked
from ..rundir import RunDir
from .folding import folded_copy, probe_input
from .lungs import LungFields, LungModel, LungModelError, fields_found, lung_inputs
from .ood import FeatureDensity

CHECKPOINT_FORMAT = "chestxray-checkpoint"
CONTRACT_VERSION = 1  # of `Predictor.contract()`; readers take every version up to theirs
# what a run says about its model besides the numbers (`Predictor.meta`): architecture, final stage, weights' origin,
# options, data; an adapted model adds where it came from and its adaptation
META_KEYS = ("model_name", "timm_name", "stage", "weights_origin", "config", "synthetic", "data_resolved",
             "adapted_from", "adaptation")
log = logging.getLogger("chestxray")
# One batch size per kind of device (kernels chosen per batch shape could differ in the last bits): 16 on a CPU, where
# smaller batches stay in cache (EfficientNet-Lite0 at 224 px, 2 cores: 215 images/s at 16, 193 at 64; the head-only
# run 21.6 s against 24.5 s, benchmarks/head_run.py), 64 on an accelerator.
CPU_BATCH, ACCELERATOR_BATCH = 16, 64


def batch_size(device: "torch.device | str") -> int:
    """The contract's batch size on `device`."""
    return CPU_BATCH if torch.device(device).type == "cpu" else ACCELERATOR_BATCH


@contextmanager
def no_tf32():
    """fp32 means fp32 on a GPU too: cuDNN's convolutions use TF32 (10-bit mantissa) on Ampere and newer GPUs by
    default, which moves P(infected) by about 1e-3 against the CPU; the contract's passes turn it off."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


class CheckpointError(ChestXrayError):
    pass


def contract_outputs(model: nn.Module, views: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits averaged over the test-time views, pooled features of the plain view): what PyTorch and the
    exported ONNX graph both compute."""
    spatial = model.forward_features(views[0])
    features = model.forward_head(spatial, pre_logits=True).flatten(1).float()
    logits = model.forward_head(spatial).float()
    if len(views) > 1:  # the other views in one batch: one copy of the network in an exported graph, not one per view
        others = model(torch.cat(views[1:])).float().reshape(len(views) - 1, *logits.shape)
        logits = torch.cat([logits[None], others]).mean(0)
    return logits, features


@dataclass(kw_only=True)
class Predictor:
    model: nn.Module | None  # None where another runtime runs the network (OnnxPredictor)
    scheme: TaskScheme
    preprocessing: Preprocessing
    threshold: float = 0.5
    thresholds: dict[str, float] = field(default_factory=dict)  # operating points chosen on validation
    threshold_rule: str = "0.5"
    temperature: float = 1.0
    meta: dict = field(default_factory=dict)  # META_KEYS: model name, stage, config, data, weights origin
    checkpoint: Path | None = None  # the file it was loaded from
    ood: FeatureDensity | None = None  # how unlike the training images an image is (fitted at the end of training)
    # the lung segmenter of a model whose preprocessing crops to or masks by the lungs (stored with its weights);
    # anything with `probabilities(images)` (an onnxruntime one for exported files)
    segmenter: "LungModel | None" = None
    _inference: tuple | None = field(default=None, init=False, repr=False, compare=False)  # (weights' state, network)

    # --- numbers ---------------------------------------------------------------------------------

    @torch.no_grad()  # not inference_mode: the logits feed temperature fitting, which needs autograd
    def forward(self, images, desc: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(raw logits before temperature, pooled backbone features) of decoded (N, S, S) uint8 images.

        The network of `inference_model` (eval mode, batch-norm folded, channels_last memory), fp32, one batch size:
        the same numbers wherever it runs on one device. `desc`: a progress bar (on a terminal) and a log line, for
        long passes.
        """
        model = self.inference_model()
        device = next(model.parameters()).device
        prep = self.preprocessing
        ds = DecodedDataset(images, None, prep.eval_transform())
        if desc:
            log.info("%s: %d image(s)", desc, len(ds))
        logits, feats = [], []
        with no_tf32(), tqdm(total=len(ds), desc=desc, unit="img", leave=False, disable=None if desc else True) as bar:
            for x, _, _ in make_loader(ds, batch_size(device), train=False):
                views = [v.contiguous(memory_format=torch.channels_last) for v in prep.model_views(x.to(device))]
                z, f = contract_outputs(model, views)
                logits.append(z.cpu())
                feats.append(f.cpu())
                bar.update(len(x))
        if not logits:
            return torch.zeros(0, self.scheme.num_outputs), torch.zeros(0, 0)
        return torch.cat(logits), torch.cat(feats)

    def inference_model(self) -> nn.Module:
        """The network every forward pass of the contract runs: an eval-mode copy of `model` with batch-norm folded
        into the convolutions (models.folding) in channels_last memory, about 1.7x faster on a CPU than `model`
        itself. Made again whenever `model`'s weights or device changed (training, loading a stage's weights)."""
        model = self.model
        device = next(model.parameters()).device
        state = [(id(t), t._version, t.device) for t in (*model.parameters(), *model.buffers())]
        if self._inference is None or self._inference[0] != state:
            folded = folded_copy(model, probe_input(self.preprocessing.img_size, device)).to(memory_format=torch.channels_last)
            for p in folded.parameters():
                p.requires_grad_(False)
            self._inference = (state, folded)
        return self._inference[1]

    def head_on_features(self) -> bool:
        """Whether logits follow from the pooled features alone (`logits_from_features`): the head is the classifier
        alone (not VGG's fully connected pre-logits) and one view is scored (no test-time augmentation)."""
        from .backbones import head_prefixes  # with timm, which a prediction on onnxruntime never imports

        return (self.model is not None and self.preprocessing.tta == "none"
                and "pre_logits" not in head_prefixes(self.model))

    @torch.no_grad()
    def logits_from_features(self, features: torch.Tensor) -> torch.Tensor:
        """The logits `forward` gives for images whose pooled features (from `forward`) these are, computed from the
        features with the classifier alone, in the same batches: the same numbers, without the backbone."""
        if not self.head_on_features():
            raise ValueError("logits follow from features only for a classifier-only head without test-time augmentation")
        model = self.inference_model()
        device = next(model.parameters()).device
        n = batch_size(device)
        out = [model.get_classifier()(features[i:i + n].to(device)).float().cpu() for i in range(0, len(features), n)]
        return torch.cat(out) if out else torch.zeros(0, self.scheme.num_outputs)

    def logits(self, images) -> torch.Tensor:
        return self.forward(images)[0]

    def ood_scores(self, features: torch.Tensor) -> np.ndarray | None:
        """Distance of each image's features from the training images (None without a fitted density)."""
        return None if self.ood is None else self.ood.score(features.numpy())

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-output probabilities, temperature applied."""
        return self.scheme.probabilities(logits / self.temperature)

    def p_infected(self, logits: torch.Tensor) -> np.ndarray:
        """P(infected) per image, temperature applied; float64, so that a CSV round trip is exact."""
        return self.scheme.p_infected(logits / self.temperature).numpy().astype(np.float64)

    def decide(self, p_infected: np.ndarray) -> np.ndarray:
        return np.where(p_infected >= self.threshold, "infected", "normal")

    # --- files -----------------------------------------------------------------------------------

    def torch_model(self, what: str) -> nn.Module:
        """The PyTorch network, for what needs more than a forward pass (Grad-CAM, retraining the head)."""
        if self.model is None:
            raise CheckpointError(f"{self.checkpoint}: {what} needs the PyTorch model (a run directory or its "
                                  "checkpoints/best.ckpt), not an exported ONNX file")
        return self.model

    def decode(self, samples: list[Sample], skip_bad: bool = False, cache_dir=None, desc: str = "reading") -> DecodedSplit:
        """The samples decoded as this model takes them: with the lung input applied where the contract has one (the
        segmenter's fields kept in `lung_fields`, for the lung check)."""
        return self.with_lung_input(decode_split(samples, self.preprocessing.img_size, skip_bad, desc, cache_dir))

    def with_lung_input(self, split: DecodedSplit) -> DecodedSplit:
        """A decoded split as this model takes it (`lung_view`); the split itself for a model without a lung input."""
        if not self.preprocessing.lung_input:
            return split
        images, fields = self.lung_view(split.images)
        return DecodedSplit(split.samples, images, split.errors, fields)

    def lung_view(self, images) -> tuple[object, list[LungFields] | None]:
        """(the images as the network takes them, the segmenter's lung fields of the images as given): decoded images
        cropped to or masked by their lungs where the contract's preprocessing says so (models.lungs.lung_input);
        else the images themselves and None."""
        prep = self.preprocessing
        if not prep.lung_input:
            return images, None
        if self.segmenter is None:
            raise CheckpointError(f"{self.checkpoint}: the model takes images {prep.describe_lung_input()}, but its lung "
                                  "segmenter is missing")
        fields = self.segmenter.fields(images)
        return lung_inputs(images, fields, prep.lung_crop, prep.lung_mask), fields

    def outputs(self, logits: torch.Tensor, features: torch.Tensor | None = None,
                quality: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Per image: P(infected) at full precision, the decision, per-class probabilities (`p_<name>`), the class
        (multiclass), and (given the features) how unlike the training images it is.

        Multiclass: `predicted` is the stored threshold on P(infected) = 1 - P(normal); `predicted_class` is derived
        from it, so the two never disagree: normal where `predicted` is normal, else the most probable infected class.
        Given `quality` (`data.quality.image_quality` per image), an image that is not 'ok' gets no decision: its
        `predicted` (and `predicted_class`) are empty and its `image_quality` says why."""
        scheme = self.scheme
        p_inf = self.p_infected(logits)
        probs = self.probabilities(logits).numpy()
        decided = self.decide(p_inf)
        out = {"p_infected": p_inf, "predicted": decided}
        if scheme.task == "binary":
            out[f"p_{scheme.normal_class}"] = 1 - p_inf
        else:
            for j, name in enumerate(scheme.output_names):
                out[f"p_{name}"] = probs[:, j]
        if scheme.task == "multiclass":
            infected = [scheme.classes.index(c) for c in scheme.infected_classes]
            top_infected = np.array(scheme.infected_classes, dtype=object)[probs[:, infected].argmax(1)] if len(probs) else []
            out["predicted_class"] = np.where(decided == "infected", top_infected, scheme.normal_class).astype(object)
        if features is not None and self.ood is not None:
            scores = self.ood.score(features.numpy())
            out["ood_score"] = scores
            out["out_of_distribution"] = self.ood.flag(scores)
        if quality is not None:
            bad = quality != OK
            out["predicted"] = np.where(bad, "", decided).astype(object)
            if "predicted_class" in out:
                out["predicted_class"] = np.where(bad, "", out["predicted_class"]).astype(object)
            out["image_quality"] = quality
        return out

    def table(self, split: DecodedSplit, logits: torch.Tensor, features: torch.Tensor | None = None,
              lung_fields: list[LungFields] | None = None) -> pd.DataFrame:
        """One row per image: its path, `outputs` (with each image's quality), the threshold, and the label and
        source where known. Given the lung segmenter's fields of the images: `lungs_found` (a plausible pair of lung fields, a second,
        anatomical out-of-distribution signal beside the feature density's) and `lung_fields` (what was found)."""
        cols = self.outputs(logits, features, quality_of(split.images))
        df = pd.DataFrame({"path": [s.path for s in split.samples], "p_infected": cols.pop("p_infected"),
                           "predicted": cols.pop("predicted"), "threshold": self.threshold, **cols})
        if lung_fields is not None:
            df["lungs_found"], df["lung_fields"] = fields_found(lung_fields)
        if any(s.label for s in split.samples):
            df["label"] = [s.label or "" for s in split.samples]
        if any(s.source for s in split.samples):
            df["source"] = [s.source or "" for s in split.samples]
        return df

    def predict(self, samples: list[Sample], skip_bad: bool = False, lungs: "LungModel | None" = None
                ) -> tuple[pd.DataFrame, list]:
        """Predictions table for samples (an image without a radiograph's grey levels gets an empty `predicted` and
        its reason in `image_quality`; with the lung segmenter, `lungs_found`), and the read errors of skipped files."""
        split = self.decode(samples, skip_bad)
        desc = "predicting" if len(split.images) > CPU_BATCH else None
        lung_fields = self.lung_check_fields(split, lungs)
        return self.table(split, *self.forward(split.images, desc=desc), lung_fields=lung_fields), split.errors

    def lung_check_fields(self, split: DecodedSplit, lungs: "LungModel | None") -> list[LungFields] | None:
        """The segmenter's lung fields for the lung check of a split from `decode`: those its lung input found
        (the model's own segmenter, on the images as decoded; always, since its input depends on them) where it has
        one, else `lungs`' (None: no check)."""
        if split.lung_fields is not None or lungs is None:
            return split.lung_fields
        return lungs.fields(split.images)

    @property
    def training_data(self) -> Path:
        """The training data's absolute path (resolved when the run was trained, not against today's directory)."""
        return Path(self.meta.get("data_resolved") or self.meta["config"]["data"]["data"]).resolve()

    # --- the contract and the checkpoint ---------------------------------------------------------

    def contract(self) -> dict:
        """Everything needed to use the model correctly besides its weights, as JSON values: the task scheme, the
        preprocessing, the temperature, the operating points and the threshold in use, the out-of-distribution
        density, and `meta`. The checkpoint and the ONNX file store this same dict; `from_contract` reads it."""
        return json.loads(json.dumps({
            "contract_version": CONTRACT_VERSION,
            "scheme": self.scheme.to_dict(),
            "preprocessing": self.preprocessing.to_dict(),
            "temperature": float(self.temperature),
            "threshold": float(self.threshold),
            "threshold_rule": self.threshold_rule,
            "thresholds": {k: float(v) for k, v in self.thresholds.items()},
            "ood": None if self.ood is None else self.ood.to_dict(),
            "meta": {k: self.meta[k] for k in META_KEYS if k in self.meta},
        }))

    @classmethod
    def from_contract(cls, contract: dict, **runtime) -> "Predictor":
        """The predictor of a contract (`runtime`: the network or session and where it was loaded from)."""
        version = contract.get("contract_version", 0)
        if version > CONTRACT_VERSION:
            raise CheckpointError(f"{runtime.get('checkpoint')}: a model contract of version {version}, newer than this "
                                  f"chestxray reads ({CONTRACT_VERSION}); update chestxray")
        return cls(
            scheme=TaskScheme.from_dict(contract["scheme"]), preprocessing=Preprocessing.from_dict(contract["preprocessing"]),
            threshold=float(contract["threshold"]), thresholds=dict(contract.get("thresholds") or {}),
            threshold_rule=contract.get("threshold_rule", ""), temperature=float(contract.get("temperature", 1.0)),
            meta=dict(contract.get("meta") or {}),
            ood=FeatureDensity.from_dict(contract["ood"]) if contract.get("ood") else None, **runtime)

    def save(self, path: Path) -> None:
        """The weights and the contract, atomically, with a size and SHA-256 record beside it (files.save_checked)."""
        ckpt = {"format": CHECKPOINT_FORMAT, "state_dict": self.model.state_dict(), "contract": self.contract()}
        if self.preprocessing.lung_input:
            ckpt["segmenter"] = self.segmenter.to_state()
        save_checked(ckpt, path)

    @classmethod
    def load(cls, run_or_ckpt: str | Path) -> "Predictor":
        """From a run directory or its checkpoints/best.ckpt (`models.load.load_predictor` also takes .onnx files)."""
        path = checkpoint_path(run_or_ckpt)
        ckpt = load_checked(path, "chestxray checkpoint", CheckpointError)
        if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(
                f"{path}: not a chestxray checkpoint (expected checkpoints/best.ckpt written by `chestxray train`)"
            )
        contract = ckpt.get("contract") or legacy_contract(ckpt)
        scheme = TaskScheme.from_dict(contract["scheme"])
        timm_name = contract["meta"]["timm_name"]
        import timm

        model = timm.create_model(timm_name, pretrained=False, num_classes=scheme.num_outputs)
        try:
            model.load_state_dict(ckpt["state_dict"])
        except RuntimeError as e:
            raise CheckpointError(f"{path}: weights do not fit {timm_name}: {e}") from e
        model.eval()
        segmenter = None
        if Preprocessing.from_dict(contract["preprocessing"]).lung_input:
            if "segmenter" not in ckpt:
                raise CheckpointError(f"{path}: the model crops to or masks by the lungs, but the checkpoint holds no "
                                      "lung segmenter")
            try:
                segmenter = LungModel.from_state(ckpt["segmenter"], path)
            except LungModelError as e:
                raise CheckpointError(str(e)) from e
        return cls.from_contract(contract, model=model, checkpoint=path.resolve(), segmenter=segmenter)


def legacy_contract(ckpt: dict) -> dict:
    """The contract of a checkpoint written before contracts were versioned (its fields at the top level)."""
    own = {"format", "state_dict", "scheme", "preprocessing", "threshold", "threshold_rule", "thresholds", "temperature", "ood"}
    return {"contract_version": 0, "scheme": ckpt["scheme"], "preprocessing": ckpt.get("preprocessing") or ckpt,
            "temperature": ckpt.get("temperature", 1.0), "threshold": ckpt["threshold"],
            "threshold_rule": ckpt.get("threshold_rule", ""), "thresholds": ckpt.get("thresholds") or {},
            "ood": ckpt.get("ood"), "meta": {k: v for k, v in ckpt.items() if k not in own}}


def run_directory(model: str | Path) -> Path:
    """The folder a model's run files sit in: the run directory itself, the run of a checkpoints/best.ckpt,
    or the folder of an exported .onnx file."""
    p = Path(model)
    if p.is_dir():
        return p
    return p.parent if p.suffix.lower() == ".onnx" else p.parent.parent


def checkpoint_path(run_or_ckpt: str | Path) -> Path:
    p = Path(run_or_ckpt)
    if p.is_dir():
        p = RunDir(p).best_checkpoint
    if not p.exists():
        raise CheckpointError(f"{p}: no checkpoint found (give a run directory, a best.ckpt file or an exported .onnx file)")
    return p

