"""resexp evaluate: akamaster/pytorch_resnet_cifar10's weights imported exactly, wrong weights
refused with exit status 2, runs and studies evaluated end to end on generated images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from typer.testing import CliRunner

from resexp.cli import app, compose
from resexp.evaluate import (
    AKAMASTER_STD,
    akamaster_keys,
    from_akamaster,
    stream_orders,
    weights_from_file,
)
from resexp.models import CifarResNet
from resexp.train import fit

# Two tiny networks on generated images: ResNet-8 and its plain twin, 20 iterations each.
TINY = ["depth=8", "data=synthetic", "data.train_size=256", "data.test_size=128",
        "schedule=smoke", "schedule.iterations=20", "device=cpu", "progress=none",
        "compile=false"]  # fmt: skip


# ----------------------------------------------------------------------------------------------
# akamaster/pytorch_resnet_cifar10's ResNet, rebuilt from its resnet.py as published


class TheirBasicBlock(nn.Module):
    """Their BasicBlock, option A: two 3x3 conv-BN, and a shortcut that subsamples by 2 and pads
    planes // 4 zero channels on each side: F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, p, p))."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.pad = planes // 4 if stride != 1 or in_planes != planes else None

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad is None:
            return x
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad), "constant", 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return F.relu(out)


class TheirResNet(nn.Module):
    """Their ResNet: conv1, bn1, layer1..3 of n blocks (16, 32, 64 planes), avg pool, linear."""

    def __init__(self, n: int, num_classes: int = 10) -> None:
        super().__init__()
        self.in_planes = 16
        self.conv1 = nn.Conv2d(3, 16, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._make_layer(16, n, stride=1)
        self.layer2 = self._make_layer(32, n, stride=2)
        self.layer3 = self._make_layer(64, n, stride=2)
        self.linear = nn.Linear(64, num_classes)

    def _make_layer(self, planes: int, n: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(TheirBasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.avg_pool2d(out, out.size()[3])
        return self.linear(out.view(out.size(0), -1))


def their_resnet20(seed: int = 0) -> TheirResNet:
    """ResNet-20 (n=3) with every parameter and BN statistic random, so that any channel put in
    the wrong place changes the logits."""
    torch.manual_seed(seed)
    net = TheirResNet(3)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if name.endswith("running_var"):
                t.uniform_(0.5, 2.0)
            elif name.endswith(("running_mean", "bias")):
                t.normal_(0, 0.2)
            elif name.endswith("bn1.weight") or name.endswith("bn2.weight"):
                t.uniform_(0.5, 1.5)
    return net.eval()


def save_their_checkpoint(net: nn.Module, path: Path, **extra) -> Path:
    """As their trainer.py saves it: a DataParallel model's state_dict, plus best_prec1."""
    state = {f"module.{k}": v for k, v in net.state_dict().items()}
    torch.save({"state_dict": state, "best_prec1": 91.73, **extra}, path)
    return path


@pytest.fixture
def their_file(tmp_path) -> tuple[TheirResNet, Path]:
    net = their_resnet20()
    return net, save_their_checkpoint(net, tmp_path / "resnet20.th")


def test_stream_orders_follow_their_padding():
    stage1, stage2, stage3 = stream_orders()
    assert stage1.tolist() == list(range(16))
    # Stage 1's channels sit after 32 // 4 = 8 zeros in their stage 2; resexp's come first.
    assert stage2.tolist() == [*range(8, 24), *range(0, 8), *range(24, 32)]
    # Stage 2's channels (in resexp's order) sit after 64 // 4 = 16 zeros in their stage 3.
    assert stage3[:32].tolist() == (16 + stage2).tolist()
    assert sorted(stage3.tolist()) == list(range(64))


def test_their_weights_compute_exactly_their_logits(their_file):
    net, path = their_file
    weights = weights_from_file(path, {})
    assert weights.kind == "akamaster"
    assert isinstance(weights.model, CifarResNet) and weights.model.shortcut == "A"
    assert weights.arch["depth"] == 20 and weights.arch["params"] == 269_722  # Table 6: 0.27M
    x = torch.randn(16, 3, 32, 32)
    with torch.no_grad():
        theirs, ours = net(x), weights.model(x)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    assert weights.reference["test_error_from_best_prec1"] == pytest.approx(8.27)
    assert weights.reference["published_test_error"] == 8.27


def test_renaming_alone_would_not_do(their_file):
    """Without the channel permutation, the same numbers compute other logits: the padding
    conventions really differ."""
    net, _ = their_file
    renamed = {k.replace("linear.", "fc."): v for k, v in net.state_dict().items()}
    model = CifarResNet(20).eval()
    model.load_state_dict(renamed)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(model(x), net(x), atol=1e-3)


def test_a_bare_state_dict_and_their_later_names_load_too(tmp_path):
    net = their_resnet20(seed=1)
    later = {k.replace("conv", "compressible_conv").replace("linear", "compressible_linear"): v
             for k, v in net.state_dict().items()}  # fmt: skip
    assert set(akamaster_keys(later)) == set(net.state_dict())
    torch.save(later, tmp_path / "bare.pt")
    model = weights_from_file(tmp_path / "bare.pt", {}).model
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), net(x), atol=1e-5, rtol=0)


def test_files_without_bn_step_counters_in_the_old_format_load(tmp_path):
    """Their files date from PyTorch 0.4: the pre-1.6 serialization, and (before 0.4.1) no
    num_batches_tracked."""
    net = their_resnet20()
    state = {k: v for k, v in net.state_dict().items() if "num_batches_tracked" not in k}
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "old.th",
               _use_new_zipfile_serialization=False)  # fmt: skip
    model = weights_from_file(tmp_path / "old.th", {}).model
    with torch.no_grad():
        x = torch.randn(2, 3, 32, 32)
        torch.testing.assert_close(model(x), net(x), atol=1e-5, rtol=0)


