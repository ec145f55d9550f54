"""The public Python API: the jobs the CLI runs, with the CLI's numbers.

    import chestxray

    model = chestxray.load("runs/default")          # a run directory, its checkpoint, or an exported .onnx file
    table = model.predict(["scan1.png", "folder/"])  # a pandas DataFrame: the columns of `chestxray predict`
    metrics = chestxray.train("data/", "runs/r1", img_size=224, stages="head", epochs_head=10)
    metrics, folder = chestxray.evaluate("runs/r1", "other-site/labels.csv")
    chestxray.export("runs/r1", "r1.onnx")

A research tool, not a diagnostic device: every figure carries its data, split and intervals.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .apps.engines import load_on
from .apps.export import TOLERANCE, VERIFY_IMAGES, export_onnx
from .apps.predict import expand_paths, prediction_table
from .config import BOOTSTRAP_RESAMPLES
from .data.sources import Sample
from .errors import ChestXrayError
from .jobs.evaluate import evaluate_run
from .jobs.train import run_config, train_run
from .models.predictor import Predictor


class Model:
    """A trained model ready to use: its contract (classes, preprocessing, temperature, threshold, out-of-distribution
    density) and the runtime that runs it (PyTorch, or onnxruntime for an exported file or `engine='onnx'`)."""

    def __init__(self, predictor: Predictor):
        self.predictor = predictor

    @property
    def path(self) -> Path:
        """The checkpoint or .onnx file it was loaded from."""
        return self.predictor.checkpoint

    @property
    def classes(self) -> list[str]:
        return list(self.predictor.scheme.classes)

    @property
    def threshold(self) -> float:
        """The threshold on P(infected) in use, chosen on the run's validation images."""
        return self.predictor.threshold

    def contract(self) -> dict:
        """The model contract as JSON values (what the checkpoint and the ONNX file store)."""
        return self.predictor.contract()

    def predict(self, images: str | Path | list[str | Path], skip_bad: bool = False, lungs: bool = True) -> pd.DataFrame:
        """One row per image (files, or folders of them): the columns `chestxray predict` writes (path, p_infected,
        predicted, threshold, p_<class>, ood_score, out_of_distribution, image_quality, lungs_found, lung_fields, run;
        `lungs` False: without the lung check). An unreadable file
        stops with an error naming it, or with `skip_bad` is left out and listed in the table's `attrs['skipped']`."""
        paths = expand_paths([images] if isinstance(images, (str, Path)) else list(images))
        if not paths:
            raise ChestXrayError("nothing to predict: no image paths given")
        df, errors = prediction_table(self.predictor, [Sample(p, None) for p in paths], skip_bad, lungs)
        df.attrs["skipped"] = [str(e) for e in errors]
        return df

    def __repr__(self) -> str:
        meta = self.predictor.meta
        return (f"chestxray.Model({meta.get('model_name')}, {self.predictor.scheme.task}, stage {meta.get('stage')}, "
                f"threshold {self.threshold:.4f}, from {self.path})")


def load(path: str | Path, engine: str = "torch", device: str = "cpu") -> Model:
    """A run directory, its checkpoints/best.ckpt, or an exported .onnx file. `engine` 'onnx' runs a run directory's
    model on onnxruntime through its verified export (made once beside the checkpoint). `device`: where PyTorch runs
    the network (cpu, cuda, cuda:N, or auto)."""
    return Model(load_on(path, engine, device))


def train(data: str | Path | None = None, out: str | Path | None = None, *, config: str | Path | None = None,
          resume: str | Path | None = None, overwrite: bool = False, progress: bool = False, **options) -> dict:
    """Train into run directory `out` as `chestxray train` does and return its metrics (metrics.json).

    `options`: any option of `chestxray train` by its field name (`img_size=224`, `stages="head"`, `loss="focal"`,
    ...; `chestxray train --help` lists them), over the `config` YAML file's. `resume`: continue that interrupted run
    with its own config."""
    overrides = dict(options)
    if data is not None:
        overrides["data"] = str(data)
    cfg, run_dir = run_config(Path(out) if out else None, Path(resume) if resume else None,
                              Path(config) if config else None, overrides, overwrite)
    return train_run(cfg, run_dir, progress=progress, resume=bool(resume), overwrite=overwrite)


def evaluate(model: str | Path, data: str | Path, *, split: str | None = None, out: str | Path | None = None,
             bootstrap: int = BOOTSTRAP_RESAMPLES, seed: int | None = None, audit: bool = False, name: str | None = None,
             overwrite: bool = False, skip_bad: bool = False, engine: str = "torch", lungs: bool = True,
             attention: bool = False, device: str = "cpu", lung_model: str | Path | None = None) -> tuple[dict, Path]:
    """Evaluate a run (or an exported file) on `split` of `data` as `chestxray evaluate` does: (the metrics, the folder
    they were written to). `attention`: Grad-CAM's share inside each image's lung fields (metrics['attention']);
    `lungs` False: without the lung check; `lung_model`: a segmenter file instead of the packaged one."""
    return evaluate_run(model, data, split, out, skip_bad, bootstrap, seed, audit, name, overwrite, load_on(model, engine, device),
                        lungs, lung_model, attention)


def audit(model: str | Path, data: str | Path, *, split: str | None = None, out: str | Path | None = None,
          bootstrap: int = BOOTSTRAP_RESAMPLES, skip_bad: bool = False, masks: str = "lungs",
          lung_model: str | Path | None = None) -> tuple[dict, Path]:
    """The shortcut audit as `chestxray audit`: ROC-AUC with the lung fields hidden, with only them kept and with the
    borders hidden (`masks`: each image's own lungs, 'lungs', or fixed ellipses, 'ellipse'); (the figures, the folder of
    its audit.json)."""
    from .evaluation.audit import MASK_SOURCES
    from .jobs.audit import audit_run

    if masks not in MASK_SOURCES:
        raise ChestXrayError(f"masks must be one of {', '.join(MASK_SOURCES)}; got '{masks}'")
    return audit_run(model, data, split, out, bootstrap, skip_bad, masks, lung_model)


