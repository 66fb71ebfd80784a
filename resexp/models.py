"""The CIFAR-10 networks of He, Zhang, Ren, Sun 2015, "Deep Residual Learning for Image
Recognition" (arXiv 1512.03385), section 4.2, with and without shortcuts.

A 3x3 conv, then three stages of n blocks (2n 3x3 convs each) on 32, 16 and 8 pixel maps with 16,
32 and 64 filters, global average pooling and a 10-way fully connected layer: 6n+2 weighted layers.
A plain net and its residual twin differ by one line of ``BasicBlock.forward``; with the paper's
option A shortcuts (parameter-free) they also have exactly the same parameters, e.g. 269,722 for
depth 20 (Table 6: 0.27M).

Variants for the follow-up studies:
- ``PreActBlock``: full pre-activation, He, Zhang, Ren, Sun 2016, "Identity Mappings in Deep
  Residual Networks" (arXiv 1603.05027).
- ``HighwayBlock``: a gated shortcut, Srivastava, Greff, Schmidhuber 2015, "Training Very Deep
  Networks" (arXiv 1507.06228).
- ``lesion()`` on any block replaces it by its shortcut at test time, Veit, Wilber, Belongie 2016,
  "Residual Networks Behave Like Ensembles of Relatively Shallow Networks" (arXiv 1605.06431).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

Shortcut = Literal["A", "B"]
BlockKind = Literal["basic", "preact", "highway"]

SHORTCUTS: tuple[str, ...] = ("A", "B")
BLOCKS: tuple[str, ...] = ("basic", "preact", "highway")
WIDTHS: tuple[int, int, int] = (16, 32, 64)  # filters per stage, He et al. 2015, sec. 4.2

# Srivastava et al. 2015, sec. 2.2: a negative gate bias makes every block start close to the
# carry path (T(x) ~ sigmoid(-1) = 0.27), which lets very deep highway nets train.
HIGHWAY_GATE_BIAS = -1.0


# -------------------------------------------------------------------------------------------------
# Helpers


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 and no bias (the BN after it has one)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution without bias."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


def check_depth(depth: int) -> int:
    """Return n for a depth of 6n+2 layers; raise ValueError for any other depth."""
    valid = "20, 32, 44, 56, 110, 1202 (any 6n+2: 8, 14, 20, 26, ...)"
    # bool is an int subclass: depth=True must not pass as depth 1.
    if isinstance(depth, bool) or not isinstance(depth, int):
        raise ValueError(
            f"depth must be an integer of the form 6n+2 with n >= 1, got {depth!r}; "
            f"valid depths: {valid}"
        )
    if depth < 8 or (depth - 2) % 6 != 0:
        raise ValueError(
            f"depth must be 6n+2 with n >= 1 (He et al. 2015, sec. 4.2), got {depth}; "
            f"valid depths: {valid}"
        )
    return (depth - 2) // 6


# -------------------------------------------------------------------------------------------------
# Shortcuts


class ShortcutA(nn.Module):
    """Option A: identity with zero-padding for the extra channels; no parameters.

    Subsamples by taking every ``stride``-th pixel, then appends ``out_planes - in_planes`` channels
    of zeros at the end. (akamaster/pytorch_resnet_cifar10 pads half on each side instead; the
    zeros carry no information either way, so the choice is only a convention.)
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int = 1) -> None:
        super().__init__()
        if out_planes < in_planes:
            raise ValueError(f"option A can only add channels, got {in_planes} -> {out_planes}")
        self.stride = stride
        self.extra = out_planes - in_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]  # (B, C, H/s, W/s)
        # F.pad goes from the last dim back: (W left, W right, H top, H bottom, C front, C back)
        return F.pad(x, (0, 0, 0, 0, 0, self.extra))  # (B, C + extra, H/s, W/s)

    def extra_repr(self) -> str:
        return f"stride={self.stride}, extra_channels={self.extra}"


