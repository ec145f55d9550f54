"""Recalibrate a trained model for a new site with a small labelled sample from it.

A model's probabilities and its threshold were fitted on its training hospital's validation images;
at another site the same threshold can call every normal image infected. `adapt` takes `n` labelled
images of the new site (patient-level, stratified), refits the temperature and the operating point on
them (and with `head`, the classification layer on their frozen features), and reports before and after
on the rest of the site's images, which it never saw. The result is a complete run directory.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import BOOTSTRAP_RESAMPLES, Config
from ..data.sources import DataError, Sample, carve_validation, discover, is_synthetic, patient_groups
from ..errors import ChestXrayError
from ..evaluation.intervals import bootstrap_ci
from ..evaluation.metrics import binary_metrics
from ..evaluation.model_card import write_model_card
from ..models.calibration import DEFAULT_TARGET_SENSITIVITY, ThresholdRule, fit_temperature
from ..models.load import load_predictor
from ..models.predictor import Predictor, checkpoint_path, run_directory
from ..rundir import MetricsHeader, RunDir, SplitRow, write_json, write_metrics, write_split
from ..training.losses import TaskLoss, balanced_class_weights
from .evaluate import write_run_outputs


@dataclass
class SiteData:
    """Every labelled image of the site with the model's outputs on it (computed once)."""

    samples: list[Sample]
    images: object
    logits: torch.Tensor
    features: torch.Tensor


log = logging.getLogger("chestxray")


def split_site(samples: list[Sample], n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of (the n adaptation images, the held-back rest): patient-level and stratified."""
    if not 4 <= n < len(samples):
        raise ChestXrayError(f"--n {n}: need at least 4 adaptation images and some left to evaluate on ({len(samples)} labelled); "
                             "--n all adapts on every image and reports figures out of fold")
    index = {s.path: i for i, s in enumerate(samples)}
    rest, chosen = carve_validation(samples, n / len(samples), seed)
    return np.array([index[s.path] for s in chosen]), np.array([index[s.path] for s in rest])


def refit_head(predictor: Predictor, features: torch.Tensor, samples: list[Sample], steps: int = 300) -> None:
    """Retrain the classification layer on the adaptation images' frozen features, kept near its old weights."""
    scheme = predictor.scheme
    classifier = predictor.model.get_classifier()
    if not isinstance(classifier, torch.nn.Linear):
        raise ChestXrayError("--head needs a model whose classifier is one linear layer")
    targets = torch.stack([scheme.target(s.label) for s in samples])
    weights = balanced_class_weights(scheme.task, list(targets), scheme.num_outputs)
    criterion = TaskLoss(scheme.task, "ce", class_weights=weights)
    start = [p.detach().clone() for p in classifier.parameters()]
    opt = torch.optim.Adam(classifier.parameters(), lr=1e-3)
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad()
            loss = criterion(classifier(features), targets)
            loss = loss + 1e-2 * sum(((p - s) ** 2).sum() for p, s in zip(classifier.parameters(), start))
            loss.backward()
            opt.step()


def out_of_fold_logits(predictor: Predictor, features: torch.Tensor, samples: list[Sample], folds: int = 5,
                       seed: int = 0) -> torch.Tensor:
    """Logits of each adaptation image from a head refitted on the other folds (stratified)."""
    from sklearn.model_selection import StratifiedKFold

    y = np.array([predictor.scheme.is_infected(s.label) for s in samples])
    folds = max(2, min(folds, int(np.bincount(y, minlength=2).min())))
    out = torch.zeros(len(samples), predictor.scheme.num_outputs)
    for fit_idx, score_idx in StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y):
        fold = copy.deepcopy(predictor)
        refit_head(fold, features[fit_idx], [samples[i] for i in fit_idx])
        with torch.no_grad():
            out[score_idx] = fold.model.get_classifier()(features[score_idx]).float()
    return out


