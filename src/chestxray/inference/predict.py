"""Load a trained run and predict: logits for decoded images, predictions.csv for files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import timm
import torch
from torch import nn

from .. import RESEARCH_NOTE
from ..data.datamodule import DecodedDataset, DecodedSplit, decode_split, make_loader
from ..data.io import IMAGE_SUFFIXES
from ..data.labels import TaskScheme
from ..data.sources import Sample
from ..data.transforms import eval_transform, to_model_input
from ..errors import ChestXrayError
from ..files import torch_load

CHECKPOINT_FORMAT = "chestxray-checkpoint"


class CheckpointError(ChestXrayError):
    pass


@dataclass
class LoadedModel:
    model: nn.Module
    scheme: TaskScheme
    img_size: int
    mean: tuple
    std: tuple
    threshold: float
    meta: dict
    temperature: float = 1.0
    checkpoint: Path | None = None  # the file it was loaded from

    @property
    def training_data(self) -> Path:
        """The training data's absolute path (resolved when the run was trained, not against today's directory)."""
        return Path(self.meta.get("data_resolved") or self.meta["config"]["data"]["data"]).resolve()


def checkpoint_path(run_or_ckpt: str | Path) -> Path:
    p = Path(run_or_ckpt)
    if p.is_dir():
        p = p / "checkpoints" / "best.ckpt"
    if not p.exists():
        raise CheckpointError(f"{p}: no checkpoint found (give a run directory or a best.ckpt file)")
    return p


def save_checkpoint(path: Path, model: nn.Module, meta: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": CHECKPOINT_FORMAT, "state_dict": model.state_dict(), **meta}, path)


def load_model(run_or_ckpt: str | Path) -> LoadedModel:
    path = checkpoint_path(run_or_ckpt)
    ckpt = torch_load(path, "chestxray checkpoint", CheckpointError)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path}: not a chestxray checkpoint (expected checkpoints/best.ckpt written by `chestxray train`)"
        )
    scheme = TaskScheme.from_dict(ckpt["scheme"])
    model = timm.create_model(ckpt["timm_name"], pretrained=False, num_classes=scheme.num_outputs)
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit {ckpt['timm_name']}: {e}") from e
    model.eval()
    return LoadedModel(
        model, scheme, int(ckpt["img_size"]), tuple(ckpt["mean"]), tuple(ckpt["std"]), float(ckpt["threshold"]), ckpt,
        float(ckpt.get("temperature", 1.0)), path.resolve(),
    )


@torch.no_grad()  # not inference_mode: the logits feed temperature fitting, which needs autograd
def predict_logits(model: nn.Module, images: np.ndarray, img_size: int, mean, std, batch_size: int = 64) -> torch.Tensor:
    """Logits for decoded (N, S, S) uint8 images, in eval mode."""
    was_training = model.training
    model.eval()
    ds = DecodedDataset(images, None, eval_transform(img_size))
    device = next(model.parameters()).device
    outs = [model(to_model_input(x.to(device), mean, std)).float().cpu() for x, _, _ in make_loader(ds, batch_size, train=False)]
    model.train(was_training)
    if not outs:
        return torch.zeros(0, 1)
    return torch.cat(outs)


def expand_paths(paths: list[str | Path]) -> list[str]:
    """Files as given; folders expanded to the image files under them."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(str(f) for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"{p}: no image files in this folder")
            out += found
        else:
            out.append(str(p))
    return out


def predictions_table(loaded: LoadedModel, split: DecodedSplit, logits: torch.Tensor) -> pd.DataFrame:
    scheme = loaded.scheme
    logits = logits / loaded.temperature  # temperature scaling fitted on validation (1 = none)
    p_inf = scheme.p_infected(logits).numpy()
    probs = scheme.probabilities(logits).numpy()
    df = pd.DataFrame(
        {
            "path": [s.path for s in split.samples],
            "p_infected": np.round(p_inf, 6),
            "predicted": np.where(p_inf >= loaded.threshold, "infected", "normal"),
            "threshold": loaded.threshold,
        }
    )
    if scheme.task == "binary":
        df[f"p_{scheme.normal_class}"] = np.round(1 - p_inf, 6)
    else:
        for j, name in enumerate(scheme.output_names):
            df[f"p_{name}"] = np.round(probs[:, j], 6)
    if scheme.task == "multiclass":
        df["predicted_class"] = [scheme.classes[i] for i in probs.argmax(1)]
    if any(s.label for s in split.samples):
        df["label"] = [s.label or "" for s in split.samples]
    if any(s.source for s in split.samples):
        df["source"] = [s.source or "" for s in split.samples]
    return df


def predict_samples(loaded: LoadedModel, samples: list[Sample], skip_bad: bool = False, batch_size: int = 64):
    """Predictions table for samples, and the read errors of skipped files."""
    split = decode_split(samples, loaded.img_size, skip_bad, desc="reading")
    logits = predict_logits(loaded.model, split.images, loaded.img_size, loaded.mean, loaded.std, batch_size)
    return predictions_table(loaded, split, logits), split.errors


def check_predictions_out(out: str, run: str, overwrite: bool = False) -> None:
    """Before any work: `out` must be '-' (stdout), a new file, or this run's own earlier predictions.

    A predictions file records the checkpoint that wrote it (column or key `run`); another run's file,
    or a file that is not a predictions file, is replaced only with `overwrite`.
    """
    if out == "-":
        return
    path = Path(out)
    if path.is_dir():
        raise ChestXrayError(f"{path}: is a folder; --out takes a file name, such as {path / 'predictions.csv'}")
    if not path.exists() or overwrite:
        return
    try:
        if path.suffix.lower() == ".json":
            import json

            owner = json.loads(path.read_text()).get("run")
        else:
            owner = pd.read_csv(path, nrows=1).get("run", pd.Series([None])).iloc[0]
    except Exception:  # unreadable as a predictions file: someone else's file
        owner = None
    if owner != run:
        whose = f"predictions of another run ({owner})" if isinstance(owner, str) else "something other than predictions"
        raise ChestXrayError(f"{path}: exists and holds {whose}; give another --out, or --overwrite to replace it")


def write_predictions(df: pd.DataFrame, out: str, fmt: str, run: str) -> str:
    """Write the table as CSV or JSON to `out` ('-': return the text for stdout instead); return what was written."""
    df = df.assign(run=run)
    if fmt == "json":
        import json

        text = json.dumps({"run": run, "note": RESEARCH_NOTE,
                           "predictions": df.drop(columns="run").to_dict(orient="records")}, indent=2)
    else:
        text = df.to_csv(index=False)
    if out != "-":
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text)
    return text
