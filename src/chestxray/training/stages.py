"""The two-stage recipe: head on a frozen backbone, then fine-tuning from the best head checkpoint."""

from __future__ import annotations

import csv
import logging
import os
import shutil
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from ..config import STAGES, Config
from ..data.datamodule import StageData, decode_split, make_dataset
from ..data.labels import TaskScheme
from ..data.check import quick_check
from ..data.sources import DataError, carve_validation, class_counts, discover, is_synthetic, write_split_csv
from .. import SYNTHETIC_NOTE
from ..evaluation.evaluate import write_evaluation, write_json
from ..evaluation.metrics import binary_metrics, fit_temperature, operating_points
from ..evaluation.report import ci_line, summary_table
from ..evaluation.html import write_report
from ..inference.explain import cam_examples
from ..inference.predict import LoadedModel, predict_logits, save_checkpoint
from ..data.cache import default_cache_dir, file_key
from ..models.backbones import create_model, get_spec, normalisation
from ..models.features import FeatureDataset, cached_features, extract_features, head_split, state_fingerprint
from .losses import balanced_class_weights
from .module import ClassifierModule
from .progress import progress_callbacks

log = logging.getLogger("chestxray")


def choose_point(points: dict[str, float], rule: str) -> str:
    """The operating point `rule` names (best_f1 | youden | sensitivity) among the validation thresholds."""
    return next(n for n in points if n == rule or (rule == "sensitivity" and n.startswith("sensitivity_")))


def parse_stages(stages: str) -> list[str]:
    """The stages in running order (Config.validate has checked the names)."""
    return sorted({s.strip() for s in stages.split(",") if s.strip()}, key=STAGES.index)


def launched_as_global_zero() -> bool:
    """Before a Trainer exists: is this the process that writes the run directory?

    DDP processes started by Lightning, torchrun or SLURM carry their rank in the environment; a plain
    process (and the one that launches the others) has none and is rank zero.
    """
    env = os.environ
    if "RANK" in env:  # torchrun
        return int(env["RANK"]) == 0
    if "LOCAL_RANK" in env:  # Lightning's own launcher
        return int(env["LOCAL_RANK"]) == 0 and int(env.get("NODE_RANK", 0)) == 0
    return int(env.get("SLURM_PROCID", 0)) == 0  # srun


def prepare_splits(cfg: Config):
    """The labelled splits to train on (validation carved from train where there is none), and the scheme.

    Unless `cfg.data.check` is off, the cheap dataset checks run first and a problem stops the run
    before anything is decoded.
    """
    found = discover(cfg.data.data)
    if cfg.data.check:
        report = quick_check(found, cfg.data.normal_class)
        for warning in report["warnings"]:
            log.warning("%s: %s", cfg.data.data, warning)
        if report["problems"]:
            details = [f"{d['kind']}: {d['a']} ({d['split_a']}) = {d['b']} ({d['split_b']})"
                       for d in report["duplicates_across_splits"] + report["conflicting_labels"]][:5]
            raise DataError(
                f"{cfg.data.data}: " + "; ".join(report["problems"])
                + "".join(f"\n  {d}" for d in details)
                + f"\n(`chestxray data check {cfg.data.data}` lists everything; --no-check trains anyway)"
            )
    splits = found.splits
    if "train" not in splits:
        raise DataError(f"{cfg.data.data}: no training split (a train/ folder, or labelled manifest rows)")
    if "val" not in splits:
        splits["train"], splits["val"] = carve_validation(splits["train"], cfg.data.val_fraction, cfg.train.seed)
        log.warning(
            "%s has no validation split: carved %d of %d training images (--val-fraction %g, stratified%s) as validation",
            cfg.data.data, len(splits["val"]), len(splits["train"]) + len(splits["val"]), cfg.data.val_fraction,
            ", patient-level" if any(s.patient_id for s in splits["val"]) else "",
        )
    scheme = TaskScheme.build(cfg.data.task, {s.label for s in splits["train"]}, cfg.data.normal_class)
    for name in ("val", "test"):
        unknown = sorted({s.label for s in splits.get(name, []) if s.label} - set(scheme.classes))
        if unknown:
            raise DataError(f"{cfg.data.data}: split '{name}' has labels {unknown} that train lacks {list(scheme.classes)}")
    return {k: [s for s in v if s.label] for k, v in splits.items() if k in ("train", "val", "test")}, scheme