def adapted_predictor(predictor: Predictor, site: SiteData, adapt_idx: np.ndarray, head: bool,
                      rule: ThresholdRule = ThresholdRule()) -> tuple[Predictor, torch.Tensor]:
    """A copy of `predictor` recalibrated on the adaptation images; and its logits on every site image.

    `rule`: how the new threshold is chosen; what it leaves None is the run's own.
    """
    new = copy.deepcopy(predictor)
    samples = [site.samples[i] for i in adapt_idx]
    logits = site.logits
    calibration_logits = logits[adapt_idx]
    if head:
        # a head fitted on the n images fits them too well to set a threshold on: the temperature and the
        # threshold come from out-of-fold logits (each image scored by a head that did not see it)
        calibration_logits = out_of_fold_logits(predictor, site.features[adapt_idx], samples)
        refit_head(new, site.features[adapt_idx], samples)
        # the new head is fitted, scored and thresholded on the plain view's features: it predicts from them too
        new.preprocessing = dataclasses.replace(new.preprocessing, tta="none")
        with torch.no_grad():
            logits = new.model.get_classifier()(site.features).float()
    y = np.array([new.scheme.is_infected(s.label) for s in samples])
    targets = torch.stack([new.scheme.target(s.label) for s in samples])
    new.temperature = fit_temperature(calibration_logits, targets, new.scheme.task)
    chosen, points = rule.filled(run_rule(predictor)).choose(y, new.p_infected(calibration_logits))
    new.threshold, new.thresholds = points[chosen], points
    new.threshold_rule = f"{chosen}, chosen on {len(samples)} images of the new site" + (" (out-of-fold)" if head else "")
    return new, logits


def run_rule(predictor: Predictor) -> ThresholdRule:
    """The threshold rule the model was trained with (from its config, else from its stored rule's name)."""
    if predictor.meta.get("config"):
        return ThresholdRule.of_config(Config.of_run(predictor.meta["config"]).calibration)
    name = (predictor.threshold_rule or "best_f1").split(",")[0]
    return ThresholdRule("sensitivity" if name.startswith("sensitivity") else name, DEFAULT_TARGET_SENSITIVITY, 0.0)


def before_after(old: Predictor, new: Predictor, site: SiteData, new_logits: torch.Tensor, held: np.ndarray,
                 n_boot: int, seed: int) -> dict:
    """Metrics on the held-back images at each model's own threshold, with 95% intervals."""
    y = np.array([old.scheme.is_infected(site.samples[i].label) for i in held])
    groups = patient_groups([site.samples[i] for i in held])
    out = {}
    for name, predictor, logits in (("before", old, site.logits), ("after", new, new_logits)):
        p = predictor.p_infected(logits[held])
        m = binary_metrics(y, p, predictor.threshold)
        m["ci95"] = bootstrap_ci(y, p, {"t": predictor.threshold}, groups, n_boot, seed)["t"] if n_boot else {}
        out[name] = m
    return out


def load_site(predictor: Predictor, data: str | Path, skip_bad: bool = False) -> SiteData:
    """Every labelled image of the site (whatever split it is in), decoded, with the model's outputs."""
    samples = [s for v in discover(data).splits.values() for s in v if s.label is not None]
    unknown = sorted({s.label for s in samples} - set(predictor.scheme.classes))
    if unknown:
        raise DataError(f"{data}: labels {unknown} are not among the model's classes {list(predictor.scheme.classes)}")
    split = predictor.decode(samples, skip_bad, desc="reading the site's images")
    logits, features = predictor.forward(split.images, desc="scoring the site's images")
    return SiteData(split.samples, split.images, logits, features)


