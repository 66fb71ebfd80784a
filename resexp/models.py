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

The wider family, each with its plain twin (the same layers without the additions):
- ``PreActBottleneck``: 1x1-3x3-1x1 with 4x expansion, pre-activated, 9n+2 layers on CIFAR:
  ResNet-164 and ResNet-1001 of He et al. 2016 (Table 2: 1.7M and 10.2M parameters).
- ``ImageNetResNet``: ResNet-18/34 (``BasicBlock``) and 50/101/152 (``Bottleneck``) of He et al.
  2015, Table 1, with a CIFAR stem (3x3 conv, no max-pool) or the ImageNet one (7x7/2 conv, 3x3/2
  max-pool); with the ImageNet stem, option B and 1000 classes, exactly torchvision's ResNets
  (``from_torchvision`` and ``to_torchvision`` translate their state dicts).
- ``Residual(layer)``: an identity shortcut, or option A/B where the shape changes, around any
  module.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal, TypeAlias, cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from resexp.config import BLOCKS, FAMILIES, SHORTCUTS, STEMS  # the schema's choices
from resexp.errors import ConfigError

Shortcut = Literal["A", "B"]
BlockKind = Literal["basic", "preact", "highway", "bottleneck"]
Stem = Literal["cifar", "imagenet"]


WIDTHS: tuple[int, int, int] = (16, 32, 64)  # filters per stage, He et al. 2015, sec. 4.2
EXPANSION = 4  # a bottleneck's last 1x1 conv widens 4x: He et al. 2015, Fig. 5; He et al. 2016

# He et al. 2015, Table 1: blocks per stage (on 56, 28, 14, 7 pixel maps at 224x224) with 64,
# 128, 256, 512 filters; ResNet-18/34 use basic blocks, ResNet-50/101/152 bottlenecks.
IMAGENET_WIDTHS: tuple[int, int, int, int] = (64, 128, 256, 512)
IMAGENET_LAYOUTS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
IMAGENET_DEPTHS: tuple[int, ...] = tuple(IMAGENET_LAYOUTS)

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


