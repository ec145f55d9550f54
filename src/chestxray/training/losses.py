"""Cross-entropy and focal losses for each task scheme."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import sigmoid_focal_loss


def softmax_focal_loss(
    logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Multiclass focal loss: mean of -w_y (1 - p_y)^gamma log p_y (Lin et al. 2017)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    logp_t = logp.gather(1, target.view(-1, 1)).squeeze(1)
    loss = -((1 - logp_t.exp()) ** gamma) * logp_t
    if weight is not None:
        loss = loss * weight.to(loss.device)[target]
    return loss.mean()


class TaskLoss(nn.Module):
    """`ce` (BCE-with-logits for binary/multilabel, softmax CE for multiclass) or `focal`.

    class_weights: for binary, pos_weight = weight[infected] / weight[normal]; for multiclass, per-class
    weights; for multilabel, per-label pos_weight. Focal alpha < 0 disables alpha weighting.
    """

    def __init__(
        self,
        task: str,
        loss: str = "ce",
        focal_gamma: float = 2.0,
        focal_alpha: float = -1.0,
        class_weights: torch.Tensor | None = None,
    ):
        super().__init__()
        if loss not in ("ce", "focal"):
            raise ValueError(f"unknown loss '{loss}': choose ce or focal")
        self.task, self.loss, self.gamma, self.alpha = task, loss, focal_gamma, focal_alpha
        self.register_buffer("class_weights", class_weights if class_weights is not None else torch.empty(0))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        w = self.class_weights if self.class_weights.numel() else None
        if self.task == "multiclass":
            target = target.long()
            if self.loss == "focal":
                return softmax_focal_loss(logits, target, self.gamma, w)
            return F.cross_entropy(logits.float(), target, weight=w)
        logits = logits.float().reshape(target.shape)
        target = target.float()
        if self.loss == "focal":
            per = sigmoid_focal_loss(logits, target, alpha=self.alpha, gamma=self.gamma, reduction="none")
            if w is not None:  # weight positives like pos_weight does for BCE
                per = per * (1 + (w.to(per.device) - 1) * target)
            return per.mean()
        return F.binary_cross_entropy_with_logits(logits, target, pos_weight=w)


def balanced_class_weights(task: str, targets: list[torch.Tensor], num_outputs: int) -> torch.Tensor:
    """Weights that balance the classes of the training targets (the `class_weights` of TaskLoss)."""
    t = torch.stack(targets)
    if task == "multiclass":
        counts = torch.bincount(t.long(), minlength=num_outputs).float().clamp(min=1)
        return counts.sum() / (num_outputs * counts)
    t = t.reshape(len(targets), -1).float()
    pos = t.sum(0).clamp(min=1)
    neg = (len(t) - t.sum(0)).clamp(min=1)
    return neg / pos  # pos_weight