def cross_fitted(predictor: Predictor, site: SiteData, head: bool, rule: ThresholdRule, seed: int,
                 folds: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """With every image used to adapt, figures no adapted model has seen: the site in `folds` patient-level,
    stratified folds; each fold scored by a model adapted on the others, at that model's own threshold.

    Returns (fold of each image, its out-of-fold score): P(infected) shifted by 0.5 minus its fold's threshold, so
    that 0.5 gives each image its own fold's decision and the scores rank as the pooled ROC curve needs."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    y = np.array([predictor.scheme.is_infected(s.label) for s in site.samples])
    folds = max(2, min(folds, int(np.bincount(y, minlength=2).min())))
    groups = patient_groups(site.samples)
    splitter = (StratifiedGroupKFold(folds, shuffle=True, random_state=seed) if groups
                else StratifiedKFold(folds, shuffle=True, random_state=seed))
    fold_of, score = np.zeros(len(y), int), np.zeros(len(y))
    for k, (fit_idx, score_idx) in enumerate(splitter.split(np.zeros(len(y)), y, groups)):
        log.info("out-of-fold figures: fold %d of %d (adapted on %d images, scoring %d)", k + 1, folds, len(fit_idx), len(score_idx))
        model, logits = adapted_predictor(predictor, site, fit_idx, head, rule)
        fold_of[score_idx] = k
        score[score_idx] = model.p_infected(logits[score_idx]) - model.threshold + 0.5
    return fold_of, score


def adapt_all(predictor: Predictor, site: SiteData, head: bool, rule: ThresholdRule, n_boot: int, seed: int) -> dict:
    """Before (the run as it is) and after (out-of-fold, `cross_fitted`) on every image of the site."""
    y = np.array([predictor.scheme.is_infected(s.label) for s in site.samples])
    groups = patient_groups(site.samples)
    _, score = cross_fitted(predictor, site, head, rule, seed)
    out = {}
    for name, p, t in (("before", predictor.p_infected(site.logits), predictor.threshold), ("after", score, 0.5)):
        m = binary_metrics(y, p, t)
        m["ci95"] = bootstrap_ci(y, p, {"t": t}, groups, n_boot, seed)["t"] if n_boot else {}
        out[name] = m
    out["after"]["threshold"] = None  # one threshold per fold; the adapted model's own is threshold_after
    return out


def parse_n(n: int | str) -> int | None:
    """--n: a count, or 'all' (None)."""
    if isinstance(n, int) or str(n).isdigit():
        return int(n)
    if str(n).lower() == "all":
        return None
    raise ChestXrayError(f"--n {n}: give a number of images, or 'all'")


def adapt_run(run: str | Path, data: str | Path, out: str | Path, n: int | str = 100, head: bool = False, seed: int = 0,
              n_boot: int = BOOTSTRAP_RESAMPLES, skip_bad: bool = False, rule: ThresholdRule = ThresholdRule()) -> dict:
    """Recalibrate RUN for the site DATA into the run directory OUT; return the before/after comparison.

    `n` 'all': adapt on every labelled image, and report the after figures out of fold (`adapt_all`)."""
    out = Path(out)
    n = parse_n(n)
    predictor = load_predictor(run)
    predictor.torch_model("adapt")  # RUN2 is a complete run with its own checkpoint
    site = load_site(predictor, data, skip_bad)
    if n is None:
        if len(site.samples) < 8:
            raise ChestXrayError(f"--n all: {len(site.samples)} labelled images; need at least 8 for out-of-fold figures")
        adapt_idx, held = np.arange(len(site.samples)), np.array([], int)
        new, new_logits = adapted_predictor(predictor, site, adapt_idx, head, rule)
        comparison = adapt_all(predictor, site, head, rule, n_boot, seed)
    else:
        adapt_idx, held = split_site(site.samples, n, seed)
        new, new_logits = adapted_predictor(predictor, site, adapt_idx, head, rule)
        comparison = before_after(predictor, new, site, new_logits, held, n_boot, seed)
    new.meta = {**new.meta, "adapted_from": str(checkpoint_path(run).resolve()), "data_resolved": str(Path(data).resolve()),
                "adaptation": {"data": str(data), "n": int(len(adapt_idx)), "all": n is None, "head": head, "seed": seed}}
    out.mkdir(parents=True, exist_ok=True)
    files, source = RunDir(out), RunDir(run_directory(run))
    new.save(files.best_checkpoint)
    if source.config.exists():
        shutil.copy(source.config, files.config)
    write_split(files.split, [SplitRow.of(name, site.samples[i]) for name, idx in (("adaptation", adapt_idx), ("heldout", held))
                              for i in idx])
    header = MetricsHeader(
        kind="adaptation", data=str(data), data_resolved=str(Path(data).resolve()), split="heldout", external=False,
        synthetic=is_synthetic(data), model=new.meta.get("model_name"), stage=new.meta.get("stage"), val_threshold=new.threshold,
        adaptation={**new.meta["adaptation"], "before": comparison["before"], "after": comparison["after"]})
    if n is None:  # no image left that the adapted model has not seen: the figures are the cross-fitted ones
        header.split = "out-of-fold"
        write_metrics(files.metrics, {**header.to_dict(), "notes": [
            "adapted on every labelled image of the site; figures are out of fold: each image scored by a model "
            "adapted on the other folds, at that model's threshold"], "binary": {"at_val_threshold": comparison["after"]}})
    else:
        held_split = predictor.decode([site.samples[i] for i in held], skip_bad)
        write_run_outputs(out, new, held_split, new_logits[held], header, None, n_boot, seed,
                          features=site.features[held])
    write_model_card(new, out)
    result = {"run": str(run), "data": str(data), "n_adaptation": int(len(adapt_idx)), "n_heldout": int(len(held)),
              "all": n is None, "head": head, **comparison, "threshold_before": predictor.threshold,
              "threshold_after": new.threshold, "temperature_after": new.temperature}
    write_json(files.adaptation, result)
    return result
