"""Run configuration: dataclasses by section (data, model, optimisation, loss, augmentation, calibration, hardware);
YAML load/save; saved into each run.

Every option is declared once, here: its default, its help, and the values it allows. The command line
(`chestxray train --help`) is generated from these fields, and `Config.validate()` checks them all
before any data is read.
"""

from __future__ import annotations

import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from .errors import ConfigError
from .files import write_text


def option(default, help: str, choices: tuple | None = None, ge=None, gt=None, le=None, lt=None, flag: str | None = None,
           before=None):
    """A config field with its help text and allowed values (enumerated, or numeric bounds).

    `flag`: the command-line spelling of a boolean option, when it is not --name/--no-name.
    `before`: what a run's config.yaml written before this option existed did, where that is not the default
    (`Config.load_run` reads it so, and a resumed old run goes on as it started).
    """
    meta = {"help": help, "choices": choices, "ge": ge, "gt": gt, "le": le, "lt": lt, "flag": flag, "before": before}
    return field(default=default, metadata=meta)


TASKS = ("binary", "multiclass", "multilabel")
STAGES = ("head", "finetune")
MONITORS = ("val_auc", "val_f1", "val_loss")
OPERATING_POINTS = ("best_f1", "youden", "sensitivity")
PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
BOOTSTRAP_RESAMPLES = 1000  # the default number of bootstrap resamples, for every command and function that takes one


@dataclass
class DataConfig:
    data: str = option("", "ImageFolder root (train/ val/ test/ with one folder per class, any case) or CSV manifest.")
    task: str = option("binary", "Task scheme; infected-vs-normal metrics are reported for every one.", TASKS)
    normal_class: str = option("normal", "Class name meaning Normal (any case); every other class is Infected.")
    img_size: int = option(224, "Input size in pixels (square).", ge=32, le=2048)
    batch_size: int = option(32, "Images per batch (per process under DDP).", ge=1)
    val_fraction: float = option(0.15, "Fraction of train carved out as validation (patient-level, stratified) when the data has no val split.", gt=0.0, lt=1.0)
    test_fraction: float = option(0.15, "Fraction of train carved out as the test split (patient-level, stratified) when the data has no test split, so that the run's figures never come from the validation images that chose its epoch, stage and threshold; 0: no test split, the run reports validation figures, marked optimistic.", ge=0.0, lt=1.0, before=0.0)
    skip_bad: bool = option(False, "Skip unreadable images (listed in RUN/skipped.csv) instead of stopping.")
    workers: str = option("auto", "DataLoader worker processes that augment the training batches: a count, or auto (0 where training runs on the CPU, where images are decoded once up front; on a GPU, the CPUs per training process less one, at most 8: fine-tuning 1.75x faster on an H200, benchmarks/gpu.py).")
    cache_dir: str | None = option(None, "Decoded-image and feature cache. [default: $CHESTXRAY_CACHE or ~/.cache/chestxray]")
    intensity: str = option("none", "Per-image intensity standardisation before the model, at training and inference: global histogram equalisation, the 1st-99th percentile stretched to the full range, or CLAHE (local, contrast-limited equalisation).", ("none", "equalize", "percentile", "clahe"))
    tta: str = option("none", "Test-time augmentation: 'views' averages the logits of six views (the image, centre crops of 90% and 80%, a 10% black border, gamma 0.8 and 1.25) in every prediction, evaluation and decision; six times the inference cost. Grad-CAM and the out-of-distribution score use the plain view.", ("none", "views"))
    check: bool = option(True, "Check labels, classes and exact duplicates across splits before decoding; stop on a problem.")
    lung_mask: bool = option(False, "Lung input: outside each image's dilated lung fields (found by the lung segmenter) set to black, in both stages and in every prediction; part of the model contract. An image without a plausible pair of lung fields is taken whole (lungs_found false).")
    lung_crop: bool = option(False, "Lung input: each image cropped to its lungs' box (with a 10% margin) and resized, in both stages and in every prediction; part of the model contract. With --lung-mask: masked, then cropped.")
    lung_model: str | None = option(None, "Lung segmenter file for --lung-crop / --lung-mask (stored in the run's checkpoint). [default: the one shipped with the package]")


@dataclass
class ModelConfig:
    model: str = option("efficientnet_lite0", "Backbone: a registered name (see `chestxray models`) or any timm model.")
    weights: str | None = option(None, "ImageNet weights file (timm or torchvision format) for the backbone.")
    pretrained: bool = option(True, "Start from ImageNet weights; --no-pretrained starts from random ones (never a silent fallback).")
    dropout: float = option(0.2, "Dropout before the classifier.", ge=0.0, lt=1.0)


