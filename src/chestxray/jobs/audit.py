"""The audit job: the shortcut audit of a model on a split of some data, written as audit.json."""

from __future__ import annotations

import json
from pathlib import Path

from ..config import BOOTSTRAP_RESAMPLES
from ..data.sources import evaluation_samples
from ..evaluation.audit import audit
from ..files import write_text
from ..models.load import load_predictor
from ..models.lungs import default_lung_model
from ..models.predictor import run_directory
from .evaluate import evaluation_folder


def audit_run(model: str | Path, data: str | Path, split: str | None = None, out: str | Path | None = None,
              n_boot: int = BOOTSTRAP_RESAMPLES, skip_bad: bool = False, mask_source: str = "lungs",
              lung_model: str | Path | None = None) -> tuple[dict, Path]:
    """(the audit's figures, the folder of its audit.json: `out`, or RUN/audit/<data>-<split>-<hash of the data's path>)."""
    predictor = load_predictor(model)
    name, samples = evaluation_samples(data, split)
    lungs = default_lung_model(lung_model) if mask_source == "lungs" else None
    result = audit(predictor, predictor.decode(samples, skip_bad), n_boot, mask_source=mask_source, lungs=lungs)
    out = Path(out) if out else evaluation_folder(run_directory(model), data, name, None, under="audit")
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "audit.json", json.dumps({"data": str(data), "split": name, **result}, indent=2))
    return result, out
