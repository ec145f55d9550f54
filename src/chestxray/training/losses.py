"""Cross-entropy and focal losses for each task scheme."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import sigmoid_focal_loss


def softmax_focal_loss(
    logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, weight: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Multiclass focal loss: mean of -w_y (1 - p_y)^gamma log p_y (Lin et al. 2017); per image with reduction 'none'."""
    logp = F.log_softmax(logits.float(), dim=-1)
    logp_t = logp.gather(1, target.view(-1, 1)).squeeze(1)
    loss = -((1 - logp_t.exp()) ** gamma) * logp_t
    if weight is not None:
        loss = loss * weight.to(loss.device)[target]
    return loss.mean() if reduction == "mean" else loss


class TaskLoss(nn.Module):
    """`ce` (BCE-with-logits for binary/multilabel, softmax CE for multiclass) or `focal`.

    class_weights: for binary, pos_weight = weight[infected] / weight[normal]; for multiclass, per-class
    weights; for multilabel, per-label pos_weight. Focal alpha < 0 disables alpha weighting.
    sample_weights: one weight per training image (`balance_weights`); a batch given with its images' indices
    into the training split then has each image's loss weighted by it (a weighted mean, normalised as the
    unweighted one is). Not part of a checkpoint: the run recomputes them from its data and config.
    """

    def __init__(
        self,
        task: str,
        loss: str = "ce",
        focal_gamma: float = 2.0,
        focal_alpha: float = -1.0,
        class_weights: torch.Tensor | None = None,
        sample_weights: torch.Tensor | None = None,
    ):
        super().__init__()
        if loss not in ("ce", "focal"):
            raise ValueError(f"unknown loss '{loss}': choose ce or focal")
        self.task, self.loss, self.gamma, self.alpha = task, loss, focal_gamma, focal_alpha
        self.register_buffer("class_weights", class_weights if class_weights is not None else torch.empty(0))
        self.register_buffer("sample_weights", sample_weights if sample_weights is not None else torch.empty(0), persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """The batch's mean loss; `index` (each image's position in the training split) weights it by sample_weights."""
        per, norm = self.per_image(logits, target)
        if index is None or not self.sample_weights.numel():
            return per.sum() / norm.sum()
        s = self.sample_weights[index.to(self.sample_weights.device).long()].to(per.device)
        return (s * per).sum() / (s * norm).sum().clamp(min=1e-12)

    def per_image(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(each image's loss, its share of the mean's denominator): sum(loss) / sum(share) is forward's mean."""
        w = self.class_weights if self.class_weights.numel() else None
        if self.task == "multiclass":
            target = target.long()
            if self.loss == "focal":
                per = softmax_focal_loss(logits, target, self.gamma, w, reduction="none")
                return per, torch.ones_like(per)
            per = F.cross_entropy(logits.float(), target, weight=w, reduction="none")
            return per, (w.to(per.device)[target] if w is not None else torch.ones_like(per))  # as F's weighted mean
        logits = logits.float().reshape(target.shape)
        target = target.float()
        if self.loss == "focal":
            per = sigmoid_focal_loss(logits, target, alpha=self.alpha, gamma=self.gamma, reduction="none")
            if w is not None:  # weight positives like pos_weight does for BCE
                per = per * (1 + (w.to(per.device) - 1) * target)
        else:
            per = F.binary_cross_entropy_with_logits(logits, target, pos_weight=w, reduction="none")
        per = per.reshape(len(per), -1).sum(1)  # multilabel: an image's labels together
        n_labels = target.reshape(len(target), -1).shape[1]
        return per, torch.full_like(per, float(n_labels))


def balance_weights(samples: list, by: str) -> torch.Tensor:
    """Per-image weights that make `by` (an attribute of each Sample, e.g. its view) independent of the class
    within each source: w = P(by | source) / P(by | source, class), normalised to mean 1.

    Each class keeps its total weight within its source (rescaled where a class lacks some of the source's
    values), so class balancing is unchanged; only the mix of views inside a class moves to the source's
    overall mix. An image without the attribute counts as a value of its own ('unknown').
    """
    from collections import Counter

    keys = [(s.source, s.label, getattr(s, by) or "unknown") for s in samples]
    cell = Counter(keys)
    per_class = Counter((src, label) for src, label, _ in keys)
    per_value = Counter((src, value) for src, _, value in keys)
    per_source = Counter(src for src, _, _ in keys)
    ratio = {k: (per_value[(k[0], k[2])] / per_source[k[0]]) / (n / per_class[k[:2]]) for k, n in cell.items()}
    # a class that lacks some of its source's views would lose their share: rescale it to its own count
    mass = Counter()
    for k, n in cell.items():
        mass[k[:2]] += n * ratio[k]
    w = torch.tensor([ratio[k] * per_class[k[:2]] / mass[k[:2]] for k in keys], dtype=torch.float64)
    return (w / w.mean()).float()


def source_weights(samples: list) -> torch.Tensor:
    """Per-image weights that give every source the same mix of classes, the mix of all training images:
    w = P(class) / P(class | source), normalised to mean 1. Each source keeps its total weight; within it, a class it
    holds few of counts more. No weighting can give a source a class it has no images of: a source holding one class
    only (a site that contributed only COVID-19 films) still stands for it, which `data check` names."""
    from collections import Counter

    keys = [(s.source, s.label) for s in samples]
    cell, per_source, per_class = Counter(keys), Counter(k[0] for k in keys), Counter(k[1] for k in keys)
    n = len(keys)
    w = torch.tensor([(per_class[c] / n) / (cell[(src, c)] / per_source[src]) for src, c in keys], dtype=torch.float64)
    # each source back to its own share of the weight (the class mixes change, not how much a source counts)
    mass = Counter()
    for k, wi in zip(keys, w.tolist()):
        mass[k[0]] += wi
    w = torch.tensor([wi * per_source[k[0]] / mass[k[0]] for k, wi in zip(keys, w.tolist())], dtype=torch.float64)
    return (w / w.mean()).float()


def training_weights(samples: list, balance: str) -> torch.Tensor:
    """The per-image weights of a --balance value: 'view', 'source', or both ('source+view', multiplied)."""
    parts = balance.split("+")
    w = torch.ones(len(samples), dtype=torch.float64)
    if "source" in parts:
        w = w * source_weights(samples).double()
    if "view" in parts:
        w = w * balance_weights(samples, "view").double()
    return (w / w.mean()).float()


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
