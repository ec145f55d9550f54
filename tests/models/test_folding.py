"""Batch-norm folded into convolutions: the contract's network computes what the trained network computes."""

import pytest
import torch
from torch import nn

from chestxray.data.labels import TaskScheme
from chestxray.data.transforms import Preprocessing
from chestxray.models.backbones import REGISTRY, create_model, normalisation
from chestxray.models.folding import SameConv, folded_copy
from chestxray.models.predictor import Predictor


def randomise_batchnorm(model: nn.Module) -> None:
    """Statistics far from the identity, so that a fold done wrong shows."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_folded_network_matches_the_original(name):
    model, _ = create_model(name, 2, pretrained=False)
    randomise_batchnorm(model)
    model.eval()
    x = torch.randn(3, 3, 64, 64)
    folded = folded_copy(model, torch.zeros(1, 3, 64, 64))
    with torch.no_grad():
        expected, got = model(x), folded(x)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    left = sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    # every batch-norm after a convolution is folded; DenseNet's first norm of each layer follows a concatenation
    if name.startswith("densenet"):
        assert 0 < left < n_bn
    else:
        assert left == 0, f"{left} of {n_bn} batch-norm layers not folded"
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == n_bn  # the original is untouched


@pytest.mark.parametrize("k,stride,groups", [(3, 2, 1), (3, 2, 8), (5, 2, 8), (3, 1, 1), (4, 2, 1), (5, 3, 8)])
def test_same_padding_without_a_padded_copy_gives_timms_outputs(k, stride, groups):
    from timm.layers.conv2d_same import Conv2dSame

    torch.manual_seed(0)
    conv = Conv2dSame(8, 16, k, stride=stride, groups=groups, bias=True).eval()
    fast = SameConv(conv)
    for h, w in [(32, 32), (33, 33), (32, 31), (7, 10), (1, 2)]:  # even, odd and mixed sides: each parity's kernel
        x = torch.randn(2, 8, h, w)
        with torch.no_grad():
            expected, got = conv(x), fast(x)
        assert got.shape == expected.shape
        assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5), (h, w)


def test_the_folded_efficientnet_pads_no_copies_and_keeps_its_output():
    from timm.layers.conv2d_same import Conv2dSame

    model, _ = create_model("efficientnet_lite0", 2, pretrained=False)
    randomise_batchnorm(model)
    model.eval()
    assert any(isinstance(m, Conv2dSame) for m in model.modules())
    folded = folded_copy(model, torch.zeros(1, 3, 64, 64))
    assert not any(isinstance(m, Conv2dSame) for m in folded.modules())
    assert sum(isinstance(m, SameConv) for m in folded.modules()) == sum(isinstance(m, Conv2dSame) for m in model.modules())
    for side in (64, 63, 100):
        x = torch.randn(2, 3, side, side)
        with torch.no_grad():
            assert torch.allclose(folded(x), model(x), rtol=1e-4, atol=1e-4), side


class SharedOutput(nn.Module):
    """A convolution whose output feeds a batch-norm layer and, outside any layer, a sum: folding it would change
    the sum, so it must not be folded."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


def test_a_fold_that_would_change_the_output_is_refused():
    model = SharedOutput()
    randomise_batchnorm(model)
    model.eval()
    x = torch.randn(2, 3, 16, 16)
    folded = folded_copy(model, torch.zeros(1, 3, 16, 16))
    with torch.no_grad():
        assert torch.equal(folded(x), model(x))
    assert isinstance(folded.bn, nn.BatchNorm2d)


def test_the_contract_network_follows_the_weights():
    """Predictor.forward runs a folded copy; new weights (a training step, a loaded stage) make a new copy."""
    model, _ = create_model("efficientnet_lite0", 1, pretrained=False)
    predictor = Predictor(model=model, scheme=TaskScheme.build("binary", ["normal", "pneumonia"]), preprocessing=Preprocessing(64, *normalisation(model)))
    images = torch.randint(0, 256, (5, 72, 72), dtype=torch.uint8).numpy()
    before = predictor.forward(images)[0]
    assert predictor.inference_model() is predictor.inference_model()  # cached while the weights stay
    with torch.no_grad():
        model.get_classifier().weight.add_(1.0)
    after = predictor.forward(images)[0]
    assert not torch.allclose(before, after)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["classifier.bias"] += 2.0
    model.load_state_dict(state)
    assert torch.allclose(predictor.forward(images)[0], after + 2.0, atol=1e-5)
