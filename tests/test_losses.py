import math

import pytest
import torch
import torch.nn.functional as F

from chestxray.training.losses import TaskLoss, balanced_class_weights, softmax_focal_loss


def test_binary_focal_reference_values():
    # one positive with p = sigmoid(0) = 0.5: FL = -(1 - 0.5)^2 * log(0.5); alpha = 0.25 scales it
    logits, target = torch.tensor([0.0]), torch.tensor([1.0])
    ref = -(0.5**2) * math.log(0.5)
    assert TaskLoss("binary", "focal", 2.0, -1.0)(logits, target).item() == pytest.approx(ref, rel=1e-6)
    assert TaskLoss("binary", "focal", 2.0, 0.25)(logits, target).item() == pytest.approx(0.25 * ref, rel=1e-6)
    # a confident correct prediction is down-weighted far more than under BCE
    easy = torch.tensor([4.0])
    fl, bce = TaskLoss("binary", "focal")(easy, target), TaskLoss("binary", "ce")(easy, target)
    p = torch.sigmoid(easy)
    assert fl.item() == pytest.approx(((1 - p) ** 2 * -torch.log(p)).item(), rel=1e-5)
    assert fl < bce / 50


def test_focal_gamma_zero_is_bce():
    torch.manual_seed(0)
    logits, target = torch.randn(16), (torch.rand(16) > 0.5).float()
    fl = TaskLoss("binary", "focal", focal_gamma=0.0)(logits, target)
    assert fl.item() == pytest.approx(F.binary_cross_entropy_with_logits(logits, target).item(), rel=1e-6)


def test_softmax_focal_reference_and_gamma_zero():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    target = torch.tensor([0])
    p0 = torch.softmax(logits, -1)[0, 0].item()
    assert softmax_focal_loss(logits, target, 2.0).item() == pytest.approx(-((1 - p0) ** 2) * math.log(p0), rel=1e-6)
    torch.manual_seed(0)
    lg, t = torch.randn(8, 3), torch.randint(0, 3, (8,))
    assert softmax_focal_loss(lg, t, 0.0).item() == pytest.approx(F.cross_entropy(lg, t).item(), rel=1e-6)
    assert TaskLoss("multiclass", "focal", 0.0)(lg, t).item() == pytest.approx(F.cross_entropy(lg, t).item(), rel=1e-6)


def test_class_weights():
    targets = [torch.tensor(1.0)] * 30 + [torch.tensor(0.0)] * 10
    w = balanced_class_weights("binary", targets, 1)
    assert w.tolist() == pytest.approx([10 / 30])
    loss = TaskLoss("binary", "ce", class_weights=w)
    ref = F.binary_cross_entropy_with_logits(torch.tensor([0.0]), torch.tensor([1.0]), pos_weight=w)
    assert loss(torch.tensor([0.0]), torch.tensor([1.0])).item() == pytest.approx(ref.item())
    mc = balanced_class_weights("multiclass", [torch.tensor(0)] * 6 + [torch.tensor(1)] * 2, 2)
    assert mc.tolist() == pytest.approx([8 / 12, 8 / 4])


def test_multilabel_loss_shapes():
    loss = TaskLoss("multilabel", "focal")
    v = loss(torch.zeros(4, 2), torch.tensor([[1.0, 1.0], [0, 1], [0, 0], [0, 0]]))
    assert v.item() == pytest.approx(0.25 * math.log(2), rel=1e-6)


def test_unknown_loss():
    with pytest.raises(ValueError, match="unknown loss"):
        TaskLoss("binary", "hinge")