class ShortcutB(nn.Module):
    """Option B: a 1x1 conv projection (with the block's stride) followed by BN."""

    def __init__(self, in_planes: int, out_planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = conv1x1(in_planes, out_planes, stride)
        self.bn = nn.BatchNorm2d(out_planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


def make_shortcut(in_planes: int, planes: int, stride: int, shortcut: str) -> nn.Module:
    """Identity where shapes match; option A or B only where the block changes them."""
    if stride == 1 and in_planes == planes:
        return nn.Identity()
    if shortcut == "A":
        return ShortcutA(in_planes, planes, stride)
    if shortcut == "B":
        return ShortcutB(in_planes, planes, stride)
    raise ValueError(f"shortcut must be one of {SHORTCUTS}, got {shortcut!r}")


# -------------------------------------------------------------------------------------------------
# Blocks


class _Block(nn.Module):
    """What all blocks share: the residual flag, the shape change, and the lesion switch."""

    def __init__(
        self, in_planes: int, planes: int, stride: int, residual: bool, shortcut: Shortcut
    ) -> None:
        super().__init__()
        self.shortcut = make_shortcut(in_planes, planes, stride, shortcut) if residual else None
        self.residual = residual
        self.same_shape = stride == 1 and in_planes == planes
        self.lesioned = False

    def lesion(self, on: bool = True) -> None:
        """Replace the block by its shortcut at test time (Veit et al. 2016), or undo that.

        A plain block has no shortcut, so it can only be replaced by the identity, which exists
        only where the block keeps the shape of its input.
        """
        if on and not self.residual and not self.same_shape:
            raise ValueError(
                "a plain block can only be lesioned where input and output shapes match "
                "(in_planes == planes and stride 1); this block changes them"
            )
        self.lesioned = on


class BasicBlock(_Block):
    """Two 3x3 conv-BN layers; ``residual`` adds the shortcut before the last ReLU.

    He et al. 2015, Fig. 2 and sec. 4.2. With ``residual=False`` there is no shortcut module at
    all, so the plain block has the same state dict as its residual twin under option A.
    """

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int = 1,
        residual: bool = True,
        shortcut: Shortcut = "A",
    ) -> None:
        super().__init__(in_planes, planes, stride, residual, shortcut)
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.lesioned:
            return F.relu(self.shortcut(x)) if self.residual else x

        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))

        if self.residual:
            out = out + self.shortcut(x)  # the one line that makes it a ResNet
        return F.relu(out)


class PreActBlock(_Block):
    """Full pre-activation: BN-ReLU-conv twice, then the addition and nothing after it.

    He et al. 2016, Fig. 4(e). The shortcut takes the block's raw input, so a chain of identity
    shortcuts passes a signal from any block to any later one unchanged.
    """

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int = 1,
        residual: bool = True,
        shortcut: Shortcut = "A",
    ) -> None:
        super().__init__(in_planes, planes, stride, residual, shortcut)
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.lesioned:
            return self.shortcut(x) if self.residual else x

        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))

        if self.residual:
            out = out + self.shortcut(x)
        return out


class HighwayBlock(_Block):
    """A BasicBlock whose shortcut is gated: y = relu(T * F(x) + (1 - T) * shortcut(x)).

    Srivastava et al. 2015, eq. 3, with T = sigmoid(gate(x)) from a 1x1 conv (with bias) at the
    block's stride, one gate per channel and pixel. He et al. 2015 compare against it (Table 6,
    Highway-19 at 7.54%); He et al. 2016 (sec. 3.1) find such gated shortcuts train worse.
    """

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int = 1,
        residual: bool = True,
        shortcut: Shortcut = "A",
        gate_bias: float = HIGHWAY_GATE_BIAS,
    ) -> None:
        if not residual:
            raise ValueError("a highway block always has its (gated) shortcut: use residual=True")
        super().__init__(in_planes, planes, stride, residual, shortcut)
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.gate = nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=True)
        nn.init.constant_(self.gate.bias, gate_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.lesioned:  # a gate shut on the transform path: T = 0
            return F.relu(self.shortcut(x))

        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))

        t = torch.sigmoid(self.gate(x))  # (B, planes, H/s, W/s), in (0, 1)
        return F.relu(t * out + (1 - t) * self.shortcut(x))


BLOCK_TYPES: dict[str, type[_Block]] = {
    "basic": BasicBlock,
    "preact": PreActBlock,
    "highway": HighwayBlock,
}


# -------------------------------------------------------------------------------------------------
# The network


def _check_args(depth: int, residual: bool, shortcut: str, block: str, num_classes: int) -> int:
    """Validate every argument at once; return n. One ValueError lists all the problems."""
    problems = []
    n = 0
    try:
        n = check_depth(depth)
    except ValueError as e:
        problems.append(str(e))
    if not isinstance(residual, bool):
        problems.append(f"residual must be True or False, got {residual!r}")
    if shortcut not in SHORTCUTS:
        problems.append(f"shortcut must be one of {', '.join(SHORTCUTS)}, got {shortcut!r}")
    if block not in BLOCKS:
        problems.append(f"block must be one of {', '.join(BLOCKS)}, got {block!r}")
    if block == "highway" and residual is False:
        problems.append("block 'highway' always has its gated shortcut: use residual=True")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        problems.append(f"num_classes must be a positive integer, got {num_classes!r}")
    if problems:
        raise ValueError("; ".join(problems))
    return n


