"""Batch-norm folded into the convolution before it: the eval-mode network with fewer passes over memory.

In eval mode a batch-norm layer is an affine map per channel with fixed statistics, so it can be merged into the
weights and bias of the convolution whose output it normalises: y = conv(x) * s + t becomes conv'(x) with
W' = W * s, b' = b * s + t. onnxruntime does the same to an exported graph; in PyTorch on a CPU it makes
EfficientNet-Lite0's forward pass about 1.7x faster (benchmarks/predict_profile.py). The numbers differ from the
unfolded network's by float rounding only (relative 1e-5), and every consumer of the model contract runs the folded
network, so they all see the same numbers.

The copy also drops the padded copy of the input that TensorFlow's "same" padding makes (timm's Conv2dSame, in the
tf_* EfficientNets): see `SameConv`. That is about 1.2x faster again, with the same outputs.

Pairs are found by running the network once on a small input (`probe_input`: at most 64 px a side, since neither
the pairs nor the folded weights depend on the size, and the passes cost what the network costs at that size) and recording which convolution's output each
batch-norm layer receives, so no architecture is described by hand; a folded copy whose output differs from the
original's by more than rounding is refused and the original used.
"""

from __future__ import annotations

import copy
import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger("chestxray")


PROBE_SIDE = 64


def probe_input(side: int, device=None) -> torch.Tensor:
    """The zero batch `folded_copy` traces and checks a network on: one 3-channel image of the network's own side, or
    PROBE_SIDE where that is smaller (a multiple of 32, which a U-Net's decoder needs)."""
    side = min(int(side), PROBE_SIDE)
    return torch.zeros(1, 3, side, side, device=device)


def conv_bn_pairs(model: nn.Module, example: torch.Tensor) -> list[tuple[str, str]]:
    """(convolution name, batch-norm name) for each batch-norm layer fed directly, and only, by a convolution."""
    names = {m: n for n, m in model.named_modules()}
    produced: dict[int, nn.Module] = {}
    keep = []  # every tensor seen stays alive, so no id is reused during the pass
    consumers: dict[int, int] = {}
    pairs = []

    def conv_hook(mod, inp, out):
        produced[id(out)] = mod
        keep.append(out)

    def any_hook(mod, inp, out):
        for t in inp:
            if isinstance(t, torch.Tensor):
                consumers[id(t)] = consumers.get(id(t), 0) + 1
                keep.append(t)

    def bn_hook(mod, inp, out):
        conv = produced.get(id(inp[0]))
        if conv is not None:
            pairs.append((conv, mod, id(inp[0])))

    inside_norm = {c for m in model.modules() if isinstance(m, nn.BatchNorm2d) for c in m.modules() if c is not m}
    hooks = []
    for m in model.modules():
        # every use of a tensor by a layer is counted: leaves, and a batch-norm layer as a whole (timm's carries its
        # activation as a child, which sees the normalised tensor, not the convolution's)
        if (isinstance(m, nn.BatchNorm2d) or not list(m.children())) and m not in inside_norm:
            hooks.append(m.register_forward_hook(any_hook))
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.BatchNorm2d):
            hooks.append(m.register_forward_hook(bn_hook))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    calls: dict[nn.Module, int] = {}
    for conv, _, _ in pairs:
        calls[conv] = calls.get(conv, 0) + 1
    return [(names[c], names[b]) for c, b, t in pairs if calls[c] == 1 and consumers.get(t, 0) == 1]


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else 1 / torch.sqrt(bn.running_var + bn.eps)
    shift = (bn.bias if bn.affine else 0) - bn.running_mean * scale
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.weight.data.mul_(scale.reshape(-1, 1, 1, 1))
    conv.bias = nn.Parameter(bias * scale + shift)


def _after_norm(bn: nn.Module) -> nn.Module:
    """What is left of a batch-norm layer once its normalisation is folded away: timm's BatchNormAct2d keeps its
    dropout and activation; a plain BatchNorm2d is nothing."""
    rest = [getattr(bn, k) for k in ("drop", "act") if isinstance(getattr(bn, k, None), nn.Module)]
    return nn.Sequential(*rest) if rest else nn.Identity()


class SameConv(nn.Module):
    """A convolution with TensorFlow's "same" padding, without padding a copy of its input.

    "Same" pads by T = (ceil(i/s) - 1) * s + k - i in all, T // 2 before and the rest after: one more after where T
    is odd (a stride-2 layer on an even side). timm's Conv2dSame pads a copy of the input for that, a pass over the
    largest tensors of the network. Here the kernel gets a leading row (or column) of zeros instead, and the
    convolution symmetric padding of ceil(T / 2): every output sums the same products (plus exact zeros) over the
    same window, so the result is the same. Inference only: the shifted kernels are cached per parity."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.weight, self.bias = conv.weight, conv.bias
        self.stride, self.groups = conv.stride, conv.groups
        self._kernels: dict[tuple[int, int], torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads, shifts = [], []
        for size, k, s in zip(x.shape[-2:], self.weight.shape[-2:], self.stride):
            total = max((math.ceil(int(size) / s) - 1) * s + k - int(size), 0)
            pads.append(total - total // 2)
            shifts.append(total % 2)
        key = (shifts[0], shifts[1])
        if key not in self._kernels:
            w = F.pad(self.weight, (key[1], 0, key[0], 0)) if any(key) else self.weight
            self._kernels[key] = w.contiguous(memory_format=torch.channels_last) if self.weight.dim() == 4 else w
        return F.conv2d(x, self._kernels[key], self.bias, self.stride, tuple(pads), 1, self.groups)


def _without_padded_copies(model: nn.Module) -> None:
    """Every timm Conv2dSame (dilation 1) of `model` replaced by a `SameConv` of the same weights."""
    try:
        from timm.layers.conv2d_same import Conv2dSame
    except ImportError:  # pragma: no cover - timm is a dependency
        return
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Conv2dSame) and tuple(child.dilation) == (1, 1):
                setattr(parent, name, SameConv(child))


def folded_copy(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """An eval-mode copy of `model` with every batch-norm folded into its convolution and no padded copies of inputs
    (see the module's notes)."""
    folded = copy.deepcopy(model).eval()
    with torch.no_grad():
        pairs = conv_bn_pairs(folded, example)
        modules = dict(folded.named_modules())
        for conv_name, bn_name in pairs:
            _fold(modules[conv_name], modules[bn_name])
            parent, _, leaf = bn_name.rpartition(".")
            setattr(modules[parent] if parent else folded, leaf, _after_norm(modules[bn_name]))
        _without_padded_copies(folded)
        was = model.training
        model.eval()
        probe = torch.randn(example.shape, generator=torch.Generator().manual_seed(0)).to(example.device)
        expected, got = model(probe), folded(probe)
        model.train(was)
    if not torch.allclose(expected, got, rtol=1e-3, atol=1e-3 * float(expected.abs().max().clamp(min=1.0))):
        log.debug("batch-norm folding changed %s's output beyond rounding; the unfolded network is used", type(model).__name__)
        return copy.deepcopy(model).eval()
    return folded