def check_depth(depth: object, block: str = "basic") -> int:
    """Return n for a CIFAR net's depth: 6n+2 layers (two 3x3 convs a block), or 9n+2 for
    ``block="bottleneck"`` (three convs a block); raise ValueError for any other depth."""
    if block == "bottleneck":
        form, per_block, first = "9n+2", 9, 11
        valid = "164, 1001 (any 9n+2: 11, 20, 29, ...)"
        source = "He et al. 2016, sec. 4"
    else:
        form, per_block, first = "6n+2", 6, 8
        valid = "20, 32, 44, 56, 110, 1202 (any 6n+2: 8, 14, 20, 26, ...)"
        source = "He et al. 2015, sec. 4.2"
    # bool is an int subclass: depth=True must not pass as depth 1.
    if isinstance(depth, bool) or not isinstance(depth, int):
        raise ValueError(
            f"depth must be an integer of the form {form} with n >= 1, got {depth!r}; "
            f"valid depths: {valid}"
        )
    if depth < first or (depth - 2) % per_block != 0:
        raise ValueError(
            f"depth must be {form} with n >= 1 for block={block} ({source}), got {depth}; "
            f"valid depths: {valid}"
        )
    return (depth - 2) // per_block


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
    """Option B: a 1x1 conv projection (with the block's stride) followed by BN.

    ``bn=False``: the bare projection of pre-activation units (He et al. 2016), whose input is
    already batch-normalized and whose output meets no BN before the addition.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int = 1, bn: bool = True) -> None:
        super().__init__()
        self.conv = conv1x1(in_planes, out_planes, stride)
        self.bn = nn.BatchNorm2d(out_planes) if bn else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return self.bn(x) if self.bn is not None else x


def make_shortcut(
    in_planes: int, planes: int, stride: int, shortcut: str, projection_bn: bool = True
) -> nn.Module:
    """Identity where shapes match; option A or B only where the block changes them."""
    if stride == 1 and in_planes == planes:
        return nn.Identity()
    if shortcut == "A":
        return ShortcutA(in_planes, planes, stride)
    if shortcut == "B":
        return ShortcutB(in_planes, planes, stride, bn=projection_bn)
    raise ValueError(f"shortcut must be one of {SHORTCUTS}, got {shortcut!r}")


# -------------------------------------------------------------------------------------------------
# A residual wrapper for any layer


class Residual(nn.Module):
    """``y = layer(x) + shortcut(x)`` around any module (He et al. 2015, eq. 1 and 2).

    The shortcut is the identity where ``layer`` keeps the shape of its input. Where it maps a
    (C, H, W) feature map to C' >= C channels on a map subsampled by an integer stride, option A
    pads zeros (no parameters); option B projects (1x1 conv and BN, any C'). Any other change
    of shape has no shortcut that fits: ValueError, naming both shapes.

    The shapes are found once, here, by running ``layer`` on meta tensors (no computation, its
    weights and BN statistics untouched). ``in_shape`` is the input's shape without the batch
    dimension; by default (in_channels, 32, 32) for a layer that starts with a conv, or
    (in_features,) for one that starts with a Linear.

    Nothing follows the addition (the identity mapping of He et al. 2016); put a ReLU after the
    wrapper for the 2015 block. ``residual=False`` gives the plain twin: the layer alone, with
    no shortcut module (so with option A, exactly the same parameters).
    """

    def __init__(
        self,
        layer: nn.Module,
        shortcut: Shortcut = "A",
        residual: bool = True,
        in_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut must be one of {', '.join(SHORTCUTS)}, got {shortcut!r}")
        self.layer = layer
        self.residual = residual
        self.in_shape = tuple(in_shape) if in_shape is not None else _input_shape(layer)
        self.out_shape = _output_shape(layer, self.in_shape)
        fitted = shortcut_between(self.in_shape, self.out_shape, shortcut)
        self.shortcut: nn.Module | None = fitted if residual else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer(x)
        if self.shortcut is not None:  # residual
            out = out + self.shortcut(x)  # the one line that makes it residual
        return out

    def extra_repr(self) -> str:
        return f"in_shape={self.in_shape}, out_shape={self.out_shape}, residual={self.residual}"


def shortcut_between(in_shape: Sequence[int], out_shape: Sequence[int], shortcut: str) -> nn.Module:
    """The shortcut from ``in_shape`` to ``out_shape`` (batch left out) that ``Residual`` fits."""
    in_shape, out_shape = tuple(in_shape), tuple(out_shape)
    if in_shape == out_shape:
        return nn.Identity()
    why = "only a (C, H, W) feature map subsampled by an integer stride can be padded or projected"
    if len(in_shape) == len(out_shape) == 3:
        (c, h, w), (c2, h2, w2) = in_shape, out_shape
        # A stride-s shortcut (a 1x1 conv, or taking every s-th pixel) maps H to ceil(H / s).
        strides = [s for s in range(1, max(h, w) + 1) if -(-h // s) == h2 and -(-w // s) == w2]
        if strides and (shortcut == "B" or c2 >= c):
            return make_shortcut(c, c2, strides[0], shortcut)
        if strides:
            why = "option A can only add channels; shortcut B projects to fewer"
        else:
            why = f"{h}x{w} -> {h2}x{w2} pixels is no integer stride"
    raise ValueError(
        f"no shortcut fits a layer that maps shape {in_shape} to {out_shape} (batch left out): "
        f"{why}"
    )


def _input_shape(layer: nn.Module) -> tuple[int, ...]:
    """(in_channels, 32, 32) or (in_features,) from the first conv or Linear of ``layer``."""
    for m in layer.modules():
        if isinstance(m, nn.Conv2d):
            return (m.in_channels, 32, 32)
        if isinstance(m, nn.Linear):
            return (m.in_features,)
    raise ValueError(
        f"cannot tell the input shape of {type(layer).__name__} (no Conv2d or Linear in it): "
        "pass in_shape=(C, H, W) or (features,), without the batch dimension"
    )


def _output_shape(layer: nn.Module, in_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of ``layer``'s output for one input of ``in_shape``, found on meta tensors."""
    tensors = {
        name: torch.empty_like(t, device="meta")
        for name, t in itertools.chain(layer.named_parameters(), layer.named_buffers())
    }
    x = torch.empty(1, *in_shape, device="meta")
    try:
        with torch.no_grad():
            out = torch.func.functional_call(layer, tensors, (x,))
    except Exception as error:
        raise ValueError(
            f"{type(layer).__name__} does not take an input of shape {in_shape} (batch left out): "
            f"{error}; pass the right in_shape"
        ) from None
    return tuple(out.shape[1:])


# -------------------------------------------------------------------------------------------------
# Blocks


class _Block(nn.Module):
    """What all blocks share: the residual flag, the shape change, and the lesion switch."""

    expansion = 1  # output channels per unit of ``planes``

    def __init__(
        self,
        in_planes: int,
        out_planes: int,
        stride: int,
        residual: bool,
        shortcut: Shortcut,
        projection_bn: bool = True,
    ) -> None:
        super().__init__()
        self.shortcut: nn.Module | None = (
            make_shortcut(in_planes, out_planes, stride, shortcut, projection_bn)
            if residual
            else None
        )
        self.residual = residual
        self.same_shape = stride == 1 and in_planes == out_planes
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
            return F.relu(self.shortcut(x)) if self.shortcut is not None else x

        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))

        if self.shortcut is not None:  # residual
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
            return self.shortcut(x) if self.shortcut is not None else x

        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))

        if self.shortcut is not None:  # residual
            out = out + self.shortcut(x)
        return out