@dataclass
class OptimConfig:
    """Optimisation: the stages, their epochs and learning rates, what is trained, when to stop."""

    stages: str = option("head,finetune", "Stages to run, comma-separated: head and/or finetune.")
    epochs_head: int = option(10, "Head-stage epochs (backbone frozen, batch-norm statistics too).", ge=0)
    epochs_finetune: int = option(4, "Finetune-stage epochs (from the best head checkpoint).", ge=0)
    lr: float = option(3e-3, "Head-stage learning rate.", gt=0.0)
    lr_finetune: float = option(3e-4, "Head learning rate in the finetune stage; the backbone gets it x --backbone-lr-factor.", gt=0.0)
    backbone_lr_factor: float = option(0.1, "Backbone learning rate in finetune, as a fraction of --lr-finetune.", ge=0.0)
    optimizer: str = option("adamw", "Optimizer.", ("adamw", "sgd"))
    weight_decay: float = option(1e-4, "Weight decay (decoupled for AdamW), not applied to biases and norms.", ge=0.0)
    warmup_epochs: float = option(1.0, "Linear learning-rate warm-up before the cosine decay, in epochs.", ge=0.0)
    unfreeze_last: int = option(0, "Finetune only the last N backbone blocks (0 = all).", ge=0)
    finetune_bn: str = option("frozen", "Batch-norm statistics during finetune.", ("frozen", "train"))
    ema_decay: float = option(0.0, "Finetune: validate, checkpoint and keep an exponential moving average of the weights (decay per optimizer step, e.g. 0.98); 0: the weights as trained.", ge=0.0, lt=1.0)
    head_features: bool = option(True, "Head stage on backbone features computed once and cached, instead of running the frozen backbone every epoch.")
    feature_views: int = option(0, "Extra augmented views per training image in the feature cache (head stage).", ge=0)
    monitor: str = option("val_auc", "Validation metric for checkpoints and early stopping.", MONITORS)
    patience: int = option(5, "Early-stopping patience in epochs.", ge=1)
    seed: int = option(42, "Random seed (splits, initialisation, augmentation, shuffling).", ge=0)


@dataclass
class LossConfig:
    """The loss and how training images and classes are weighted in it."""

    loss: str = option("ce", "Loss: cross-entropy (BCE for binary and multilabel) or focal loss.", ("ce", "focal"))
    focal_gamma: float = option(2.0, "Focal-loss focusing parameter gamma (0 is cross-entropy).", ge=0.0)
    focal_alpha: float = option(-1.0, "Focal alpha for the positive class; < 0 disables it.", le=1.0)
    class_weights: bool = option(True, "Balance classes in the loss.")
    balance: str = option("auto", "Weight training images. view: within each source, every class has the same mix of views (a manifest's 'view' column: PA, AP, ...), so the model cannot tell the classes apart by projection; each class keeps its weight. source: every source has the same mix of classes (that of all training images), so no source can stand for a class it shares with others; each source keeps its weight. source+view: both. auto: view where the training images have views, else none; the run's config.yaml records which.", ("auto", "view", "source", "source+view", "none"),
                          before="none")
    mixup: float = option(0.0, "Mixup of training inputs with Beta(a, a) weights (the images, or the cached features where the head trains on them), the loss mixed alike; 0: off.", ge=0.0)


@dataclass
class AugmentConfig:
    """Training augmentation."""

    augment: str = option("basic", "Training augmentation: basic (crop, small rotation and shift, brightness and contrast), domain (adds gamma, blur or sharpening, noise, JPEG re-compression and resolution loss, as other devices and sites produce), or framing (basic with wide crops of 45-100% of the area at aspect 3:4 to 4:3, and half the time a zoom-out onto a black canvas, as other sites frame and copy films).", ("basic", "domain", "framing"))
    head_augment: bool = option(False, "Augment images in the head stage (finetune always augments; off measured better on cxr-nih-cohen validation).")


