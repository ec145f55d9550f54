"""Which parameters train in each stage, and batch-norm layers kept in eval mode when frozen."""

from __future__ import annotations

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .backbones import head_prefixes, is_head_param


def backbone_blocks(model: nn.Module) -> list[list[str]]:
    """Backbone parameter names grouped into blocks, input to output (timm's coarse group matcher)."""
    from timm.models import group_parameters

    prefixes = head_prefixes(model)
    groups = group_parameters(model, model.group_matcher(coarse=True))
    blocks = []
    for _, names in sorted(groups.items()):
        names = [n for n in names if not is_head_param(n, prefixes)]
        if names:
            blocks.append(names)
    return blocks


def set_trainable(model: nn.Module, stage: str, unfreeze_last: int = 0) -> set[str]:
    """Set requires_grad for a stage; return the names of trainable backbone parameters.

    head: only the classification layers. finetune: everything, or the last `unfreeze_last`
    backbone blocks when it is > 0.
    """
    prefixes = head_prefixes(model)
    if stage == "head":
        trainable_backbone: set[str] = set()
    elif stage == "finetune":
        blocks = backbone_blocks(model)
        chosen = blocks if unfreeze_last <= 0 else blocks[-unfreeze_last:]
        trainable_backbone = {n for b in chosen for n in b}
    else:
        raise ValueError(f"unknown stage '{stage}'")
    for name, p in model.named_parameters():
        p.requires_grad = is_head_param(name, prefixes) or name in trainable_backbone
    return trainable_backbone


def freeze_batchnorm(model: nn.Module, only_frozen: bool = True) -> None:
    """Put batch-norm layers in eval mode so running statistics do not move.

    With `only_frozen`, only BN layers whose parameters do not train; otherwise all of them.
    Call after every model.train(), which would switch them back.
    """
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            frozen = not any(p.requires_grad for p in m.parameters(recurse=False))
            if frozen or not only_frozen:
                m.eval()


def param_groups(model: nn.Module, lr_head: float, lr_backbone: float, weight_decay: float) -> list[dict]:
    prefixes = head_prefixes(model)
    head, backbone, no_decay = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if is_head_param(name, prefixes):
            head.append(p)
        elif p.ndim <= 1:  # biases and norm weights: no weight decay
            no_decay.append(p)
        else:
            backbone.append(p)
    groups = [{"params": head, "lr": lr_head, "weight_decay": weight_decay, "name": "head"}]
    if backbone:
        groups.append({"params": backbone, "lr": lr_backbone, "weight_decay": weight_decay, "name": "backbone"})
    if no_decay:
        groups.append({"params": no_decay, "lr": lr_backbone, "weight_decay": 0.0, "name": "backbone_no_decay"})
    return groups