class HighwayBlock(BasicBlock):
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
    ) -> None:
        if not residual:
            raise ValueError("a highway block always has its (gated) shortcut: use residual=True")
        super().__init__(in_planes, planes, stride, residual, shortcut)
        self.gate = nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=True)
        assert self.gate.bias is not None  # bias=True
        nn.init.constant_(self.gate.bias, HIGHWAY_GATE_BIAS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert self.shortcut is not None  # always there: __init__ refuses residual=False
        if self.lesioned:  # a gate shut on the transform path: T = 0
            return F.relu(self.shortcut(x))

        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))

        t = torch.sigmoid(self.gate(x))  # (B, planes, H/s, W/s), in (0, 1)
        return F.relu(t * out + (1 - t) * self.shortcut(x))


class Bottleneck(_Block):
    """1x1 (reduce to ``planes``), 3x3, 1x1 (expand to 4 * ``planes``) conv-BN layers; the
    addition before the last ReLU. He et al. 2015, Fig. 5 (right), ResNet-50/101/152.

    The stride sits on the 3x3 conv, as in torchvision (and fb.resnet.torch), not on the first
    1x1 as in the paper: the same parameters, more MACs, and torchvision's weights fit.
    """

    expansion = EXPANSION

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int = 1,
        residual: bool = True,
        shortcut: Shortcut = "A",
    ) -> None:
        super().__init__(in_planes, planes * EXPANSION, stride, residual, shortcut)
        self.conv1 = conv1x1(in_planes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * EXPANSION)
        self.bn3 = nn.BatchNorm2d(planes * EXPANSION)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.lesioned:
            return F.relu(self.shortcut(x)) if self.shortcut is not None else x

        out = F.relu(self.bn1(self.conv1(x)))  # (B, planes, H, W)
        out = F.relu(self.bn2(self.conv2(out)))  # (B, planes, H/s, W/s)
        out = self.bn3(self.conv3(out))  # (B, 4 planes, H/s, W/s)

        if self.shortcut is not None:  # residual
            out = out + self.shortcut(x)
        return F.relu(out)


