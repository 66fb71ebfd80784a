"""The networks of He et al. 2015, sec. 4.2: Table 6 sizes; plain = residual minus the additions."""

import re

import pytest
import torch
import torch.nn as nn

from resexp.models import (
    BLOCKS,
    FAMILIES,
    IMAGENET_DEPTHS,
    IMAGENET_LAYOUTS,
    SHORTCUTS,
    STEMS,
    BasicBlock,
    Bottleneck,
    CifarResNet,
    HighwayBlock,
    PreActBlock,
    PreActBottleneck,
    Residual,
    ShortcutA,
    ShortcutB,
    build_model,
    check_architecture,
    check_depth,
    conv3x3,
    count_parameters,
    from_torchvision,
    macs_per_image,
    to_torchvision,
)

# He et al. 2015, Table 6 (0.27M, 0.46M, 0.66M, 0.85M, 1.7M, 19.4M), exact with option A.
TABLE6_PARAMS = {
    20: 269_722,
    32: 464_154,
    44: 658_586,
    56: 853_018,
    110: 1_727_962,
    1202: 19_421_274,
}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# --- sizes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", list(TABLE6_PARAMS))
def test_parameter_counts_match_table6(depth: int) -> None:
    assert count_parameters(build_model(depth)) == TABLE6_PARAMS[depth]


@pytest.mark.parametrize("depth", [20, 56, 110])
def test_plain_net_has_the_same_parameters(depth: int) -> None:
    """Option A: the plain twin has exactly the same tensors (sec. 4.2)."""
    plain = build_model(depth, residual=False).state_dict()
    res = build_model(depth, residual=True).state_dict()
    assert list(plain) == list(res)
    assert all(plain[k].shape == res[k].shape for k in res)
    assert count_parameters(build_model(depth, residual=False)) == TABLE6_PARAMS[depth]


def test_residual_weights_load_strictly_into_plain_net() -> None:
    res, plain = build_model(20), build_model(20, residual=False)
    plain.load_state_dict(res.state_dict(), strict=True)
    res.load_state_dict(plain.state_dict(), strict=True)


def test_option_b_adds_exactly_two_projections() -> None:
    """Option B: 1x1 conv + BN only where the shape changes (16->32, 32->64)."""
    extra = (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)
    for depth in (20, 56):
        b = count_parameters(build_model(depth, shortcut="B"))
        assert b - TABLE6_PARAMS[depth] == extra
    model = build_model(20, shortcut="B")
    assert sum(isinstance(m, ShortcutB) for m in model.modules()) == 2
    # Identity elsewhere, and a plain net has no shortcut whatever the option.
    assert count_parameters(build_model(20, residual=False, shortcut="B")) == TABLE6_PARAMS[20]


# Multiply-accumulates per 32x32 image, convs and fc, option A (PAPERS.md).
MACS_M = {20: 40.55, 32: 68.86, 44: 97.17, 56: 125.49, 110: 252.89}


@pytest.mark.parametrize("depth", list(MACS_M))
def test_macs_per_image(depth: int) -> None:
    assert macs_per_image(build_model(depth)) == pytest.approx(MACS_M[depth] * 1e6, abs=0.01e6)


def test_plain_net_costs_the_same_macs() -> None:
    assert macs_per_image(build_model(20, residual=False)) == macs_per_image(build_model(20))


def test_depth_and_stage_structure() -> None:
    model = build_model(32)
    assert (model.depth, model.n, model.residual) == (32, 5, True)
    assert [len(s) for s in (model.layer1, model.layer2, model.layer3)] == [5, 5, 5]
    assert len(model.blocks()) == 15
    assert model.blocks()[0] is model.layer1[0] and model.blocks()[-1] is model.layer3[-1]
    # 6n+2 weighted layers: 6n 3x3 convs in the blocks, the stem conv, the fc.
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(convs) + len(linears) == 32


# --- shapes --------------------------------------------------------------------------------------


@pytest.mark.parametrize("residual", [True, False])
def test_output_and_stage_shapes(residual: bool) -> None:
    model = build_model(20, residual=residual)
    shapes = {}
    for name in ("layer1", "layer2", "layer3"):
        getattr(model, name).register_forward_hook(
            lambda _m, _i, out, name=name: shapes.__setitem__(name, tuple(out.shape))
        )
    out = model(torch.randn(4, 3, 32, 32))
    assert out.shape == (4, 10)
    assert shapes == {
        "layer1": (4, 16, 32, 32),
        "layer2": (4, 32, 16, 16),
        "layer3": (4, 64, 8, 8),
    }