@dataclass
class CalibrationConfig:
    """Calibration and evaluation at the end of training: temperature, the stored operating point, the out-of-distribution flag, intervals and the shortcut audit."""

    calibrate: bool = option(False, "Temperature scaling fitted on validation; ECE reported before and after.")
    operating_point: str = option("best_f1", "Threshold stored with the model and used by predict, chosen on validation.", OPERATING_POINTS)
    target_sensitivity: float = option(0.95, "Sensitivity the 'sensitivity' operating point must reach on validation.", gt=0.0, le=1.0)
    target_confidence: float = option(0.0, "With c > 0, the 'sensitivity' operating point reaches --target-sensitivity on new images like the validation ones with probability c (a tolerance bound over the validation positives), not only on validation itself; 0: on validation.", ge=0.0, lt=1.0)
    ood_quantile: float = option(0.95, "Out-of-distribution flag: images scoring above this quantile of the validation images' distances to the training features are flagged.", gt=0.5, lt=1.0)
    lung_check: bool = option(True, "At the end of training, check each evaluated image for a plausible pair of lung fields with the bundled lung segmenter (lungs_found in the predictions, counted in metrics.json, the report and the card); --no-lung-check skips it.")
    bootstrap: int = option(BOOTSTRAP_RESAMPLES, "Bootstrap resamples for 95% intervals (patient-level where ids exist; 0: none).", ge=0)
    audit: bool = option(True, "Shortcut audit of the final model on the evaluation split at the end of training (three more passes over its images: lungs hidden, lungs only, borders hidden); --no-audit skips it (`chestxray audit RUN` runs it later).")


@dataclass
class HardwareConfig:
    """Where and how the numbers are computed."""

    accelerator: str = option("auto", "Lightning accelerator.", ACCELERATORS)
    devices: str = option("auto", "Lightning devices: auto, a count, or a list such as 0,1.")
    num_nodes: int = option(1, "Lightning nodes (multi-node DDP).", ge=1)
    strategy: str = option("auto", "Lightning strategy, e.g. ddp.")
    precision: str = option("auto", "Numeric precision; auto uses bf16 where the hardware supports it.", PRECISIONS)
    channels_last: bool = option(True, "channels_last memory format for convolutions (faster on most hardware).")
    compile: bool = option(False, "torch.compile the model (opt-in).")
    deterministic: bool = option(False, "Deterministic algorithms (slower).")


@dataclass
class ServeConfig:
    """`chestxray serve`: where it listens and the limits it keeps (not part of a run's config)."""

    host: str = option("127.0.0.1", "Address to listen on (loopback by default; anything else exposes the service).")
    port: int = option(8000, "Port to listen on.", ge=0, le=65535)
    max_upload_mb: float = option(32.0, "Largest request body, in MB.", ge=0.001)
    max_files: int = option(16, "Most images in one request.", ge=1)
    max_batch: int = option(16, "Most images grouped into one forward pass (1: no micro-batching).", ge=1)
    max_wait_ms: float = option(5.0, "Under concurrent load, the longest wait for more requests to fill a batch, in ms (a lone request never waits).", ge=0.0)


# the sections of a config, in the order of `chestxray train --help` and config.yaml, with their titles
SECTIONS = {"data": DataConfig, "model": ModelConfig, "optim": OptimConfig, "loss": LossConfig, "augment": AugmentConfig,
            "calibration": CalibrationConfig, "hardware": HardwareConfig}
SECTION_TITLES = {"data": "Data", "model": "Model", "optim": "Optimisation", "loss": "Loss", "augment": "Augmentation",
                  "calibration": "Calibration and evaluation", "hardware": "Hardware"}
LEGACY_SECTIONS = ("train",)  # config.yaml written before the training options had sections: read as flat options


