"""Fitting the stages of a run: the head on a frozen backbone, then fine-tuning from the best head epoch.

`prepare_run` checks the options and data, writes the run's first files and decodes the images; `fit_stage`
trains one stage (or takes it as an interrupted run finished it), keeps its best epoch and scores validation
and test with the Predictor's forward pass, the one `chestxray predict` runs. Choosing among the stages and
writing the results is the train job's (`jobs.train`).
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import EarlyStopping, EMAWeightAveraging, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import nn

from ..config import STAGES, Config
from ..data.cache import default_cache_dir, file_key
from ..data.check import one_class_validation, quick_check
from ..data.datamodule import DecodedSplit, decode_split, make_dataset
from ..data.labels import TaskScheme
from ..data.sources import DataError, carve_validation, discover, is_synthetic
from ..data.transforms import Preprocessing
from ..files import load_checked, write_text
from ..models.backbones import create_model, get_spec, normalisation
from ..models.features import FeatureDataset, cached_features, extract_features, head_split, state_fingerprint
from ..models.lungs import default_lung_model
from ..models.predictor import Predictor
from ..notices import SYNTHETIC_NOTE
from ..rundir import RunDir, SkippedFile, read_split, split_rows, write_skipped, write_split
from .losses import TaskLoss, balanced_class_weights, training_weights
from .module import ClassifierModule
from .progress import progress_callbacks
from .runstate import (
    CheckedCheckpointIO,
    KillAfter,
    RandomState,
    RunDirError,
    TrainingCheckpointError,
    claim_run_dir,
    mark_progress,
    read_progress,
)
from .stage_data import StageData

log = logging.getLogger("chestxray")


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
    """The labelled splits to train on (validation and test carved from train where there are none), and the scheme.

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
    else:
        for note in found.notes:
            log.warning("%s", note)
    splits = found.splits
    if not splits.get("train"):
        raise DataError(f"{cfg.data.data}: no training split (a train/ folder, or labelled manifest rows)")
    for name, fraction in (("test", cfg.data.test_fraction), ("val", cfg.data.val_fraction)):
        if name in splits or not fraction:
            continue
        n = len(splits["train"])
        splits["train"], splits[name] = carve_validation(splits["train"], fraction, cfg.optim.seed)
        log.warning(
            "%s has no %s split: carved %d of %d training images (--%s-fraction %g, stratified%s) as %s",
            cfg.data.data, name, len(splits[name]), n, name, fraction,
            ", patient-level" if any(s.patient_id for s in splits[name]) else "", name,
        )
    one_class = one_class_validation(splits["val"], cfg.data.normal_class)
    if one_class:
        raise DataError(f"{cfg.data.data}: {one_class}")
    scheme = TaskScheme.build(cfg.data.task, {s.label for s in splits["train"]}, cfg.data.normal_class)
    for name in ("val", "test"):
        unknown = sorted({s.label for s in splits.get(name, []) if s.label} - set(scheme.classes))
        if unknown:
            raise DataError(f"{cfg.data.data}: split '{name}' has labels {unknown} that train lacks {list(scheme.classes)}")
    return {k: [s for s in v if s.label] for k, v in splits.items() if k in ("train", "val", "test")}, scheme


def read_history(files: RunDir, stage: str, offset: int) -> pd.DataFrame:
    path = files.stage_log(stage)
    if not path.exists():
        return pd.DataFrame()
    df = pd.read_csv(path).drop(columns=["step"], errors="ignore")
    # one row per epoch (train and val metrics are logged apart); an epoch run again after a resume: its last run
    df = df.groupby("epoch", as_index=False).last()
    df.insert(0, "stage", stage)
    df.insert(1, "global_epoch", df["epoch"] + offset)
    return df


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


def uses_contract_features(run: "Run") -> bool:
    """Whether the head stage trains on the contract's own features (`contract_features`): one plain view per image,
    no augmentation, and a head whose logits follow from the pooled features."""
    o = run.cfg.optim
    return o.head_features and o.feature_views == 0 and not run.cfg.augment.head_augment and run.predictor.head_on_features()