class PreActBottleneck(_Block):
    """BN-ReLU-conv three times (1x1 reduce, 3x3, 1x1 expand 4x), then the addition.

    He et al. 2016, Fig. 4(e) with the bottleneck of He et al. 2015, Fig. 5: the unit of
    ResNet-164 and ResNet-1001 (sec. 4). The stride sits on the 3x3 conv. As in that paper (and
    its code, KaimingHe/resnet-1k-layers), an identity shortcut takes the raw input, while a unit
    that changes the shape pre-activates its input once for both paths, and its projection (B)
    is a bare 1x1 conv. The first unit of a net has no BN-ReLU of its own (``bn1`` is None): the
    stem's is "the first activation right after conv1 and before splitting into two paths" (He
    et al. 2016, appendix).
    """

    expansion = EXPANSION

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int = 1,
        residual: bool = True,
        shortcut: Shortcut = "A",
    ) -> None:
        super().__init__(in_planes, planes * EXPANSION, stride, residual, shortcut, False)
        self.bn1: nn.BatchNorm2d | None = nn.BatchNorm2d(in_planes)
        self.conv1 = conv1x1(in_planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * EXPANSION)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x)) if self.bn1 is not None else x
        into_shortcut = x if self.same_shape else pre
        if self.lesioned:
            return self.shortcut(into_shortcut) if self.shortcut is not None else x

        out = self.conv1(pre)  # (B, planes, H, W)
        out = self.conv2(F.relu(self.bn2(out)))  # (B, planes, H/s, W/s)
        out = self.conv3(F.relu(self.bn3(out)))  # (B, 4 planes, H/s, W/s)

        if self.shortcut is not None:  # residual
            out = out + self.shortcut(into_shortcut)
        return out


# The CIFAR family's blocks, by the config's ``block``.
BLOCK_TYPES: dict[str, type[_Block]] = {
    "basic": BasicBlock,
    "preact": PreActBlock,
    "highway": HighwayBlock,
    "bottleneck": PreActBottleneck,
}


# -------------------------------------------------------------------------------------------------
# Validation: every architecture choice at once


def check_architecture(
    depth: int,
    residual: bool = True,
    shortcut: str = "A",
    block: str = "basic",
    family: str = "cifar",
    stem: str = "cifar",
    num_classes: int = 10,
) -> None:
    """Refuse an invalid architecture before anything is built or written: one ConfigError (a
    ValueError) that lists every problem, each with the valid choices. The config's keys, one
    argument each."""
    problems = []
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
    if stem not in STEMS:
        problems.append(f"stem must be one of {', '.join(STEMS)}, got {stem!r}")

    if family == "cifar":
        if stem == "imagenet":
            problems.append(
                "stem=imagenet (7x7/2 conv and max-pool) is for family=imagenet only; the CIFAR "
                "nets start with a 3x3 conv (stem=cifar)"
            )
        try:
            check_depth(depth, block if block in BLOCKS else "basic")
        except ValueError as e:
            problems.append(str(e))
    elif family == "imagenet":
        depths = ", ".join(map(str, IMAGENET_DEPTHS))
        own = IMAGENET_LAYOUTS[depth][0] if depth in IMAGENET_LAYOUTS else None
        if isinstance(depth, bool) or own is None:
            problems.append(
                f"family=imagenet has depths {depths} (He et al. 2015, Table 1), got {depth!r}"
            )
        elif block in BLOCKS and block not in ("basic", own):
            problems.append(
                f"family=imagenet depth={depth} is built of {own} blocks (He et al. 2015, Table "
                f"1): leave block at basic (its default) or set block={own}, not {block}"
            )
    else:
        problems.append(f"family must be one of {', '.join(FAMILIES)}, got {family!r}")
    if problems:
        raise ConfigError("; ".join(problems))