def test_from_akamaster_keeps_every_tensor():
    state = akamaster_keys({f"module.{k}": v for k, v in their_resnet20().state_dict().items()})
    mapped = from_akamaster(state)
    assert set(mapped) == set(CifarResNet(20).state_dict())


# ----------------------------------------------------------------------------------------------
# The command: runs, studies, files


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """A study of ResNet-8 and plain-8, trained for 20 iterations on generated images."""
    root = tmp_path_factory.mktemp("evaluate")
    for residual in ("true", "false"):
        fit(compose([f"output_root={root / 'outputs'}", f"data_dir={root / 'data'}", *TINY,
                     f"residual={residual}", "name=tiny"]))  # fmt: skip
    return root / "outputs" / "tiny"


def evaluate(*args: str, root: Path):
    where = [f"output_root={root / 'outputs'}", f"data_dir={root / 'data'}", "device=cpu"]
    return CliRunner().invoke(app, ["evaluate", *args, *where])


def test_a_run_is_evaluated_on_its_own_data_as_training_did(study):
    run = study / "resnet-8" / "seed0"
    result = evaluate(str(run), root=study.parent.parent)
    assert result.exit_code == 0, result.output
    out = json.loads((run / "evaluation" / "evaluation.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    # The same images, normalisation and fp32 logits as the run's last evaluation.
    assert out["test_error"] == pytest.approx(summary["test_error"], abs=1e-9)
    assert out["test_loss"] == pytest.approx(summary["test_loss"], rel=1e-5)
    assert out["reference"]["test_error"] == summary["test_error"]
    arch = {"kind": "resexp", "depth": 8, "residual": True, "shortcut": "A", "block": "basic"}
    assert out["weights"].items() >= {**arch, "iteration": 20}.items()
    assert out["data"]["split"] == "test" and out["data"]["images"] == 128
    assert out["data"]["identity"]["source"] == "synthetic"
    assert out["normalization"]["kind"] == "pixel_mean"
    assert out["precision"] == "fp32" and out["device"] == "cpu"
    matrix = torch.tensor(out["confusion"]["matrix"])
    assert matrix.shape == (10, 10) and matrix.sum() == 128
    assert 100 * (1 - matrix.trace() / 128) == pytest.approx(out["test_error"])
    assert [r["class"] for r in out["per_class"]] == [f"class{c}" for c in range(10)]
    for row, counts in zip(out["per_class"], matrix.tolist(), strict=True):
        assert row["images"] == sum(counts)
    assert (run / "evaluation" / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "error %" in result.output and "pixel" in result.output


def test_a_study_is_evaluated_run_by_run_with_a_summary(study):
    result = evaluate(str(study), root=study.parent.parent)
    assert result.exit_code == 0, result.output
    summary = json.loads((study / "evaluation" / "evaluation.json").read_text())
    assert sorted(r["label"] for r in summary["runs"]) == ["plain-8/seed0", "resnet-8/seed0"]
    for r in summary["runs"]:
        assert Path(r["evaluation"]).is_file()
        assert r["test_error"] == pytest.approx(r["recorded_test_error"], abs=1e-9)
    assert (study / "plain-8" / "seed0" / "evaluation" / "confusion.png").is_file()


def test_architecture_overrides_choose_runs_of_a_study(study, tmp_path):
    result = evaluate(
        str(study), "residual=false", "--out", str(tmp_path), root=study.parent.parent
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "evaluation.json").read_text())
    assert [r["label"] for r in summary["runs"]] == ["plain-8/seed0"]
    assert (tmp_path / "plain-8" / "seed0" / "evaluation.json").is_file()


def test_their_weights_are_evaluated_with_their_normalisation(their_file, study, tmp_path):
    _, path = their_file
    result = evaluate(str(path), "data=synthetic", "data.test_size=64", root=study.parent.parent)
    assert result.exit_code == 0, result.output
    out = json.loads((path.parent / "resnet20-evaluation" / "evaluation.json").read_text())
    assert out["weights"]["kind"] == "akamaster" and out["weights"]["depth"] == 20
    assert out["normalization"]["kind"] == "channel_fixed"
    assert out["normalization"]["std"] == list(AKAMASTER_STD)
    assert out["data"]["images"] == 64
    assert out["reference"]["published_test_error"] == 8.27
    assert any("not the original CIFAR-10" in note for note in out["notes"])
    assert "0.229" in result.output  # the normalisation is stated on the terminal too
    moved = evaluate(str(path), "data=synthetic", "--out", str(tmp_path / "x"),
                     root=study.parent.parent)  # fmt: skip
    assert moved.exit_code == 0 and (tmp_path / "x" / "confusion.png").is_file()


# ----------------------------------------------------------------------------------------------
# Refusals: a short message, exit status 2, nothing loaded


def their_option_b_file(tmp_path: Path) -> Path:
    state = {f"module.{k}": v for k, v in their_resnet20().state_dict().items()}
    state["module.layer2.0.shortcut.0.weight"] = torch.zeros(32, 16, 1, 1)
    torch.save({"state_dict": state}, tmp_path / "optionb.th")
    return tmp_path / "optionb.th"


def not_a_checkpoint(tmp_path: Path) -> Path:
    (tmp_path / "notes.pt").write_text("these are not weights\n")
    return tmp_path / "notes.pt"


def some_other_dict(tmp_path: Path) -> Path:
    torch.save({"epoch": 3, "weights": [1, 2, 3]}, tmp_path / "other.pt")
    return tmp_path / "other.pt"


def pickled_objects(tmp_path: Path) -> Path:
    torch.save({"state_dict": {}, "where": Path("/somewhere")}, tmp_path / "objects.pt")
    return tmp_path / "objects.pt"


def their_resnet20_without(tmp_path: Path, part: str) -> Path:
    state = {k: v for k, v in their_resnet20().state_dict().items() if not k.startswith(part)}
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "cut.th")
    return tmp_path / "cut.th"


@pytest.mark.parametrize(
    "what,overrides,message",
    [
        ("theirs", ["depth=56"], "has depth=20, not depth=56"),
        ("theirs", ["shortcut=B"], "has shortcut=A, not shortcut=B"),
        ("theirs", ["block=preact"], "has block=basic, not block=preact"),
        ("theirs", ["residual=false"], "holds residual weights"),
        ("run", ["residual=false"], "holds residual weights, not plain ones"),
        ("run", ["depth=20"], "has depth=8, not depth=20"),
        ("run", ["block=preact"], "has block=basic, not block=preact"),
        ("checkpoint", ["residual=false"], "holds residual weights, not plain ones"),
        ("plain", ["residual=true"], "holds plain weights, not residual ones"),
        ("option_b", [], "has option B shortcuts"),
        ("not_a_checkpoint", [], "is not a PyTorch checkpoint"),
        ("other_dict", [], "is not a checkpoint resexp can read"),
        ("missing", [], "does not exist"),
        ("objects", [], "holds Python objects other than tensors and numbers (pathlib"),
        ("uneven", [], "has 3, 3 and 2"),
        ("no_stem_bn", [], "does not hold a ResNet-20 as their resnet.py builds it: missing: bn1"),
        ("theirs", ["--depth", "56"], "`resexp train depth=VALUE`"),
    ],
)
def test_wrong_weights_are_refused_with_exit_2(
    what, overrides, message, their_file, study, tmp_path
):
    path = {
        "theirs": lambda: their_file[1],
        "run": lambda: study / "resnet-8" / "seed0",
        "checkpoint": lambda: study / "resnet-8" / "seed0" / "checkpoint.pt",
        "plain": lambda: study / "plain-8" / "seed0",
        "option_b": lambda: their_option_b_file(tmp_path),
        "not_a_checkpoint": lambda: not_a_checkpoint(tmp_path),
        "other_dict": lambda: some_other_dict(tmp_path),
        "missing": lambda: tmp_path / "nothing.th",
        "objects": lambda: pickled_objects(tmp_path),
        "uneven": lambda: their_resnet20_without(tmp_path, "layer3.2."),
        "no_stem_bn": lambda: their_resnet20_without(tmp_path, "bn1."),
    }[what]()
    out = tmp_path / "out"
    result = evaluate(str(path), *overrides, "--out", str(out), root=study.parent.parent)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output
    assert not out.exists()  # refused before anything is written
