"""The networks of He et al. 2015, sec. 4.2: Table 6 sizes; plain = residual minus the additions."""

import pytest
import torch
import torch.nn as nn

from resexp.models import (
    BasicBlock,
    CifarResNet,
    HighwayBlock,
    PreActBlock,
    ShortcutA,
    ShortcutB,
    build_model,
    check_depth,
    count_parameters,
    macs_per_image,
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