@pytest.mark.parametrize("block", ["preact", "highway"])
@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_variants_build_and_run(block: str, shortcut: str) -> None:
    model = build_model(20, block=block, shortcut=shortcut, num_classes=7)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    kind = {"preact": PreActBlock, "highway": HighwayBlock}[block]
    assert all(isinstance(b, kind) for b in model.blocks())
    assert (model.final_bn is not None) == (block == "preact")


def test_plain_preact_builds_and_runs() -> None:
    model = build_model(14, residual=False, block="preact")
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert all(b.shortcut is None for b in model.blocks())


def test_highway_gate_starts_biased_to_carry() -> None:
    """Srivastava et al. 2015: a negative gate bias, so T(x) starts below 1/2."""
    block = HighwayBlock(16, 16)
    assert torch.all(block.gate.bias < 0)
    model = build_model(20, block="highway")
    assert all(torch.all(b.gate.bias < 0) for b in model.blocks())


# --- shortcuts -----------------------------------------------------------------------------------


def test_shortcut_a_is_parameter_free_zero_padding() -> None:
    sc = ShortcutA(16, 32, stride=2)
    assert count_parameters(sc) == 0 and len(sc.state_dict()) == 0
    x = torch.randn(3, 16, 32, 32)
    y = sc(x)
    assert y.shape == (3, 32, 16, 16)
    assert torch.equal(y[:, :16], x[:, :, ::2, ::2])
    assert torch.all(y[:, 16:] == 0)


def test_shortcuts_exist_only_where_shapes_change() -> None:
    model = build_model(20)
    kinds = [type(b.shortcut) for b in model.blocks()]
    assert kinds.count(ShortcutA) == 2
    assert kinds.count(nn.Identity) == 7
    assert isinstance(model.layer2[0].shortcut, ShortcutA)
    assert isinstance(model.layer3[0].shortcut, ShortcutA)
    assert all(b.shortcut is None for b in build_model(20, residual=False).blocks())


# --- blocks --------------------------------------------------------------------------------------


def test_zero_residual_block_is_the_identity() -> None:
    """sec. 3.1: if the optimal mapping is the identity, a residual block reaches it by pushing
    its residual to zero, here by a zero BN scale and shift on its last layer."""
    block = BasicBlock(16, 16)
    nn.init.zeros_(block.bn2.weight)
    nn.init.zeros_(block.bn2.bias)
    x = torch.rand(2, 16, 8, 8)  # nonnegative, like the output of the ReLU before it
    for mode in (True, False):
        block.train(mode)
        assert torch.equal(block(x), x)


def test_plain_and_residual_blocks_differ_only_by_the_addition() -> None:
    res, plain = BasicBlock(16, 16), BasicBlock(16, 16, residual=False)
    plain.load_state_dict(res.state_dict(), strict=True)
    res.eval()
    plain.eval()
    x = torch.rand(2, 16, 8, 8)
    # Recover the pre-ReLU residual f(x) from the plain block's hooks, then add x.
    pre_relu = {}
    plain.bn2.register_forward_hook(lambda _m, _i, out: pre_relu.__setitem__("f", out))
    assert torch.equal(plain(x), torch.relu(pre_relu["f"]))
    assert torch.allclose(res(x), torch.relu(pre_relu["f"] + x))


def test_lesioned_residual_block_returns_its_shortcut() -> None:
    """Veit et al. 2016: a lesioned block y = x + f(x) becomes y = x."""
    x = torch.randn(2, 16, 8, 8)
    for in_planes, planes, stride in ((16, 16, 1), (16, 32, 2)):
        block = BasicBlock(in_planes, planes, stride).eval()
        block.lesion()
        assert block.lesioned
        xi = x[:, :in_planes]
        assert torch.equal(block(xi), torch.relu(block.shortcut(xi)))
        block.lesion(False)
        assert not torch.equal(block(xi), torch.relu(block.shortcut(xi)))


def test_lesioned_plain_block_is_the_identity_where_shapes_match() -> None:
    block = BasicBlock(16, 16, residual=False)
    block.lesion()
    x = torch.randn(2, 16, 8, 8)
    assert torch.equal(block(x), x)
    with pytest.raises(ValueError, match="shapes"):
        BasicBlock(16, 32, stride=2, residual=False).lesion()


def test_lesioned_variants() -> None:
    x = torch.randn(2, 16, 8, 8)
    pre = PreActBlock(16, 32, stride=2)
    pre.lesion()
    assert torch.equal(pre(x), pre.shortcut(x))  # nothing after the addition
    hw = HighwayBlock(16, 16)
    hw.lesion()
    assert torch.equal(hw(x), torch.relu(x))


