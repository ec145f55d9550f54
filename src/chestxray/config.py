"""Run configuration: dataclasses for data, model and training; YAML load/save; saved into each run."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml


@dataclass
class DataConfig:
    data: str = ""  # ImageFolder root or CSV manifest
    task: str = "binary"  # binary | multiclass | multilabel
    normal_class: str = "normal"
    img_size: int = 224
    batch_size: int = 32
    val_fraction: float = 0.15  # carved from train (patient-level, stratified) when there is no val split
    skip_bad: bool = False
    workers: int = 0  # DataLoader workers; images are decoded once up front, so 0 is fine on a CPU
    cache_dir: str | None = None  # decoded-image and feature cache (default: $CHESTXRAY_CACHE or ~/.cache/chestxray)


@dataclass
class ModelConfig:
    model: str = "efficientnet_lite0"
    weights: str | None = None
    pretrained: bool = True
    dropout: float = 0.2


@dataclass
class TrainConfig:
    stages: str = "head,finetune"
    epochs_head: int = 10
    epochs_finetune: int = 4
    lr: float = 3e-3  # head stage
    head_augment: bool = False  # augment in the head stage (off: measured better on cxr-nih-cohen validation)
    head_features: bool = True  # head stage on features computed once (off: through the frozen backbone)
    feature_views: int = 0  # extra augmented views per image in the feature cache (head stage)
    lr_finetune: float = 3e-4  # head learning rate in the finetune stage
    backbone_lr_factor: float = 0.1  # backbone lr = lr_finetune * this
    optimizer: str = "adamw"  # adamw | sgd
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    loss: str = "ce"  # ce | focal
    focal_gamma: float = 2.0
    focal_alpha: float = -1.0  # < 0: no alpha weighting
    class_weights: bool = True  # balance classes in the loss
    unfreeze_last: int = 0  # finetune: 0 = all backbone blocks, N = the last N
    finetune_bn: str = "frozen"  # frozen | train: batch-norm statistics during finetune
    operating_point: str = "best_f1"  # threshold used by predict: best_f1 | youden | sensitivity (chosen on val)
    target_sensitivity: float = 0.95
    calibrate: bool = False  # temperature scaling fitted on validation
    bootstrap: int = 1000  # resamples for 95% confidence intervals (0: none)
    monitor: str = "val_auc"  # val_auc | val_f1 | val_loss
    patience: int = 5
    seed: int = 42
    deterministic: bool = False
    accelerator: str = "auto"
    devices: str = "auto"
    precision: str = "auto"  # auto: bf16-mixed where the CPU/GPU supports bf16, else 16-mixed (GPU) or 32-true
    channels_last: bool = True
    compile: bool = False  # torch.compile the model (opt-in)
    num_nodes: int = 1
    strategy: str = "auto"


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path: Path) -> None:
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        cfg = cls()
        cfg.update(d)
        return cfg

    @classmethod
    def load(cls, path: str | Path) -> "Config":
        path = Path(path)
        try:
            d = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ValueError(f"{path}: cannot read config: {e}") from e
        if not isinstance(d, dict):
            raise ValueError(f"{path}: config must be a mapping")
        try:
            return cls.from_dict(d)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e

    def update(self, d: dict) -> None:
        """Set fields from a nested ({data: {...}}) or flat ({img_size: ...}) mapping."""
        sections = {"data": self.data, "model": self.model, "train": self.train}
        for key, value in d.items():
            if key in sections and isinstance(value, dict):
                self.update(value)
                continue
            key = key.replace("-", "_")
            for section in sections.values():
                names = {f.name: f for f in fields(section)}
                if key in names:
                    setattr(section, key, _coerce(value, names[key].default))
                    break
            else:
                raise ValueError(f"unknown config key '{key}'")


def _coerce(value, default):
    if value is None or default is None:
        return value
    if isinstance(default, bool):
        if isinstance(value, str):
            return value.lower() in ("1", "true", "yes")
        return bool(value)
    if isinstance(default, (int, float)) and not isinstance(value, bool):
        return type(default)(value)
    return value