# -------------------------------------------------------------------------------------------------
# The networks


class _ResNet(nn.Module):
    """What both families share: stages of blocks after a stem, a last BN-ReLU for
    pre-activation blocks, global average pooling, the classifier, He initialization."""

    residual: bool
    shortcut: Shortcut
    conv1: nn.Conv2d
    bn1: nn.BatchNorm2d
    maxpool: nn.Module | None
    final_bn: nn.BatchNorm2d | None
    fc: nn.Linear

    def _make_stages(
        self, block_type: type[_Block], widths: Sequence[int], counts: Sequence[int]
    ) -> int:
        """Stages layer1, layer2, ... of ``counts`` blocks; the first block of every stage but the
        first one halves the map (stride 2). Returns the channels of the last stage."""
        self.num_stages = len(widths)
        in_planes = widths[0]  # the stem's output
        for i, (planes, count) in enumerate(zip(widths, counts, strict=True)):
            layers = []
            for s in [1 if i == 0 else 2] + [1] * (count - 1):
                layers.append(block_type(in_planes, planes, s, self.residual, self.shortcut))
                in_planes = planes * block_type.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*layers))
        return in_planes

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

    def stages(self) -> list[nn.Sequential]:
        """layer1, layer2, ..., in the order the input passes through them."""
        return [getattr(self, f"layer{i + 1}") for i in range(self.num_stages)]

    def blocks(self) -> list[_Block]:
        """All blocks, in the order the input passes through them."""
        # cast: an nn.Sequential holds Modules; _make_stages puts only blocks into these.
        return cast(list[_Block], [b for stage in self.stages() for b in stage])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))  # (B, C0, H, W); ImageNet stem: (B, 64, H/2, W/2)
        if self.maxpool is not None:
            out = self.maxpool(out)  # ImageNet stem: (B, 64, H/4, W/4)

        for stage in self.stages():  # each but the first halves H and W
            out = stage(out)
        if self.final_bn is not None:
            out = F.relu(self.final_bn(out))

        out = F.adaptive_avg_pool2d(out, 1).flatten(1)  # (B, C)
        return self.fc(out)  # (B, num_classes)