def test_lesion_inside_a_network_changes_the_output() -> None:
    model = build_model(20).eval()
    x = torch.randn(2, 3, 32, 32)
    before = model(x)
    model.blocks()[4].lesion()
    assert model(x).shape == before.shape
    assert not torch.allclose(model(x), before)


# --- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [0, 2, 19, 21, -4, "abc", True, 20.0, None])
def test_invalid_depths_are_refused(depth: object) -> None:
    with pytest.raises(ValueError, match=r"6n\+2"):
        check_depth(depth)
    with pytest.raises(ValueError, match=r"6n\+2"):
        build_model(depth)


def test_error_lists_valid_depths() -> None:
    with pytest.raises(ValueError, match="20, 32, 44, 56, 110, 1202"):
        check_depth(19)


@pytest.mark.parametrize("depth, n", [(8, 1), (20, 3), (56, 9), (110, 18), (1202, 200)])
def test_check_depth_returns_n(depth: int, n: int) -> None:
    assert check_depth(depth) == n


def test_build_model_reports_every_bad_argument_at_once() -> None:
    with pytest.raises(ValueError) as err:
        build_model(19, residual="yes", shortcut="C", block="dense", num_classes=0)
    msg = str(err.value)
    for part in ("6n+2", "residual", "A, B", "basic, preact, highway", "num_classes"):
        assert part in msg


def test_highway_needs_its_shortcut() -> None:
    with pytest.raises(ValueError, match="residual=True"):
        build_model(20, residual=False, block="highway")
    with pytest.raises(ValueError, match="residual=True"):
        HighwayBlock(16, 16, residual=False)


def test_cifar_resnet_validates_like_build_model() -> None:
    with pytest.raises(ValueError, match="shortcut"):
        CifarResNet(20, shortcut="a")


# --- bottleneck nets (He et al. 2016) ------------------------------------------------------------

# He et al. 2016 ("Identity Mappings in Deep Residual Networks", Table 2) give 1.7M and 10.2M
# parameters for ResNet-164 and ResNet-1001. Exact, with that paper's projection shortcuts (a bare
# 1x1 conv on the pre-activated input): 1,703,258 and 10,327,706, the counts osmr/imgclsmob lists
# for preresnet164bn_cifar10 and preresnet1001_cifar10. Option A (no parameters) has 42,144 fewer
# (the three projections: 16*64 + 64*128 + 128*256).
BOTTLENECK_PARAMS_B = {164: 1_703_258, 1001: 10_327_706}
PROJECTIONS = 16 * 64 + 64 * 128 + 128 * 256


def meta_model(*args, **kwargs) -> nn.Module:
    """A network on the meta device: its shapes and parameter counts, no memory, no init time."""
    with torch.device("meta"):
        return build_model(*args, **kwargs)


@pytest.mark.parametrize("depth", [164, pytest.param(1001, marks=pytest.mark.slow)])
def test_bottleneck_parameter_counts(depth: int) -> None:
    b = count_parameters(meta_model(depth, shortcut="B", block="bottleneck"))
    assert b == BOTTLENECK_PARAMS_B[depth]
    a = count_parameters(meta_model(depth, block="bottleneck"))
    assert a == BOTTLENECK_PARAMS_B[depth] - PROJECTIONS
    # The paper's rounded figures: 1.70M is exact to its digits; 10.33M is 1.3% above 10.2M.
    published = {164: 1.7e6, 1001: 10.2e6}[depth]
    assert abs(b - published) / published < 0.015


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_plain_bottleneck_twin(shortcut: str) -> None:
    """The same layers without any shortcut, also where the shape changes; with option A exactly
    the same tensors, with B the residual net has the projections more."""
    res = build_model(29, shortcut=shortcut, block="bottleneck").state_dict()
    plain_model = build_model(29, residual=False, shortcut=shortcut, block="bottleneck")
    plain = plain_model.state_dict()
    assert all(b.shortcut is None for b in plain_model.blocks())
    if shortcut == "A":
        assert {k: v.shape for k, v in plain.items()} == {k: v.shape for k, v in res.items()}
    else:
        extra = set(res) - set(plain)
        assert set(plain) < set(res) and all(".shortcut.conv." in k for k in extra)
        assert sum(res[k].numel() for k in extra) == PROJECTIONS


