"""Predictions as files: which images to predict, and where the table goes (CSV or JSON, a file or stdout)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..data.io import list_images
from ..data.sources import Sample
from ..errors import ChestXrayError
from ..files import write_text
from ..models.predictor import Predictor
from ..notices import RESEARCH_NOTE


def expand_paths(paths: list[str | Path]) -> list[str]:
    """Files as given; folders expanded to the image files under them."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            found = [str(f) for f in list_images(p)]
            if not found:
                raise ChestXrayError(f"{p}: no image files in this folder")
            out += found
        else:
            out.append(str(p))
    return out


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


def prediction_table(predictor: Predictor, samples: list[Sample], skip_bad: bool = False, lungs: bool = True,
                     lung_model: str | Path | None = None) -> tuple[pd.DataFrame, list]:
    """The table `chestxray predict` writes (one row per readable image: path, p_infected, predicted, threshold,
    per-class probabilities, ood_score, out_of_distribution, image_quality, lungs_found, lung_fields, run) and the read
    errors of skipped files. `lungs`: check for a plausible pair of lung fields with the segmenter (`lung_model`, or
    the packaged one), on the predictor's runtime (`engines.lung_model_on`)."""
    from .engines import lung_model_on

    df, errors = predictor.predict(samples, skip_bad, lung_model_on(predictor, lung_model) if lungs else None)
    return df.assign(run=str(predictor.checkpoint)), errors


def write_predictions(df: pd.DataFrame, out: str, fmt: str, run: str) -> str:
    """Write the table as CSV or JSON to `out` ('-': return the text for stdout instead); return what was written."""
    if fmt == "json":
        import json

        text = json.dumps({"run": run, "note": RESEARCH_NOTE,
                           "predictions": df.drop(columns="run").to_dict(orient="records")}, indent=2)
    else:
        text = df.to_csv(index=False)
    if out != "-":
        write_text(out, text)
    return text
