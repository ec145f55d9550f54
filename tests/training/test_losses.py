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


@pytest.mark.parametrize("task,loss,n_out", [("binary", "ce", 1), ("binary", "focal", 1), ("multiclass", "ce", 3),
                                             ("multiclass", "focal", 3), ("multilabel", "ce", 2)])
def test_per_image_weights(task, loss, n_out):
    """Uniform image weights give the unweighted loss; weight 0 removes an image; weight 2 counts it twice."""
    torch.manual_seed(0)
    logits = torch.randn(6, n_out).squeeze(-1) if n_out == 1 else torch.randn(6, n_out)
    target = {"binary": torch.tensor([0, 1, 1, 0, 1, 0.0]), "multiclass": torch.tensor([0, 1, 2, 2, 1, 0]),
              "multilabel": torch.tensor([[0, 1], [1, 1], [0, 0], [1, 0], [0, 1], [1, 0.0]])}[task]
    cw = {"binary": torch.tensor([2.0]), "multiclass": torch.tensor([0.5, 1.0, 2.0]), "multilabel": torch.tensor([1.5, 0.5])}[task]
    index = torch.arange(6)
    plain = TaskLoss(task, loss, class_weights=cw)
    assert torch.allclose(TaskLoss(task, loss, class_weights=cw, sample_weights=torch.ones(6))(logits, target, index), plain(logits, target))
    zero_last = TaskLoss(task, loss, class_weights=cw, sample_weights=torch.tensor([1, 1, 1, 1, 1, 0.0]))
    assert torch.allclose(zero_last(logits, target, index), plain(logits[:5], target[:5]))
    twice_first = TaskLoss(task, loss, class_weights=cw, sample_weights=torch.tensor([2, 1, 1, 1, 1, 1.0]))
    dup = torch.cat([index[:1], index])
    assert torch.allclose(twice_first(logits, target, index), plain(logits[dup], target[dup]))
    assert torch.allclose(twice_first(logits, target), plain(logits, target))  # no index: no image weights


def test_balance_weights_make_view_independent_of_class_within_each_source():
    from collections import Counter, defaultdict

    from chestxray.data.sources import Sample
    from chestxray.training.losses import balance_weights

    rows = ([("nih", "normal", "AP")] * 30 + [("nih", "normal", "PA")] * 10 + [("nih", "pneumonia", "AP")] * 10
            + [("nih", "pneumonia", "PA")] * 20 + [("cohen", "covid", "PA")] * 12 + [("cohen", "covid", None)] * 4
            + [("cohen", "normal", "PA")] * 2)
    samples = [Sample(f"{i}.png", label, None, source, view) for i, (source, label, view) in enumerate(rows)]
    w = balance_weights(samples, "view").numpy()
    assert abs(w.mean() - 1) < 1e-6
    mass = defaultdict(float)
    for s, wi in zip(samples, w):
        mass[(s.source, s.label, s.view)] += wi
    class_mass = defaultdict(float)
    for (src, label, _), m in mass.items():
        class_mass[(src, label)] += m
    # every class keeps its share of the total weight ...
    counts = Counter((source, label) for source, label, _ in rows)
    for k, m in class_mass.items():
        assert m / w.sum() == pytest.approx(counts[k] / len(rows), rel=1e-5)
    # ... and within nih both classes now have the source's view mix (40 AP : 30 PA)
    for label in ("normal", "pneumonia"):
        ap, pa = mass[("nih", label, "AP")], mass[("nih", label, "PA")]
        assert ap / (ap + pa) == pytest.approx(40 / 70, rel=1e-5)


def test_source_weights_give_every_source_the_class_mix_of_all():
    from collections import defaultdict

    from chestxray.data.sources import Sample
    from chestxray.training.losses import balance_weights, source_weights, training_weights

    rows = ([("a", "normal", "PA")] * 40 + [("a", "pneumonia", "AP")] * 10 + [("b", "normal", "AP")] * 5
            + [("b", "pneumonia", "PA")] * 20 + [("c", "covid", "PA")] * 25)
    samples = [Sample(f"{i}.png", label, None, source, view) for i, (source, label, view) in enumerate(rows)]
    w = source_weights(samples).numpy()
    assert abs(w.mean() - 1) < 1e-6
    mass = defaultdict(float)
    for s, wi in zip(samples, w):
        mass[(s.source, s.label)] += wi
    total = {src: sum(m for (s, _), m in mass.items() if s == src) for src in "abc"}
    # each source keeps its own share of the weight ...
    assert total["a"] / w.sum() == pytest.approx(50 / 100, rel=1e-5) and total["c"] / w.sum() == pytest.approx(0.25, rel=1e-5)
    # ... and the two sources holding normal and pneumonia now hold them in one ratio, that of all images (45 : 30)
    for src in "ab":
        assert mass[(src, "normal")] / mass[(src, "pneumonia")] == pytest.approx(45 / 30, rel=1e-5)
    # a source with one class only cannot be given another: its images keep equal weights
    assert len({round(float(x), 6) for s, x in zip(samples, w) if s.source == "c"}) == 1
    both = training_weights(samples, "source+view").numpy()
    expected = source_weights(samples).numpy() * balance_weights(samples, "view").numpy()
    assert both == pytest.approx(expected / expected.mean(), rel=1e-5)