@pytest.mark.parametrize("residual", [True, False])
def test_bottleneck_structure_and_shapes(residual: bool) -> None:
    model = build_model(29, residual=residual, block="bottleneck", num_classes=100)
    assert (model.n, len(model.blocks())) == (3, 9)
    assert all(isinstance(b, PreActBottleneck) for b in model.blocks())
    # 9n+2 weighted layers: three convs a block, the stem, the fc (projections not counted).
    convs = [
        m for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and "shortcut" not in n
    ]
    assert len(convs) + 1 == 29
    shapes = {}
    for name in ("layer1", "layer2", "layer3"):
        getattr(model, name).register_forward_hook(
            lambda _m, _i, out, name=name: shapes.__setitem__(name, tuple(out.shape))
        )
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    assert shapes == {
        "layer1": (2, 64, 32, 32),
        "layer2": (2, 128, 16, 16),
        "layer3": (2, 256, 8, 8),
    }
    # The stem's BN-ReLU pre-activates the first unit (He et al. 2016, appendix); a last BN-ReLU
    # follows the last addition.
    assert model.layer1[0].bn1 is None and model.layer1[1].bn1 is not None
    assert model.final_bn is not None


def test_bottleneck_identity_shortcut_takes_the_raw_input() -> None:
    """A pre-activation unit with zero last conv is the identity (He et al. 2016, eq. 4)."""
    unit = PreActBottleneck(64, 16).eval()
    nn.init.zeros_(unit.conv3.weight)
    x = torch.randn(2, 64, 8, 8)
    assert torch.equal(unit(x), x)
    unit.lesion()
    assert torch.equal(unit(x), x)


def test_bottleneck_macs_of_the_twins_are_equal() -> None:
    res, plain = meta_model(56, block="bottleneck"), meta_model(56, False, block="bottleneck")
    assert macs_per_image(res) == macs_per_image(plain)


# --- the ImageNet family (He et al. 2015, Table 1) ----------------------------------------------


@pytest.mark.parametrize("depth", IMAGENET_DEPTHS)
def test_imagenet_family_equals_torchvision(depth: int) -> None:
    torchvision = pytest.importorskip("torchvision")
    with torch.device("meta"):
        tv = getattr(torchvision.models, f"resnet{depth}")()
    ours = meta_model(depth, shortcut="B", num_classes=1000, family="imagenet", stem="imagenet")
    assert count_parameters(ours) == count_parameters(tv)
    mapped = from_torchvision(tv.state_dict())
    assert {k: v.shape for k, v in mapped.items()} == {
        k: v.shape for k, v in ours.state_dict().items()
    }
    assert ours.block == IMAGENET_LAYOUTS[depth][0]


def test_torchvision_weights_round_trip() -> None:
    torchvision = pytest.importorskip("torchvision")
    tv = torchvision.models.resnet18().eval()
    ours = meta_model(18, shortcut="B", num_classes=1000, family="imagenet", stem="imagenet")
    ours.load_state_dict(from_torchvision(tv.state_dict()), strict=True, assign=True)
    ours.eval()
    x = torch.randn(2, 3, 64, 64)
    assert torch.allclose(ours(x), tv(x), atol=1e-5)
    with torch.device("meta"):
        back = torchvision.models.resnet18()
    back.load_state_dict(to_torchvision(ours.state_dict()), strict=True, assign=True)
    assert all(torch.equal(v, tv.state_dict()[k]) for k, v in back.state_dict().items())


@pytest.mark.parametrize("depth", [18, pytest.param(50, marks=pytest.mark.slow)])
def test_imagenet_family_cifar_stem_and_plain_twin(depth: int) -> None:
    res = build_model(depth, family="imagenet", num_classes=100)
    plain = build_model(depth, residual=False, family="imagenet", num_classes=100)
    assert res.maxpool is None and res.conv1.kernel_size == (3, 3)
    assert list(res.state_dict()) == list(plain.state_dict())  # option A: the same tensors
    assert count_parameters(res) == count_parameters(plain)
    assert res(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    assert [len(s) for s in res.stages()] == list(IMAGENET_LAYOUTS[depth][1])
    kind = Bottleneck if depth == 50 else BasicBlock
    assert all(isinstance(b, kind) for b in res.blocks())


def test_imagenet_stem_macs_match_the_published_resnet50() -> None:
    """ResNet-50 at 224x224: 3.8e9 FLOPs (multiply-adds) in He et al. 2015, Table 1, for the
    stride on the first 1x1; torchvision's stride on the 3x3 costs 4.09e9."""
    model = meta_model(50, shortcut="B", num_classes=1000, family="imagenet", stem="imagenet")
    assert macs_per_image(model, image_size=224) == pytest.approx(4.09e9, rel=0.01)


# --- Residual(layer) -----------------------------------------------------------------------------


def test_residual_wrapper_identity_where_the_shape_is_kept() -> None:
    layer = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16))
    wrapped = Residual(layer).eval()
    assert isinstance(wrapped.shortcut, nn.Identity)
    x = torch.randn(2, 16, 8, 8)
    assert torch.allclose(wrapped(x), layer(x) + x)
    assert torch.equal(Residual(layer, residual=False).eval()(x), layer(x))
    mlp = Residual(nn.Linear(8, 8))
    assert mlp(torch.randn(3, 8)).shape == (3, 8)


