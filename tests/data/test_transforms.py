"""The contract's resize without torchvision gives torchvision's pixels."""

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from chestxray.data.transforms import Resize, eval_transform


@pytest.mark.parametrize("shape, side", [((1, 256, 256), 224), ((1, 300, 211), 224), ((1, 64, 64), 224),
                                         ((1, 224, 224), 224), ((3, 97, 130), 64), ((2, 1, 40, 50), 32)])
def test_resize_equals_torchvision(shape, side):
    x = torch.from_numpy(np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8))
    ours, theirs = Resize(side)(x), v2.Resize((side, side), antialias=True)(x)
    assert ours.dtype == theirs.dtype == torch.uint8 and ours.shape == theirs.shape
    assert torch.equal(ours, theirs)
    f = x.float() / 3
    assert torch.equal(Resize(side)(f), v2.Resize((side, side), antialias=True)(f))


def test_resize_equals_torchvision_without_native_uint8(monkeypatch):
    """On a CPU without AVX2 both resize floats and round."""
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "DEFAULT")
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (1, 256, 200), dtype=np.uint8))
    assert torch.equal(Resize(224)(x), v2.Resize((224, 224), antialias=True)(x))


@pytest.mark.parametrize("intensity", ["none", "equalize", "percentile", "clahe"])
def test_eval_transform_equals_the_torchvision_pipeline(intensity):
    from chestxray.data.transforms import Standardise

    x = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (1, 256, 256), dtype=np.uint8))
    reference = v2.Compose([Standardise(intensity), v2.Resize((224, 224), antialias=True)])
    assert torch.equal(eval_transform(224, intensity)(x), reference(x))