def export(model: str | Path, out: str | Path, *, images: list[str | Path] | None = None, tolerance: float = TOLERANCE,
           limit: int = VERIFY_IMAGES, skip_bad: bool = False) -> dict:
    """Write the run's model to `out` (.onnx) once onnxruntime agrees with PyTorch on real images (the run's validation
    images unless `images`); return the verification's figures."""
    return export_onnx(model, out, [str(p) for p in expand_paths(images)] if images else None, tolerance, limit, skip_bad)


def crossval(data: str | Path, out: str | Path, *, by: str = "source", folds: int = 5, config: str | Path | None = None,
             progress: bool = False, parallel: str | int = "auto", **options) -> dict:
    """Leave-one-source-out (`by="source"`) or patient-level k-fold (`by="fold"`) estimates of a recipe (`options`:
    any `chestxray train` option by its field name), as `chestxray crossval` (`parallel`: its --parallel); returns
    crossval.json's content."""
    from .jobs.crossval import crossval as run

    cfg, out = run_config(Path(out), None, Path(config) if config else None, {"data": str(data), **options})
    return run(cfg, out, by, folds, progress=progress, n_boot=cfg.calibration.bootstrap, parallel=parallel)


def check_data(data: str | Path, *, normal_class: str = "normal", max_distance: int = 4) -> dict:
    """`chestxray data check`'s report as a dict: counts per split, class and source, unreadable files, duplicates,
    patients across splits, warnings (such as a class that comes from one source only) and `problems` (what would make
    training fail or be wrong; the command exits 1 where there are any)."""
    from .data.check import check_dataset

    return check_dataset(data, max_distance, normal_class)


def merge_datasets(manifests: list[str | Path], out: str | Path | None = None, *, max_distance: int = 32,
                   val: float = 0.15, test: float = 0.15, seed: int = 42) -> pd.DataFrame:
    """Manifests of several datasets as one, as `chestxray data merge` makes it (copies across datasets found and
    dropped by its rule, a patient-level split where none is given); written to `out` (and OUT-duplicates.csv) where
    given. `df.attrs` holds the copies found, the rows dropped and why, and the notes."""
    from .data.merge import merge_manifests

    r = merge_manifests([Path(m) for m in manifests], max_distance, val, test, seed)
    if out is not None:
        r.write(Path(out))
    df = pd.DataFrame(r.rows, columns=r.columns)
    df.attrs.update(duplicates=list(r.duplicates), dropped=dict(r.dropped), per_dataset=dict(r.per_dataset),
                    notes=list(r.notes), splits=dict(r.splits))
    return df


def import_dataset(fmt: str, root: str | Path, out: str | Path | None = None, mapping: dict[str, str] | None = None
                   ) -> pd.DataFrame:
    """A public dataset in its native layout as the project's manifest, as `chestxray data import` makes it (`fmt`:
    kermany, covid-radiography, cohen, nih, rsna-pneumonia; `mapping`: the dataset's findings or class folders to
    classes, 'skip' to leave one out); written to `out` where given. `df.attrs` holds what was read, mapped and skipped."""
    from .data.importers import import_dataset as read

    r = read(fmt, root, mapping)
    if out is not None:
        r.write(Path(out))
    df = pd.DataFrame(r.rows)
    df.attrs.update(read=r.read, mapping=dict(r.mapping), skipped=dict(r.skipped), notes=list(r.notes))
    return df


def train_lungs(data: str | Path, out: str | Path, *, sources: tuple[str, ...] | list[str] = ("cohen-v7",),
                epochs: int = 40, batch_size: int = 8, lr: float = 1e-3, seed: int = 0, progress: bool = False,
                size: int | None = None) -> dict:
    """Train a lung segmenter as `chestxray lungs train` does (OUT/lungs.pt, OUT/metrics.json); return its figures on
    every source's val and test splits (`size`: the side it sees, 256 px unless given). Load it with `lung_model=OUT/lungs.pt` wherever a segmenter is taken."""
    from .jobs.lungs import train_lungs as run
    from .models.lungs import LUNG_SIZE

    return run(data, out, tuple(sources), epochs, batch_size, lr, seed, progress, size or LUNG_SIZE)


def evaluate_lungs(data: str | Path, *, lung_model: str | Path | None = None, split: str = "test",
                   out: str | Path | None = None, bootstrap: int = BOOTSTRAP_RESAMPLES) -> dict:
    """Dice and IoU of a segmenter (the packaged one unless `lung_model`) per source of `split` with 95% patient-level
    intervals, as `chestxray lungs evaluate`; written to `out` as JSON where given."""
    from .jobs.lungs import evaluate_lungs as run
    from .models.lungs import LungModel

    return run(LungModel.load(lung_model), data, split, out, bootstrap)


def segment_lungs(images: str | Path | list[str | Path], out: str | Path | None = None,
                  lung_model: str | Path | None = None) -> pd.DataFrame:
    """The lung segmenter on images (files, or folders of them), as `chestxray lungs predict`: per image the lung
    area as a fraction of the image, `lungs_found` (a plausible pair of lung fields) and `lung_fields` (what was
    found); with `out`, the masks and overlays written there too."""
    from .jobs.lungs import predict_lungs
    from .models.lungs import default_lung_model

    paths = expand_paths([images] if isinstance(images, (str, Path)) else list(images))
    return pd.DataFrame(predict_lungs(default_lung_model(lung_model), paths, out))