def test_residual_wrapper_pads_or_projects_where_the_shape_changes() -> None:
    layer = nn.Sequential(conv3x3(16, 32, stride=2), nn.BatchNorm2d(32))
    a = Residual(layer).eval()
    assert isinstance(a.shortcut, ShortcutA) and (a.in_shape, a.out_shape) == (
        (16, 32, 32),
        (32, 16, 16),
    )
    x = torch.randn(2, 16, 32, 32)
    assert torch.allclose(a(x), layer(x) + ShortcutA(16, 32, 2)(x))
    b = Residual(layer, shortcut="B")
    assert isinstance(b.shortcut, ShortcutB) and b.shortcut.conv.stride == (2, 2)
    # The plain twin: option A adds nothing; B's projection is the only difference.
    assert count_parameters(a) == count_parameters(Residual(layer, residual=False))
    assert count_parameters(b) - count_parameters(a) == 16 * 32 + 2 * 32
    # Shapes were found without touching the layer's BN statistics.
    assert torch.equal(layer[1].running_mean, torch.zeros(32))


@pytest.mark.parametrize(
    "layer, kwargs, shapes",
    [
        (nn.Conv2d(32, 16, 3, padding=1), {}, "(32, 32, 32) to (16, 32, 32)"),
        (nn.Linear(8, 4), {"shortcut": "B"}, "(8,) to (4,)"),
        (nn.Upsample(scale_factor=2), {"in_shape": (4, 8, 8)}, "(4, 8, 8) to (4, 16, 16)"),
    ],
)
def test_residual_wrapper_refuses_what_no_shortcut_fits(layer, kwargs, shapes) -> None:
    with pytest.raises(ValueError, match=re.escape(shapes)):
        Residual(layer, **kwargs)


def test_residual_wrapper_needs_an_input_shape_it_cannot_infer() -> None:
    with pytest.raises(ValueError, match="in_shape"):
        Residual(nn.ReLU())
    assert isinstance(Residual(nn.ReLU(), in_shape=(3, 4, 4)).shortcut, nn.Identity)


# --- validating a whole choice -------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, names",
    [
        ({"depth": 20}, None),
        ({"depth": 164, "block": "bottleneck"}, None),
        ({"depth": 50, "family": "imagenet"}, None),
        ({"depth": 50, "family": "imagenet", "block": "bottleneck", "stem": "imagenet"}, None),
        ({"depth": 56, "block": "bottleneck"}, None),  # 9n+2 with n=6
        ({"depth": 32, "block": "bottleneck"}, ["9n+2", "164, 1001"]),
        ({"depth": 110, "block": "bottleneck"}, None),
        ({"depth": 47, "family": "imagenet"}, ["18, 34, 50, 101, 152"]),
        ({"depth": 18, "family": "imagenet", "block": "bottleneck"}, ["basic"]),
        ({"depth": 50, "family": "imagenet", "block": "highway"}, ["bottleneck"]),
        ({"depth": 50, "family": "imagenet", "block": "preact"}, ["bottleneck"]),
        ({"depth": 20, "stem": "imagenet"}, ["family=imagenet"]),
        ({"depth": 20, "family": "vgg"}, ["cifar, imagenet"]),
        ({"depth": 20, "stem": "big"}, ["cifar, imagenet"]),
        ({"depth": 20, "block": "dense"}, ["basic, preact, highway, bottleneck"]),
        ({"depth": 164, "block": "bottleneck", "num_classes": 0}, ["num_classes"]),
    ],
)
def test_check_architecture(kwargs: dict, names: list[str] | None) -> None:
    if names is None:
        check_architecture(**kwargs)
        return
    with pytest.raises(ValueError) as err:
        check_architecture(**kwargs)
    assert all(n in str(err.value) for n in names)
    with pytest.raises(ValueError):
        meta_model(**kwargs)


def test_the_choices_are_exposed() -> None:
    assert BLOCKS == ("basic", "preact", "highway", "bottleneck")
    assert (FAMILIES, STEMS, SHORTCUTS) == (("cifar", "imagenet"),) * 2 + (("A", "B"),)
    assert IMAGENET_DEPTHS == (18, 34, 50, 101, 152)
