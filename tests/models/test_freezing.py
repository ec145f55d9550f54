import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from chestxray.config import OptimConfig
from chestxray.data.labels import TaskScheme
from chestxray.models.backbones import create_model, head_prefixes, is_head_param
from chestxray.models.freezing import backbone_blocks, set_trainable
from chestxray.training.module import ClassifierModule

SCHEME = TaskScheme.build("binary", ["covid", "normal"])


def _fit(model, stage, **cfg):
    torch.manual_seed(0)
    x = torch.randn(16, 3, 64, 64) * 2 + 0.5  # statistics unlike ImageNet's, so BN stats would move
    y = (torch.rand(16) > 0.5).float()
    loader = DataLoader(TensorDataset(x, y, torch.arange(16)), batch_size=8)
    module = ClassifierModule(model, SCHEME, stage, optim=OptimConfig(lr=1e-2, lr_finetune=1e-2, backbone_lr_factor=1.0, warmup_epochs=0, **cfg))
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", num_sanity_val_steps=0)
    trainer.fit(module, loader, loader)


def _split_changes(before, after, model):
    prefixes = head_prefixes(model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    head = {k for k in changed if is_head_param(k, prefixes)}
    stats = {k for k in changed - head if "running_" in k}
    weights = changed - head - stats - {k for k in changed if "num_batches" in k}
    return head, weights, stats


@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet18"])
def test_head_stage_changes_no_backbone_weight_or_bn_statistic(name):
    model, _ = create_model(name, 1, pretrained=name == "efficientnet_lite0")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _fit(model, "head")
    head, weights, stats = _split_changes(before, model.state_dict(), model)
    assert head, "the head must train"
    assert not weights and not stats


def test_finetune_changes_backbone_weights_bn_frozen_by_default():
    model, _ = create_model("efficientnet_lite0", 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _fit(model, "finetune")
    head, weights, stats = _split_changes(before, model.state_dict(), model)
    assert head and len(weights) > 50
    assert not stats  # finetune_bn=frozen keeps running statistics


def test_finetune_bn_train_moves_statistics():
    model, _ = create_model("efficientnet_lite0", 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _fit(model, "finetune", finetune_bn="train")
    _, weights, stats = _split_changes(before, model.state_dict(), model)
    assert weights and stats


def test_unfreeze_last_blocks_only():
    model, _ = create_model("efficientnet_lite0", 1)
    blocks = backbone_blocks(model)
    trainable = set_trainable(model, "finetune", unfreeze_last=2)
    assert trainable == set(blocks[-1] + blocks[-2])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _fit(model, "finetune", unfreeze_last=2)
    _, weights, _ = _split_changes(before, model.state_dict(), model)
    assert weights and weights <= trainable