class CifarResNet(nn.Module):
    """6n+2 layers for 32x32 images: stem, three stages of n blocks, pooling, classifier.

    ``residual=False`` gives the paper's plain net: the same layers without the additions.
    """

    def __init__(
        self,
        depth: int,
        residual: bool = True,
        shortcut: Shortcut = "A",
        block: BlockKind = "basic",
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        self.n = _check_args(depth, residual, shortcut, block, num_classes)
        self.depth = depth
        self.residual = residual
        self.shortcut = shortcut
        self.block = block
        block_type = BLOCK_TYPES[block]

        self.conv1 = conv3x3(3, WIDTHS[0])
        self.bn1 = nn.BatchNorm2d(WIDTHS[0])
        self.layer1 = self._make_layer(block_type, WIDTHS[0], WIDTHS[0], 1, residual, shortcut)
        self.layer2 = self._make_layer(block_type, WIDTHS[0], WIDTHS[1], 2, residual, shortcut)
        self.layer3 = self._make_layer(block_type, WIDTHS[1], WIDTHS[2], 2, residual, shortcut)
        # Pre-activation blocks end on an addition, so the net needs one more BN-ReLU before
        # pooling; the stem's BN-ReLU is their "first activation right after conv1 and before
        # splitting into two paths" (He et al. 2016, appendix).
        self.final_bn = nn.BatchNorm2d(WIDTHS[2]) if block == "preact" else None
        self.fc = nn.Linear(WIDTHS[2], num_classes)

        self._init_weights()

    def _make_layer(
        self,
        block_type: type[_Block],
        in_planes: int,
        planes: int,
        stride: int,
        residual: bool,
        shortcut: str,
    ) -> nn.Sequential:
        """One stage of n blocks; the first one may downsample (stride 2) and widen."""
        layers = []
        for s in [stride] + [1] * (self.n - 1):
            layers.append(block_type(in_planes, planes, s, residual, shortcut))
            in_planes = planes
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        # He et al. 2015 ("Delving Deep into Rectifiers", eq. 10): std = sqrt(2 / fan_in) keeps the
        # variance of a ReLU net's responses constant through depth. The paper's sec. 4.2 uses it.
        # Conv biases (only the highway gates have one) keep their deliberate initial value.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # The fc layer keeps PyTorch's default (uniform, std ~ 1/sqrt(3 fan_in)), as torchvision's
        # ResNets do; its logits feed a softmax, not a ReLU.

    def blocks(self) -> list[_Block]:
        """All 3n blocks, in the order the input passes through them."""
        return [*self.layer1, *self.layer2, *self.layer3]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))  # (B, 16, 32, 32)

        out = self.layer1(out)  # (B, 16, 32, 32)
        out = self.layer2(out)  # (B, 32, 16, 16)
        out = self.layer3(out)  # (B, 64, 8, 8)
        if self.final_bn is not None:
            out = F.relu(self.final_bn(out))

        out = F.adaptive_avg_pool2d(out, 1).flatten(1)  # (B, 64)
        return self.fc(out)  # (B, num_classes)


def build_model(
    depth: int,
    residual: bool = True,
    shortcut: Shortcut = "A",
    block: BlockKind = "basic",
    num_classes: int = 10,
) -> CifarResNet:
    """A CIFAR net of ``depth`` = 6n+2 layers; ValueError lists every invalid argument."""
    return CifarResNet(depth, residual, shortcut, block, num_classes)


# -------------------------------------------------------------------------------------------------
# Counting


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (BN weights and biases included, as in Table 6)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@torch.no_grad()
def macs_per_image(model: nn.Module, image_size: int = 32) -> int:
    """Multiply-accumulates of the convs and linear layers for one forward pass of one image.

    BN, ReLU, additions and pooling are left out (they are a small fraction); e.g. 40.55M for
    ResNet-20 with option A.
    """
    counts: list[int] = []

    def conv_hook(m: nn.Conv2d, _inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        k = math.prod(m.kernel_size) * m.in_channels // m.groups
        counts.append(out[0].numel() * k)  # every output value costs k MACs

    def linear_hook(m: nn.Linear, _inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        counts.append(m.in_features * m.out_features)

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))

    was_training = model.training
    p = next(model.parameters())
    x = torch.zeros(1, 3, image_size, image_size, device=p.device, dtype=p.dtype)
    try:
        model.eval()  # no BN statistics updated by the measurement
        model(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return sum(counts)