def split_features(run: "Run", names: tuple[str, ...], compute, lead: list[str], tail) -> dict[str, torch.Tensor]:
    """Features of each named split the run has, `compute(split, name)`, cached on disk under a key of `lead`, the
    frozen weights, the model, the preprocessing, `tail(name)` and the split's files; computed on this process's GPU
    where there is one."""
    cfg, model = run.cfg, run.model
    cache_dir = Path(cfg.data.cache_dir) if cfg.data.cache_dir else default_cache_dir()
    common = [state_fingerprint(model), get_spec(cfg.model.model).timm_name, str(run.predictor.preprocessing.to_dict())]
    if torch.cuda.is_available() and cfg.hardware.accelerator in ("auto", "gpu", "cuda"):
        model.to(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")  # extract on this process's GPU
    feats = {}
    for name in names:
        if name not in run.decoded:
            continue
        split = run.decoded[name]
        key = [*lead, *common, *tail(name)] + [file_key(s.path, cfg.data.img_size) for s in split.samples]
        feats[name] = cached_features(cache_dir, key, lambda split=split, name=name: compute(split, name))
    model.cpu()
    return feats


def contract_features(run: "Run") -> dict[str, torch.Tensor]:
    """Pooled features of train, val and test as `Predictor.forward` computes them (fp32, eval mode), from the frozen
    backbone, once per run and cached on disk (keyed by the weights, preprocessing and files).

    The head stage trains on them, so the head learns on exactly the numbers it meets in `predict`; the stage's
    validation and test logits follow from them through the classifier (`Predictor.logits_from_features`), and the
    out-of-distribution density of a head-stage model is fitted on the training images' ones: the backbone runs
    once per image in the whole run.
    """
    if not run.contract:
        device = "cuda" if torch.cuda.is_available() and run.cfg.hardware.accelerator in ("auto", "gpu", "cuda") else "cpu"
        run.contract = split_features(
            run, ("train", "val", "test"),
            lambda split, name: run.predictor.forward(split.images, desc=f"backbone features of {name}")[1],
            lead=["contract-features-1"], tail=lambda name: [device])
    return run.contract


def head_features(run: "Run") -> dict[str, torch.Tensor]:
    """What the head stage trains on, (views, N, D) for train and val: the contract features (`contract_features`),
    or, with --feature-views or --head-augment, augmented views extracted under the run's precision and cached."""
    if uses_contract_features(run):
        return {k: v.unsqueeze(0) for k, v in contract_features(run).items() if k in ("train", "val")}
    o, channels_last, augment = run.cfg.optim, run.cfg.hardware.channels_last, run.cfg.augment.augment

    def views(name: str) -> int:
        return o.feature_views if name == "train" else 0

    return split_features(
        run, ("train", "val"),
        lambda split, name: extract_features(run.model, split.images, run.predictor.preprocessing, views(name), o.seed,
                                             precision=run.precision, channels_last=channels_last, augment=augment),
        lead=[], tail=lambda name: [str(views(name)), str(o.seed), run.precision, str(channels_last), augment])


@dataclass
class Run:
    """What the steps of a training run share."""

    cfg: Config
    out: Path
    writer: bool  # the one process (global rank zero) that writes the run directory
    scheme: TaskScheme
    decoded: dict[str, DecodedSplit]
    predictor: Predictor  # the model under training, with its preprocessing: every score comes from here
    origin: str  # where the backbone weights came from
    precision: str
    synthetic: bool
    class_weights: torch.Tensor | None = None
    sample_weights: torch.Tensor | None = None  # per training image (--balance), in run.decoded["train"] order
    states: dict[str, dict] = field(default_factory=dict)  # stage -> its best weights
    logits: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # stage -> split -> logits
    features: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # stage -> split -> pooled features
    contract: dict[str, torch.Tensor] = field(default_factory=dict)  # split -> the frozen backbone's contract features
    histories: list[pd.DataFrame] = field(default_factory=list)
    resume: bool = False  # continuing an interrupted run: finished stages are scored, not trained again

    @property
    def model(self) -> nn.Module:
        return self.predictor.model

    @property
    def eval_split(self) -> str:
        """What the final figures are reported on: test where there is one; never used to choose."""
        return "test" if "test" in self.decoded and self.decoded["test"].samples else "val"

    def infected(self, split: str) -> np.ndarray:
        return np.array([self.scheme.is_infected(s.label) for s in self.decoded[split].samples])

    def targets(self, split: str) -> torch.Tensor:
        return torch.stack([self.scheme.target(s.label) for s in self.decoded[split].samples])


def prepare_run(cfg: Config, out: Path, resume: bool = False, overwrite: bool = False) -> Run:
    """Options, data checks, splits, weights, decoded images; the run directory's first files."""
    cfg.validate()  # every option, before any data is read or any directory made
    if not cfg.data.data:
        raise DataError("no data: give --data or set data in --config")
    data = Path(cfg.data.data).resolve()
    if data.is_dir() and out.resolve().is_relative_to(data):
        raise RunDirError(f"{out}: the run directory is inside the data folder {cfg.data.data}, where its files would be "
                          "read as images of a class by the next run; give an --out outside it")
    if launched_as_global_zero():
        claim_run_dir(out, resume, overwrite)
        if resume and read_progress(out).finished:
            raise RunDirError(f"{out}: this run finished; there is nothing to resume")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # device banners and tips
    get_spec(cfg.model.model)  # fail on an unknown model before decoding anything
    L.seed_everything(cfg.optim.seed, workers=True, verbose=False)
    writer = launched_as_global_zero()
    splits, scheme = prepare_splits(cfg)
    cfg = with_balance_resolved(cfg, splits["train"])
    synthetic = is_synthetic(cfg.data.data)
    files = RunDir(out)
    if writer and resume and files.split.exists():
        check_same_split(files.split, splits)
    elif writer:  # config.yaml first: a run killed from here on can be resumed (split.csv is written again if missing)
        out.mkdir(parents=True, exist_ok=True)
        if not resume:
            cfg.save(files.config)
        write_split(files.split, split_rows(splits))
        if synthetic:
            write_text(files.synthetic_marker, SYNTHETIC_NOTE + "\n")
    # weights before decoding: a missing weights file should stop the run before any slow work
    model, origin = create_model(cfg.model.model, scheme.num_outputs, cfg.model.weights, cfg.model.pretrained, cfg.model.dropout)
    decoded = {k: decode_split(v, cfg.data.img_size, cfg.data.skip_bad, f"decoding {k}", cfg.data.cache_dir) for k, v in splits.items()}
    errors = [e for d in decoded.values() for e in d.errors]
    if errors and writer:
        write_skipped(files.skipped, [SkippedFile(str(e.path), e.reason) for e in errors])
        log.warning("skipped %d unreadable files, listed in %s", len(errors), files.skipped)
    for k in ("train", "val"):
        if len(decoded[k].samples) == 0:
            raise DataError(f"{cfg.data.data}: split '{k}' has no readable images")
    segmenter = default_lung_model(cfg.data.lung_model) if cfg.data.lung_mask or cfg.data.lung_crop else None
    prep = Preprocessing(cfg.data.img_size, *normalisation(model), intensity=cfg.data.intensity, tta=cfg.data.tta,
                         lung_mask=cfg.data.lung_mask, lung_crop=cfg.data.lung_crop,
                         lung_segmenter=segmenter.identity if segmenter else "")
    predictor = Predictor(model=model, scheme=scheme, preprocessing=prep, segmenter=segmenter)
    if prep.lung_input:  # once per image, before anything else sees it: every stage and decision takes these images
        log.info("finding the lung fields of %d images (images %s)", sum(len(d.images) for d in decoded.values()),
                 prep.describe_lung_input())
        decoded = {k: predictor.with_lung_input(d) for k, d in decoded.items()}
    run = Run(cfg, out, writer, scheme, decoded, predictor, origin, resolve_precision(cfg.hardware.precision), synthetic,
              resume=resume)
    if cfg.loss.class_weights:
        run.class_weights = balanced_class_weights(scheme.task, list(run.targets("train")), scheme.num_outputs)
    if cfg.loss.balance != "none":
        run.sample_weights = training_weights(decoded["train"].samples, cfg.loss.balance)
    return run


def with_balance_resolved(cfg: Config, train: list) -> Config:
    """The config with --balance auto made concrete (view where the training images carry views, else none),
    so config.yaml says what was done; an explicit --balance view without views is an error."""
    by = cfg.loss.balance
    has = any(s.view for s in train)
    if by == "auto":
        return replace(cfg, loss=replace(cfg.loss, balance="view" if has else "none"))
    if "view" in by.split("+") and not has:
        raise DataError(f"{cfg.data.data}: --balance view needs each image's view (a 'view' column in a CSV "
                        f"manifest); none of the {len(train)} training images has one")
    return cfg


def stage_inputs(run: Run, stage: str) -> tuple[ClassifierModule, StageData]:
    """The Lightning module and data of a stage: the head on cached features where it can, else images."""
    cfg, bs = run.cfg, run.cfg.data.batch_size
    prep = run.predictor.preprocessing
    targets = {k: list(run.targets(k)) for k in ("train", "val")}
    val_sources = scored_sources(run.decoded["val"].samples, run.scheme)
    on_features = stage == "head" and cfg.optim.head_features and (not cfg.augment.head_augment or cfg.optim.feature_views > 0)
    if on_features:
        feats = head_features(run)
        module = ClassifierModule(run.model, run.scheme, stage, cfg.optim, cfg.loss, cfg.hardware, stage_criterion(run),
                                  head_fn=head_split(run.model)[1], preprocessing=prep, val_sources=val_sources)
        data = StageData(FeatureDataset(feats["train"], targets["train"]), FeatureDataset(feats["val"], targets["val"]),
                         bs, 0, cfg.optim.seed)
        return module, data
    module = ClassifierModule(run.model, run.scheme, stage, cfg.optim, cfg.loss, cfg.hardware, stage_criterion(run), preprocessing=prep,
                              val_sources=val_sources)
    augment = stage == "finetune" or cfg.augment.head_augment
    train_ds = make_dataset(run.decoded["train"], run.scheme, prep, train=augment, augment=cfg.augment.augment)
    val_ds = make_dataset(run.decoded["val"], run.scheme, prep, train=False)
    workers = loader_workers(cfg)
    if workers and cfg.data.workers == "auto":
        log.info("%s stage: %d DataLoader worker(s) augment the training batches (--workers auto on a GPU)", stage, workers)
    return module, StageData(train_ds, val_ds, bs, workers, cfg.optim.seed)


def on_gpu(cfg) -> bool:
    """Whether this run trains on CUDA GPUs."""
    return torch.cuda.is_available() and cfg.hardware.accelerator in ("auto", "gpu", "cuda")


def loader_workers(cfg) -> int:
    """--workers: a count as given; auto is 0 on a CPU (the images are decoded up front, and a worker would take a core
    from the model) and, on GPUs, the CPUs each training process has less one, at most 8 (the batches' augmentation
    runs on the CPU and bounds a GPU's fine-tuning: 1.75x faster with 8 on an H200, benchmarks/gpu.py)."""
    if cfg.data.workers != "auto":
        return int(cfg.data.workers)
    if not on_gpu(cfg):
        return 0
    devices = str(cfg.hardware.devices)
    if devices == "auto" or devices == "-1":
        procs = torch.cuda.device_count()
    elif "," in devices or devices.startswith("["):
        procs = len([d for d in devices.strip("[]").split(",") if d.strip()])
    else:
        procs = int(devices) if devices.isdigit() else 1
    return max(0, min(8, (os.cpu_count() or 1) // max(1, procs) - 1))


def scored_sources(samples: list, scheme) -> list[str | None]:
    """Per validation image, its source where that source's validation images hold both infected and normal ones (a
    ROC-AUC of its own), else None."""
    kinds: dict[str, set[bool]] = {}
    for s in samples:
        kinds.setdefault(s.source, set()).add(scheme.is_infected(s.label))
    return [s.source if s.source is not None and len(kinds[s.source]) == 2 else None for s in samples]


def make_trainer(run: Run, stage: str, n_train: int, progress: bool, continuing: bool) -> tuple[L.Trainer, ModelCheckpoint]:
    """The stage's Trainer: best epoch (weights) and last epoch (everything, for --resume) checkpointed each epoch."""
    cfg = run.cfg
    files = RunDir(run.out)
    ckpt_dir = files.stage_checkpoints(stage)
    if run.writer and not continuing:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        shutil.rmtree(files.logs / stage, ignore_errors=True)
    mode = "min" if cfg.optim.monitor == "val_loss" else "max"
    averaging = stage == "finetune" and cfg.optim.ema_decay > 0
    # the average replaces the weights in a checkpoint through a callback hook, which weights-only saves skip
    ckpt_cb = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=cfg.optim.monitor, mode=mode, save_weights_only=not averaging)
    # monitor None, top 1: the latest epoch, replacing the one before (save_last only follows another save)
    last_cb = ModelCheckpoint(dirpath=ckpt_dir, filename="last", monitor=None, save_top_k=1, enable_version_counter=False)
    shown, bar = progress_callbacks(stage, n_train, progress and run.writer)
    trainer = L.Trainer(
        max_epochs=cfg.optim.epochs_head if stage == "head" else cfg.optim.epochs_finetune,
        accelerator=cfg.hardware.accelerator,
        devices=cfg.hardware.devices,
        precision=run.precision,
        num_nodes=cfg.hardware.num_nodes,
        strategy=cfg.hardware.strategy,
        deterministic=cfg.hardware.deterministic,
        callbacks=[ckpt_cb, last_cb, EarlyStopping(cfg.optim.monitor, patience=cfg.optim.patience, mode=mode),
                   RandomState(), *shown, KillAfter(stage),
                   *([EMAWeightAveraging(decay=cfg.optim.ema_decay)] if averaging else [])],
        plugins=[CheckedCheckpointIO()],
        logger=CSVLogger(files.logs, name=stage, version=0, flush_logs_every_n_steps=1),  # on disk before a crash
        enable_progress_bar=bar,
        enable_model_summary=False,
        log_every_n_steps=1,
        num_sanity_val_steps=0,
        default_root_dir=run.out,
        use_distributed_sampler=False,  # StageData shards without padding validation
    )
    return trainer, ckpt_cb


def fit_stage(run: Run, stage: str, progress: bool) -> dict:
    """Train one stage (or, resuming, take it as it finished), keep its best epoch, and score that model."""
    # each stage starts from the same random state, whatever ran before it (a cold or a warm feature cache)
    L.seed_everything(run.cfg.optim.seed + STAGES.index(stage), workers=True, verbose=False)
    files = RunDir(run.out)
    ckpt_dir = files.stage_checkpoints(stage)
    done = run.resume and stage in read_progress(run.out).done
    if done:  # finished before the interruption: its best weights, scored again below (the same forward pass)
        best = load_checked(ckpt_dir / "best.ckpt", f"{stage} checkpoint", TrainingCheckpointError)["state_dict"]
        run.model.load_state_dict({k[len("model."):]: v for k, v in best.items() if k.startswith("model.")})
        criterion = stage_criterion(run)
    else:
        last = ckpt_dir / "last.ckpt"
        continuing = run.resume and last.exists()
        if run.cfg.hardware.channels_last:
            run.model.to(memory_format=torch.channels_last)
        module, data = stage_inputs(run, stage)
        trainer, ckpt_cb = make_trainer(run, stage, len(data.train_ds), progress, continuing)
        log_csv = files.stage_log(stage)
        earlier = keep_earlier_log(log_csv) if continuing and run.writer else None  # the logger starts its file anew
        if continuing:
            log.info("resuming the %s stage from %s", stage, last)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", ".*does not have many workers.*")
            warnings.filterwarnings("ignore", ".*module\\(s\\) in eval mode.*")  # frozen BN, on purpose
            warnings.filterwarnings("ignore", ".*Experiment logs directory.*")
            warnings.filterwarnings("ignore", ".*treespec.*")  # Lightning's own use of a deprecated torch name
            if continuing:  # the stage's own checkpoints, resumed from
                warnings.filterwarnings("ignore", ".*Checkpoint directory .* exists and is not empty.*")
            trainer.fit(module, datamodule=data, ckpt_path=str(last) if continuing else None)
        if earlier is not None:
            later = pd.read_csv(log_csv) if log_csv.exists() else pd.DataFrame()
            write_text(log_csv, pd.concat([earlier, later], ignore_index=True).to_csv(index=False))
            earlier_log(log_csv).unlink(missing_ok=True)
        best = load_checked(ckpt_cb.best_model_path, f"{stage} checkpoint", TrainingCheckpointError)["state_dict"]
        module.load_state_dict(best)  # the best epoch, not the last
        criterion = module.criterion
    run.model.cpu()  # scored as `predict` scores it (Predictor.forward sets its own memory format)
    if not run.writer:
        return {}
    mark_progress(run.out, done=[stage])
    run.states[stage] = copy.deepcopy(run.model.state_dict())
    hist = read_history(files, stage, sum(len(h) for h in run.histories))
    run.histories.append(hist)
    splits = [k for k in ("val", "test") if k in run.decoded]
    if stage == "head" and uses_contract_features(run):  # the features the stage trained on: the classifier alone
        feats = contract_features(run)
        log.info("scoring val and test with the best %s epoch (on the backbone features computed once)", stage)
        outputs = {k: (run.predictor.logits_from_features(feats[k]), feats[k]) for k in splits}
    else:
        outputs = {k: run.predictor.forward(run.decoded[k].images, desc=f"scoring {k} with the best {stage} epoch") for k in splits}
    run.logits[stage] = {k: v[0] for k, v in outputs.items()}
    run.features[stage] = {k: v[1] for k, v in outputs.items()}
    return {"val_loss": float(criterion(run.logits[stage]["val"], run.targets("val"))), "epochs_run": len(hist)}


def earlier_log(log_csv: Path) -> Path:
    return log_csv.with_name("metrics-before-resume.csv")


def keep_earlier_log(log_csv: Path) -> pd.DataFrame:
    """The epochs logged before this resume, kept in a file of their own until the stage ends: the logger starts
    metrics.csv anew, so a run killed again during the resume would otherwise lose them."""
    parts = []
    for f in (earlier_log(log_csv), log_csv):
        try:  # a line cut by the kill is dropped: its epoch is trained again
            parts.append(pd.read_csv(f, on_bad_lines="skip"))
        except (FileNotFoundError, pd.errors.EmptyDataError):
            continue
    earlier = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    if len(earlier):
        write_text(earlier_log(log_csv), earlier.to_csv(index=False))
    return earlier


def stage_criterion(run: Run) -> TaskLoss:
    """The loss a stage trains with (and scores validation loss with, unweighted by image): the configured
    loss with the run's class weights and, under --balance, its per-image weights."""
    c = run.cfg.loss
    return TaskLoss(run.scheme.task, c.loss, c.focal_gamma, c.focal_alpha, run.class_weights, run.sample_weights)


def check_same_split(path: Path, splits: dict) -> None:
    """A resumed run must see the data it started with: the same images in the same splits."""
    now = {k: sorted(str(Path(s.path).resolve()) for s in v) for k, v in splits.items()}
    before = {k: [] for k in now}
    for row in read_split(path):
        if row.split in now:
            before[row.split].append(str(Path(row.path).resolve()))
    before = {k: sorted(v) for k, v in before.items()}
    if now != before:
        raise RunDirError(f"{path}: the data changed since the run started (other images or splits); "
                          "a resumed run must train on the same data; start a new run with --out")