def read_history(log_dir: Path, stage: str, offset: int) -> pd.DataFrame:
    path = log_dir / stage / "version_0" / "metrics.csv"
    if not path.exists():
        return pd.DataFrame()
    df = pd.read_csv(path).drop(columns=["step"], errors="ignore")
    df = df.groupby("epoch", as_index=False).first()
    df.insert(0, "stage", stage)
    df.insert(1, "global_epoch", df["epoch"] + offset)
    return df


def _score(monitor: str, val_metrics: dict, val_loss: float) -> float:
    """Higher is better."""
    if monitor == "val_loss":
        return -val_loss
    return val_metrics["roc_auc" if monitor == "val_auc" else "f1_infected"] or 0.0


def resolve_precision(precision: str) -> str:
    """'auto': bf16 autocast where the hardware supports it, fp16 AMP on older GPUs, else fp32."""
    if precision != "auto":
        return precision
    if torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    try:
        cpu_bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        cpu_bf16 = False
    return "bf16-mixed" if cpu_bf16 else "32-true"


def head_features(cfg: Config, model, decoded: dict, mean, std, precision: str) -> dict[str, torch.Tensor]:
    """Features of every split from the frozen backbone, computed once and cached on disk."""
    cache_dir = Path(cfg.data.cache_dir) if cfg.data.cache_dir else default_cache_dir()
    fingerprint = state_fingerprint(model)
    if torch.cuda.is_available() and cfg.train.accelerator in ("auto", "gpu", "cuda"):
        model.to(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")  # extract on this process's GPU
    feats = {}
    for name, split in decoded.items():
        views = cfg.train.feature_views if name == "train" else 0
        key = [fingerprint, get_spec(cfg.model.model).timm_name, str(cfg.data.img_size), str(views),
               str(cfg.train.seed), precision, str(cfg.train.channels_last)]
        key += [file_key(s.path, cfg.data.img_size) for s in split.samples]
        feats[name] = cached_features(
            cache_dir, key,
            lambda split=split, views=views: extract_features(
                model, split.images, cfg.data.img_size, mean, std, views, cfg.train.seed,
                precision=precision, channels_last=cfg.train.channels_last,
            ),
        )
    model.cpu()
    return feats


def train_run(cfg: Config, out: str | Path, progress: bool = True) -> dict:
    """Train the configured stages into run directory `out`; evaluate the chosen model; return the summary."""
    out = Path(out)
    cfg.validate()  # every option, before any data is read or any directory made
    if not cfg.data.data:
        raise DataError("no data: give --data or set data in --config")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # device banners and tips
    warnings.filterwarnings("ignore", ".*treespec.*")
    stages = parse_stages(cfg.train.stages)
    get_spec(cfg.model.model)  # fail on an unknown model before decoding anything
    L.seed_everything(cfg.train.seed, workers=True, verbose=False)
    synthetic = is_synthetic(cfg.data.data)
    zero = launched_as_global_zero()  # only one process writes the run directory
    splits, scheme = prepare_splits(cfg)
    if zero:
        out.mkdir(parents=True, exist_ok=True)
        write_split_csv(out / "split.csv", splits)
        cfg.save(out / "config.yaml")
    if synthetic and zero:
        (out / "SYNTHETIC_DATA.txt").write_text(SYNTHETIC_NOTE + "\n")

    # weights before decoding: a missing weights file should stop the run before any slow work
    model, origin = create_model(cfg.model.model, scheme.num_outputs, cfg.model.weights, cfg.model.pretrained, cfg.model.dropout)
    decoded = {
        k: decode_split(v, cfg.data.img_size, cfg.data.skip_bad, f"decoding {k}", cfg.data.cache_dir) for k, v in splits.items()
    }
    errors = [e for d in decoded.values() for e in d.errors]
    if errors and zero:
        with open(out / "skipped.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "reason"])
            w.writerows([e.path, e.reason] for e in errors)
        log.warning("skipped %d unreadable files, listed in %s", len(errors), out / "skipped.csv")
    for k in ("train", "val"):
        if len(decoded[k].samples) == 0:
            raise DataError(f"{cfg.data.data}: split '{k}' has no readable images")

    mean, std = normalisation(model)
    precision = resolve_precision(cfg.train.precision)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    size, bs = cfg.data.img_size, cfg.data.batch_size
    train_ds = make_dataset(decoded["train"], scheme, size, train=True)
    val_ds = make_dataset(decoded["val"], scheme, size, train=False)
    plain_train_ds = make_dataset(decoded["train"], scheme, size, train=False)
    class_weights = (
        balanced_class_weights(scheme.task, train_ds.targets, scheme.num_outputs) if cfg.train.class_weights else None
    )
    y_val = np.array([scheme.is_infected(s.label) for s in decoded["val"].samples])
    has_test = "test" in decoded and len(decoded["test"].samples) > 0
    y_test = np.array([scheme.is_infected(s.label) for s in decoded["test"].samples]) if has_test else None

    results: dict[str, dict] = {}
    states: dict[str, dict] = {}
    logits: dict[str, dict[str, torch.Tensor]] = {}  # stage -> split -> logits of that stage's best model
    histories = []
    for stage in stages:
        epochs = cfg.train.epochs_head if stage == "head" else cfg.train.epochs_finetune
        if epochs <= 0:
            continue
        # each stage starts from the same random state, whatever ran before it (a cold or warm feature cache)
        L.seed_everything(cfg.train.seed + STAGES.index(stage), workers=True, verbose=False)
        on_features = stage == "head" and cfg.train.head_features and (not cfg.train.head_augment or cfg.train.feature_views > 0)
        if on_features:
            feats = head_features(cfg, model, decoded, mean, std, precision)
            head_fn = head_split(model)[1]
            module = ClassifierModule(model, scheme, stage, cfg.train, class_weights, head_fn=head_fn, mean=mean, std=std)
            data = StageData(FeatureDataset(feats["train"], train_ds.targets), FeatureDataset(feats["val"], val_ds.targets), bs, 0, cfg.train.seed)
        else:
            module = ClassifierModule(model, scheme, stage, cfg.train, class_weights, mean=mean, std=std)
            augment = stage == "finetune" or cfg.train.head_augment
            data = StageData(train_ds if augment else plain_train_ds, val_ds, bs, cfg.data.workers, cfg.train.seed)
        ckpt_dir = out / "checkpoints" / stage
        if zero:
            shutil.rmtree(ckpt_dir, ignore_errors=True)
            shutil.rmtree(out / "logs" / stage, ignore_errors=True)
        mode = "min" if cfg.train.monitor == "val_loss" else "max"
        ckpt_cb = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=cfg.train.monitor, mode=mode, save_weights_only=True)
        shown, bar = progress_callbacks(stage, len(data.train_ds), progress and zero)
        trainer = L.Trainer(
            max_epochs=epochs,
            accelerator=cfg.train.accelerator,
            devices=cfg.train.devices,
            precision=precision,
            num_nodes=cfg.train.num_nodes,
            strategy=cfg.train.strategy,
            deterministic=cfg.train.deterministic,
            callbacks=[ckpt_cb, EarlyStopping(cfg.train.monitor, patience=cfg.train.patience, mode=mode), *shown],
            logger=CSVLogger(out / "logs", name=stage, version=0),
            enable_progress_bar=bar,
            enable_model_summary=False,
            log_every_n_steps=1,
            num_sanity_val_steps=0,
            default_root_dir=out,
            use_distributed_sampler=False,  # StageData shards without padding validation
        )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", ".*does not have many workers.*")
            warnings.filterwarnings("ignore", ".*module\\(s\\) in eval mode.*")  # frozen BN, on purpose
            trainer.fit(module, datamodule=data)
        best = torch.load(ckpt_cb.best_model_path, map_location="cpu", weights_only=False)["state_dict"]
        module.load_state_dict(best)  # the best epoch, not the last
        model.cpu()
        if not trainer.is_global_zero:
            continue  # other DDP processes only train; the next stage starts from the same best weights
        states[stage] = {k: v.clone() for k, v in model.state_dict().items()}
        hist = read_history(out / "logs", stage, sum(len(h) for h in histories))
        histories.append(hist)

        if on_features:
            with torch.no_grad():
                model.eval()
                logits[stage] = {k: head_fn(feats[k][0]).float() for k in ("val", "test") if k in decoded}
        else:
            logits[stage] = {k: predict_logits(model, decoded[k].images, size, mean, std) for k in ("val", "test") if k in decoded}
        val_loss = float(module.criterion(logits[stage]["val"], torch.stack(val_ds.targets)))
        val_m = binary_metrics(y_val, scheme.p_infected(logits[stage]["val"]).numpy(), 0.5)
        res = {"val": val_m, "val_loss": val_loss, "score": _score(cfg.train.monitor, val_m, val_loss), "epochs_run": len(hist)}
        if has_test:
            res["test"] = binary_metrics(y_test, scheme.p_infected(logits[stage]["test"]).numpy(), 0.5)
        results[stage] = res

    if not zero:
        return {}
    if not results:
        raise ValueError("no stage ran: set --epochs-head and/or --epochs-finetune above 0")
    # The final model is the stage with the best validation score; test never chooses anything.
    final_stage = max(results, key=lambda s: results[s]["score"])
    model.load_state_dict(states[final_stage])
    val_logits = logits[final_stage]["val"]
    temperature = fit_temperature(val_logits, torch.stack(val_ds.targets), scheme.task) if cfg.train.calibrate else 1.0
    points = operating_points(y_val, scheme.p_infected(val_logits / temperature).numpy(), cfg.train.target_sensitivity)
    chosen = choose_point(points, cfg.train.operating_point)
    threshold = points[chosen]
    meta = {
        "model_name": cfg.model.model,
        "timm_name": get_spec(cfg.model.model).timm_name,
        "scheme": scheme.to_dict(),
        "img_size": size,
        "mean": list(mean),
        "std": list(std),
        "threshold": threshold,
        "threshold_rule": f"{chosen}, chosen on validation",
        "thresholds": points,
        "temperature": temperature,
        "stage": final_stage,
        "weights_origin": origin,
        "config": cfg.to_dict(),
        "synthetic": synthetic,
        "data_resolved": str(Path(cfg.data.data).resolve()),
    }
    save_checkpoint(out / "checkpoints" / "best.ckpt", model, meta)
    history = pd.concat(histories, ignore_index=True) if histories else pd.DataFrame()
    history.to_csv(out / "history.csv", index=False)

    header = {
        "data": cfg.data.data,
        "split": "test" if has_test else "val",
        "external": False,
        "synthetic": synthetic,
        "model": cfg.model.model,
        "weights_origin": origin,
        "final_stage": final_stage,
        "val_threshold": threshold,
        "val_threshold_rule": chosen,
        "class_counts": {k: class_counts(d.samples) for k, d in decoded.items()},
        "unreadable_skipped": [str(e) for e in errors],
        "stages": results,
    }
    eval_split = "test" if has_test else "val"
    metrics = write_evaluation(
        out, scheme, logits[final_stage][eval_split], decoded[eval_split].samples, threshold, header, history,
        points, temperature, cfg.train.bootstrap, cfg.train.seed,
    )
    metrics["summary"] = summarise(results, metrics, final_stage, eval_split, synthetic)
    write_json(out / "metrics.json", metrics)
    loaded = LoadedModel(model, scheme, size, mean, std, threshold, meta, temperature)
    cams = cam_examples(loaded, decoded[eval_split].images, decoded[eval_split].samples, logits[final_stage][eval_split])
    write_report(out, metrics, cfg.to_dict(), cams)
    return metrics


def summarise(results: dict, metrics: dict, final_stage: str, split: str, synthetic: bool) -> str:
    rows = {}
    for stage, r in results.items():
        rows[f"{stage} best: val @0.5"] = r["val"]
        if "test" in r:
            rows[f"{stage} best: test @0.5"] = r["test"]
    rows[f"final ({final_stage}) {split} @val-thr"] = metrics["binary"]["at_val_threshold"]
    text = summary_table(rows) + "\n" + ci_line(metrics)
    if synthetic:
        text = f"*** {SYNTHETIC_NOTE} ***\n" + text
    return text