def field_type(section: type, name: str) -> type:
    """The plain type of a field (str, int, float or bool), without its Optional."""
    hint = typing.get_type_hints(section)[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path: Path) -> None:
        write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_dict(cls, d: dict, path: str | Path | None = None) -> "Config":
        """A config from a nested or flat mapping; `path`, where it came from, is named in any error."""
        cfg = cls()
        cfg.update(d, path)
        return cfg

    @classmethod
    def load(cls, path: str | Path) -> "Config":
        return cls.from_dict(cls.read_mapping(path), path)

    @classmethod
    def load_run(cls, path: str | Path) -> "Config":
        """A run's own config.yaml (written by `save`, every section complete): an option the file lacks was
        added after the run was made, and takes the value that means what the run did then (`before`)."""
        d = cls.read_mapping(path)
        cfg = cls.from_dict(d, path)
        stored = {}
        for name, value in d.items():
            stored.update(value if isinstance(value, dict) else {name: value})
        for section in cfg.sections().values():
            for f in fields(section):
                if f.metadata.get("before") is not None and f.name not in stored:
                    setattr(section, f.name, f.metadata["before"])
        return cfg

    @staticmethod
    def read_mapping(path: str | Path) -> dict:
        """The options a YAML config file sets, as written (nested or flat), checked to be a mapping."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            d = yaml.safe_load(path.read_text()) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ConfigError(f"{path}: not a readable YAML file: {reason}") from e
        if not isinstance(d, dict):
            raise ConfigError(f"{path}: a config file must be a mapping of options (such as `img_size: 224`)")
        return d

    def sections(self) -> dict:
        return {name: getattr(self, name) for name in SECTIONS}

    @classmethod
    def of_run(cls, stored: dict | None) -> "Config":
        """The config a trained model stores (its `meta['config']`), whatever version wrote it: older layouts (one
        `train` section) read as today's sections, options since removed are left out, added ones take their default."""
        cfg = cls()
        for name, value in (stored or {}).items():
            for key, v in (value.items() if isinstance(value, dict) else [(name, value)]):
                try:
                    cfg._set({key: v})
                except ConfigError:
                    continue
        return cfg

    def update(self, d: dict, source: str | Path | None = None) -> None:
        """Set fields from a nested ({data: {...}}) or flat ({img_size: ...}) mapping; `source`, the file it was
        read from, is named in any error."""
        try:
            self._set(d)
        except ConfigError as e:
            if source is None:
                raise
            raise ConfigError(f"{source}: {e}") from e

    def _set(self, d: dict) -> None:
        sections = self.sections()
        for key, value in d.items():
            if (key in sections or key in LEGACY_SECTIONS) and isinstance(value, dict):
                self._set(value)
                continue
            key = str(key).replace("-", "_")
            for section in sections.values():
                if key in {f.name for f in fields(section)}:
                    setattr(section, key, _coerce(key, value, field_type(type(section), key)))
                    break
            else:
                known = sorted(f.name for s in sections.values() for f in fields(s))
                raise ConfigError(f"unknown option '{key}' (known: {', '.join(known)})")

    def validate(self) -> "Config":
        """Check every enumerated and numeric option; raise ConfigError naming the option and what it allows."""
        for section in self.sections().values():
            for f in fields(section):
                _check_field(f, getattr(section, f.name))
        stages = [s.strip() for s in self.optim.stages.split(",") if s.strip()]
        if not stages or any(s not in STAGES for s in stages):
            raise ConfigError(f"--stages must list head and/or finetune (comma-separated), got '{self.optim.stages}'")
        epochs = {"head": self.optim.epochs_head, "finetune": self.optim.epochs_finetune}
        if not any(epochs[s] > 0 for s in stages):
            raise ConfigError(f"no stage would run: --stages {self.optim.stages} with --epochs-head {epochs['head']} "
                              f"and --epochs-finetune {epochs['finetune']}; give a listed stage at least one epoch")
        if self.data.workers != "auto" and not str(self.data.workers).isdigit():
            raise ConfigError(f"--workers must be a count (0, 1, ...) or auto; got '{self.data.workers}'")
        if self.hardware.accelerator in ("gpu", "cuda"):
            import torch

            if not torch.cuda.is_available():
                raise ConfigError(f"--accelerator {self.hardware.accelerator}: no CUDA GPU is visible on this machine (use cpu or auto)")
        if self.hardware.accelerator == "mps":
            import torch

            if not torch.backends.mps.is_available():
                raise ConfigError("--accelerator mps: Apple's MPS backend is not available on this machine (use cpu or auto)")
        return self


def check_option(section: type, name: str, value) -> None:
    """Check one option of `section` as `Config.validate` checks them all (ConfigError naming the flag)."""
    _check_field(next(f for f in fields(section) if f.name == name), value)


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_field(f, value) -> None:
    meta, name = f.metadata, flag_name(f.name)
    if value is None:
        return
    if meta.get("choices") and value not in meta["choices"]:
        raise ConfigError(f"{name} must be one of {', '.join(meta['choices'])}; got '{value}'")
    bounds = [("ge", ">=", lambda v, b: v >= b), ("gt", ">", lambda v, b: v > b),
              ("le", "<=", lambda v, b: v <= b), ("lt", "<", lambda v, b: v < b)]
    for key, sign, ok in bounds:
        if meta.get(key) is not None and not ok(value, meta[key]):
            raise ConfigError(f"{name} must be {sign} {meta[key]}; got {value}")


def _coerce(name: str, value, kind: type):
    if value is None:
        return None
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.strip().lower() in ("1", "true", "yes", "on")
        raise ConfigError(f"option '{name}' must be true or false; got {value!r}")
    if kind in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"option '{name}' must be a number; got {value!r}")
        try:
            number = kind(value)
        except (TypeError, ValueError):
            raise ConfigError(f"option '{name}' must be {'an integer' if kind is int else 'a number'}; got {value!r}") from None
        if kind is int and isinstance(value, float) and value != number:
            raise ConfigError(f"option '{name}' must be an integer; got {value!r}")
        return number
    if isinstance(value, (dict, list)):
        raise ConfigError(f"option '{name}' must be a single value; got {value!r}")
    return str(value)