class CifarResNet(_ResNet):
    """6n+2 layers for 32x32 images: stem, three stages of n blocks, pooling, classifier.

    ``residual=False`` gives the paper's plain net: the same layers without the additions.
    ``block="bottleneck"``: 9n+2 layers, the pre-activation bottleneck nets of He et al. 2016
    (ResNet-164: n=18, ResNet-1001: n=111), stages of 64, 128 and 256 output channels (16, 32 and
    64 inside each bottleneck).
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
        check_architecture(depth, residual, shortcut, block, "cifar", "cifar", num_classes)
        self.n = check_depth(depth, block)
        self.depth = depth
        self.residual = residual
        self.shortcut = shortcut
        self.block = block
        self.family = "cifar"
        block_type = BLOCK_TYPES[block]

        self.conv1 = conv3x3(3, WIDTHS[0])  # (B, 16, 32, 32)
        self.bn1 = nn.BatchNorm2d(WIDTHS[0])
        self.maxpool = None
        # Stages on 32, 16 and 8 pixel maps.
        out_planes = self._make_stages(block_type, WIDTHS, [self.n] * 3)
        if block == "bottleneck":  # the stem's BN-ReLU pre-activates it (He et al. 2016, appendix)
            first = self.blocks()[0]
            assert isinstance(first, PreActBottleneck)
            first.bn1 = None
        # Pre-activation blocks end on an addition, so the net needs one more BN-ReLU before
        # pooling (He et al. 2016, appendix).
        self.final_bn = nn.BatchNorm2d(out_planes) if block in ("preact", "bottleneck") else None
        self.fc = nn.Linear(out_planes, num_classes)

        self._init_weights()


class ImageNetResNet(_ResNet):
    """ResNet-18/34/50/101/152 of He et al. 2015, Table 1, and their plain twins (Table 2 and
    Fig. 4 compare plain-18/34 with ResNet-18/34).

    Four stages of 64, 128, 256 and 512 filters (bottlenecks expand them 4x). ``stem="cifar"``
    (default) starts with a 3x3 conv and no max-pool, so a 32x32 image reaches the stages whole
    (32, 16, 8, 4 pixel maps); ``stem="imagenet"`` is the paper's 7x7/2 conv and 3x3/2 max-pool
    (56, 28, 14, 7 at 224x224). With the ImageNet stem, ``shortcut="B"`` and 1000 classes, the
    parameters are exactly those of ``torchvision.models.resnet18`` ... ``resnet152``.
    """

    def __init__(
        self,
        depth: int,
        residual: bool = True,
        shortcut: Shortcut = "A",
        stem: Stem = "cifar",
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        check_architecture(depth, residual, shortcut, "basic", "imagenet", stem, num_classes)
        self.depth = depth
        self.residual = residual
        self.shortcut = shortcut
        self.block, counts = IMAGENET_LAYOUTS[depth]
        self.family = "imagenet"
        self.stem = stem
        block_type = Bottleneck if self.block == "bottleneck" else BasicBlock

        if stem == "imagenet":
            self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        else:
            self.conv1 = conv3x3(3, 64)
            self.maxpool = None
        self.bn1 = nn.BatchNorm2d(64)
        out_planes = self._make_stages(block_type, IMAGENET_WIDTHS, counts)
        self.final_bn = None
        self.fc = nn.Linear(out_planes, num_classes)

        self._init_weights()


# Either family's network: what ``build_model`` returns.
ResNet: TypeAlias = CifarResNet | ImageNetResNet


def build_model(
    depth: int,
    residual: bool = True,
    shortcut: str = "A",
    block: str = "basic",
    num_classes: int = 10,
    *,
    family: str = "cifar",
    stem: str = "cifar",
) -> ResNet:
    """The network the config's keys describe; ValueError lists every invalid argument.

    ``family="cifar"``: 6n+2 layers (9n+2 with ``block="bottleneck"``); ``family="imagenet"``:
    ResNet-18, 34, 50, 101 or 152, its block fixed by the depth.
    """
    check_architecture(depth, residual, shortcut, block, family, stem, num_classes)
    # The casts: check_architecture has just checked each string against its choices.
    if family == "imagenet":
        return ImageNetResNet(
            depth, residual, cast(Shortcut, shortcut), cast(Stem, stem), num_classes
        )
    return CifarResNet(
        depth, residual, cast(Shortcut, shortcut), cast(BlockKind, block), num_classes
    )


# -------------------------------------------------------------------------------------------------
# torchvision's state dicts: the same names, but for the projection, torchvision's "downsample"

# (ours, torchvision's) name parts of the option-B projection.
_TORCHVISION_NAMES = ((".shortcut.conv.", ".downsample.0."), (".shortcut.bn.", ".downsample.1."))


def from_torchvision(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A ``torchvision.models.resnet*`` state dict, renamed for ``ImageNetResNet`` (stem=imagenet,
    shortcut=B): ``model.load_state_dict(from_torchvision(tv.state_dict()))``."""
    return {
        _rename(k, [(tv, ours) for ours, tv in _TORCHVISION_NAMES]): v
        for k, v in state_dict.items()
    }


def to_torchvision(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An ``ImageNetResNet`` state dict, renamed for the torchvision ResNet of its depth."""
    return {_rename(k, _TORCHVISION_NAMES): v for k, v in state_dict.items()}


def _rename(key: str, pairs: Iterable[tuple[str, str]]) -> str:
    for old, new in pairs:
        key = key.replace(old, new)
    return key


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
