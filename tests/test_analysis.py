"""resexp.analysis: known answers on tiny nets, and every analysis end to end on a tiny study."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from resexp.analysis import (
    ANALYSES,
    COMMON_OPTIONS,
    OPTIONS,
    analyze,
    describe,
    help_text,
    parse_options,
)
from resexp.analysis.common import batches, find_runs
from resexp.analysis.gradients import conv_gradient_norms
from resexp.analysis.landscape import (
    filter_normalized_direction,
    loss_surface,
    nonconvex_fraction_1d,
    nonconvex_fraction_2d,
)
from resexp.analysis.lesion import can_lesion, lesioned, single_lesion_errors
from resexp.analysis.responses import layer_response_stds, response_modules
from resexp.analysis.shattering import ScalarNet, autocorrelation, input_gradients
from resexp.errors import ResexpError
from resexp.models import build_model
from resexp.tracking import log_gradient_stats
from resexp.train import error_and_loss

# Small settings for each analysis, so the whole file runs in well under a minute on 2 CPU cores.
FAST = {
    "responses": {"images": 128},
    "gradients": {"grad_images": 32},
    "lesion": {"images": 128, "draws": 2},
    "landscape": {"train_images": 64, "steps_1d": 5, "steps_2d": 3},
    "shattering": {"depths": "1,4", "nets": 2, "points": 64, "max_lag": 8, "image_pairs": 1},
}


@pytest.fixture(scope="session")
def study(tmp_path_factory) -> Path:
    """A tiny trained study: plain-8 and resnet-8 on generated images, two checkpoints each."""
    from resexp.cli import compose
    from resexp.train import fit

    tmp = tmp_path_factory.mktemp("study")
    for residual in ("false", "true"):
        fit(
            compose(
                [
                    f"output_root={tmp}",
                    f"data_dir={tmp}/data",
                    "data=synthetic",
                    "data.train_size=128",
                    "data.test_size=128",
                    "schedule=smoke",
                    "schedule.iterations=4",
                    "schedule.eval_every=2",
                    "device=cpu",
                    "progress=none",
                    "name=s",
                    "depth=8",
                    f"residual={residual}",
                ]
            )
        )
    return tmp / "s"


def zero_branch_resnet(depth: int = 14) -> nn.Module:
    """A ResNet whose residual branches output exactly zero (bn2 weight and bias zeroed)."""
    torch.manual_seed(0)
    model = build_model(depth, residual=True)
    with torch.no_grad():
        for block in model.blocks():
            block.bn2.weight.zero_()
            block.bn2.bias.zero_()
    return model.eval()


# ----------------------------------------------------------------------------------------------
# Lesions


def test_lesions_leave_a_zero_branch_resnet_unchanged():
    model = zero_branch_resnet()
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    with torch.no_grad():
        reference = model(x)
        for i in range(len(model.blocks())):
            with lesioned(model, [i]):
                assert torch.equal(model(x), reference)
        with lesioned(model, list(range(len(model.blocks())))):
            assert torch.equal(model(x), reference)
    base = error_and_loss(model, batches(x, y, 8))[0]
    assert single_lesion_errors(model, x, y, 8) == [base] * len(model.blocks())
    assert not any(b.lesioned for b in model.blocks())  # restored


def test_plain_nets_can_lose_only_same_shape_blocks():
    plain = build_model(14, residual=False)
    # n = 2: stages 2 and 3 start with a downsampling block (blocks 3 and 5, 1-based)
    assert can_lesion(plain) == [True, True, False, True, False, True]
    assert all(can_lesion(build_model(14, residual=True)))
    errors = single_lesion_errors(plain.eval(), torch.randn(8, 3, 32, 32), torch.zeros(8).long(), 8)
    assert math.isnan(errors[2]) and math.isnan(errors[4]) and not math.isnan(errors[0])


# ----------------------------------------------------------------------------------------------
# Responses (He et al. 2015, Fig. 7)


def test_hooked_response_stds_match_a_manual_computation():
    model = zero_branch_resnet(8)
    with torch.no_grad():
        model.bn1.running_var.fill_(4.0)  # eval-mode BN must be what is measured
    x = torch.randn(24, 3, 32, 32)
    outputs: dict[str, list[torch.Tensor]] = {}
    handles = [
        m.register_forward_hook(lambda _m, _i, o, n=n: outputs.setdefault(n, []).append(o))
        for n, m in response_modules(model)
    ]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    stds = layer_response_stds(model, x, batch_size=5)  # uneven batches: accumulation must be exact
    names = ["bn1"] + [f"layer{s}.0.bn{k}" for s in (1, 2, 3) for k in (1, 2)]
    assert [n for n, _ in stds] == names
    for name, std in stds:
        manual = torch.cat(outputs[name]).double().std().item()
        assert std == pytest.approx(manual, rel=1e-6, abs=1e-9)
        if name.endswith("bn2"):
            assert std == 0.0  # the zeroed residual branches respond with exactly nothing


# ----------------------------------------------------------------------------------------------
# Gradients


def test_one_gradient_norm_per_conv_layer_and_the_model_is_untouched():
    torch.manual_seed(0)
    model = build_model(8, residual=False)
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    norms = conv_gradient_norms(model, x, y)
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert [n for n, _ in norms] == convs and len(convs) == 7  # 6n + 1 convs, the fc aside
    assert all(math.isfinite(v) and v > 0 for _, v in norms)
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert len(conv_gradient_norms(build_model(8, shortcut="B"), x, y)) == 9  # 2 projections


def test_log_gradient_stats_writes_scalars_and_histograms(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    model = build_model(8)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    nn.functional.cross_entropy(model(x), y).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    writer = SummaryWriter(str(tmp_path))
    log_gradient_stats(writer, model, step=3)
    writer.close()
    assert all(torch.equal(grads[n], p.grad) for n, p in model.named_parameters())
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert "grad_norm/conv1" in scalars and "grad_norm/fc" in scalars
    assert len(scalars) == 8  # 7 convs and the fc
    expected = model.layer1[0].conv2.weight.grad.norm().item()
    assert events.Scalars("grad_norm/layer1.0.conv2")[0].value == pytest.approx(expected, rel=1e-5)
    assert "weights/conv1" in events.Tags()["histograms"]


@pytest.mark.parametrize("block", ["preact", "highway"])
def test_block_variants_can_be_measured(block):
    torch.manual_seed(0)
    model = build_model(8, block=block).eval()
    x, y = torch.randn(4, 3, 32, 32), torch.zeros(4, dtype=torch.long)
    assert len(layer_response_stds(model, x, batch_size=4)) == 7  # stem + 2 per block
    gates = 3 if block == "highway" else 0  # a highway block's gate is a 1x1 conv
    assert len(conv_gradient_norms(model, x, y)) == 7 + gates
    assert all(can_lesion(model))
    assert len(single_lesion_errors(model, x, y, batch_size=4)) == 3


# ----------------------------------------------------------------------------------------------
# Landscape (Li et al. 2018)


def test_filter_normalized_direction():
    model = build_model(8)
    direction = filter_normalized_direction(model, torch.Generator().manual_seed(0))
    for (name, p), d in zip(model.named_parameters(), direction, strict=True):
        assert d.shape == p.shape
        if p.dim() <= 1:  # BN weights and biases, the fc bias
            assert not d.any(), name
        else:
            assert torch.allclose(d.flatten(1).norm(dim=1), p.flatten(1).norm(dim=1), rtol=1e-5)
    again = filter_normalized_direction(model, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(direction, again, strict=True))


def test_landscape_at_zero_is_the_models_loss_and_weights_are_restored():
    torch.manual_seed(0)
    model = build_model(8).eval()
    x, y = torch.randn(20, 3, 32, 32), torch.randint(0, 10, (20,))
    before = [p.clone() for p in model.parameters()]
    d = filter_normalized_direction(model, torch.Generator().manual_seed(1))
    coords = torch.tensor([[0.0], [1.0], [0.0]])
    losses, errors = loss_surface(model, [d], coords, x, y, batch_size=8)
    error, loss = error_and_loss(model, batches(x, y, 20))
    assert losses[0].item() == pytest.approx(loss, rel=1e-5)
    assert errors[0].item() == pytest.approx(error)
    assert losses[2] == losses[0] and losses[1] != losses[0]
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_nonconvexity_of_known_surfaces():
    t = torch.linspace(-1, 1, 11)
    bowl = t[:, None] ** 2 + t[None, :] ** 2
    saddle = t[:, None] ** 2 - t[None, :] ** 2
    assert nonconvex_fraction_2d(bowl) == 0.0
    assert nonconvex_fraction_2d(saddle) == 1.0
    assert nonconvex_fraction_1d(t**2) == 0.0
    assert nonconvex_fraction_1d(-(t**2)) == 1.0


# ----------------------------------------------------------------------------------------------
# Shattered gradients (Balduzzi et al. 2017)


def test_autocorrelation_matches_numpy():
    g = torch.randn(100, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    c = g.numpy() - g.numpy().mean()
    expected = np.correlate(c, c, "full")[len(c) - 1 :] / np.dot(c, c)
    assert torch.allclose(autocorrelation(g), torch.from_numpy(expected), atol=1e-12)
    assert autocorrelation(g, max_lag=5).shape == (6,)
    assert torch.isnan(autocorrelation(torch.ones(10))).all()


def test_single_relu_unit_gradient_has_the_analytic_autocorrelation():
    # f(x) = relu(x): dy/dx is a step at 0, i.e. 0 on the first half of 256 points in [-2, 2]
    # and 1 on the second. Centred: -1/2, +1/2; at lag k, k pairs straddle the step, so
    # r(k) = ((n - k) - 2k) / n = 1 - 3k / n.
    net = nn.Sequential(nn.Linear(1, 1), nn.ReLU(), nn.Linear(1, 1))
    with torch.no_grad():
        for layer in (net[0], net[2]):
            layer.weight.fill_(1.0)
            layer.bias.zero_()
    n = 256
    g = input_gradients(net, torch.linspace(-2, 2, n)[:, None])
    assert torch.equal(g, (torch.arange(n) >= n // 2).float())
    r = autocorrelation(g, max_lag=64)
    assert torch.allclose(r, 1 - 3 * torch.arange(65).double() / n, atol=1e-12)


def test_scalar_net_gradients_match_finite_differences():
    torch.manual_seed(0)
    x = torch.linspace(-2, 2, 64)[:, None].double()
    for residual in (False, True):
        net = ScalarNet(3, width=16, residual=residual).double()
        g = input_gradients(net, x)  # also leaves BN in eval mode with x's statistics
        h = 1e-6
        with torch.no_grad():
            fd = (net(x + h) - net(x - h)).flatten() / (2 * h)
        assert torch.allclose(g, fd, atol=1e-5)
        assert len(net.hidden) == 2  # the twins match: depth 3 = the input layer + 2


# ----------------------------------------------------------------------------------------------
# The entry point


def test_unknown_analysis_name(tmp_path):
    with pytest.raises(ResexpError, match=r"unknown analysis 'nope'.*responses"):
        analyze("nope", tmp_path)


def test_target_without_runs(tmp_path):
    with pytest.raises(ResexpError, match="no completed runs"):
        analyze("responses", tmp_path)
    with pytest.raises(ResexpError, match="does not exist"):
        analyze("lesion", tmp_path / "missing")


def test_bad_options(study, tmp_path):
    with pytest.raises(ResexpError, match="unknown option steps for analysis lesion"):
        analyze("lesion", study, out_dir=tmp_path, steps=3)
    with pytest.raises(ResexpError, match="draws='many'"):
        analyze("lesion", study, out_dir=tmp_path, draws="many")
    assert parse_options(["steps_1d=5", "--all-seeds=true"]) == {
        "steps_1d": "5",
        "all_seeds": "true",
    }
    with pytest.raises(ResexpError, match="option=value"):
        parse_options(["steps_1d"])


def test_options_are_refused_as_train_refuses_keys_before_anything_is_written(tmp_path):
    with pytest.raises(ResexpError, match=r"unknown option drws for analysis lesion: did you mean"):
        analyze("lesion", tmp_path, drws=3)
    with pytest.raises(ResexpError, match="precision is a key of resexp train that analyses do"):
        analyze("responses", tmp_path, precision="bf16")
    assert not any(tmp_path.iterdir())


def test_data_keys_change_each_runs_data_as_for_evaluate(study, tmp_path):
    from functools import partial

    from resexp.cli import check_config
    from resexp.config import data_for_run

    cfg = check_config(["data.test_size=64"])
    data = partial(data_for_run, cfg=cfg, keys=["data.test_size"])
    analyze("responses", study, out_dir=tmp_path, images=0, data=data, progress="none")
    own = json.loads((tmp_path / "responses.json").read_text())["samples"]
    assert [s["images"] for s in own] == [64]  # the runs' own synthetic data, 64 test images


def test_an_analysis_leaves_the_callers_thread_count_as_it_was(study, tmp_path):
    before = torch.get_num_threads()
    analyze("responses", study, out_dir=tmp_path, images=64, threads=1, progress="none")
    assert torch.get_num_threads() == before


def test_describe_lists_every_analysis_with_its_options():
    entries = {e["name"]: e for e in describe()}
    assert set(entries) == set(ANALYSES) == set(OPTIONS)
    assert {o["name"] for o in entries["landscape"]["options"]} >= {"steps_1d", "steps_2d"}
    assert not entries["shattering"]["needs_runs"] and entries["lesion"]["needs_runs"]
    assert "steps_1d=21" in help_text()


def test_analyze_chooses_its_device_as_train_does():
    from resexp.config import Config

    assert COMMON_OPTIONS["device"][0] == Config.device == "auto"


def test_find_runs_in_a_study_and_in_a_run(study):
    runs = find_runs(study)
    assert [r.arch for r in runs] == ["plain-8", "resnet-8"]
    assert [r.path for r in find_runs(runs[1].path)] == [runs[1].path]
    assert [it for it, _ in runs[0].dir.checkpoints()] == [2, 4]


@pytest.mark.parametrize("name", list(ANALYSES))
def test_each_analysis_writes_png_numbers_and_tensorboard(name, study, tmp_path):
    import matplotlib.image

    out_dir = tmp_path / name
    written = analyze(name, study, out_dir=out_dir, batch_size=64, progress="lines", **FAST[name])
    assert written and all(p.exists() and p.is_relative_to(out_dir) for p in written)
    pngs = [p for p in written if p.suffix == ".png"]
    assert pngs
    for png in pngs:
        image = matplotlib.image.imread(png)
        assert image.ndim == 3 and min(image.shape[:2]) > 100
    (table,) = [p for p in written if p.suffix == ".csv"]
    with open(table) as f:
        assert len(list(csv.DictReader(f))) > 0
    (numbers,) = [p for p in written if p.suffix == ".json"]
    result = json.loads(numbers.read_text())
    assert result["checks"]
    for check in result["checks"]:
        assert {"expected", "measured", "agrees"} <= set(check)
    (events,) = [p for p in written if p.name.startswith("events.out.tfevents")]
    assert events.parent == out_dir / "tensorboard"
    accumulator = EventAccumulator(str(events.parent), size_guidance={"images": 0})
    accumulator.Reload()
    assert len(accumulator.Tags()["images"]) == len(pngs)


def test_default_out_dir_and_a_rerun_replaces_the_tensorboard_file(study):
    first = analyze("responses", study, images=64)
    second = analyze("responses", study, images=64)
    out_dir = study / "analysis" / "responses"
    assert all(p.is_relative_to(out_dir) for p in first + second)
    assert len(list((out_dir / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert len(find_runs(study)) == 2  # the analysis folder holds no runs


def test_shattering_needs_no_trained_runs(tmp_path):
    written = analyze("shattering", tmp_path / "nowhere", **FAST["shattering"])
    result = json.loads((tmp_path / "nowhere/analysis/shattering/shattering.json").read_text())
    assert result["cifar"] == {} and set(result["lag1"]) == {"plain", "resnet"}
    assert any(p.suffix == ".png" for p in written)


# ----------------------------------------------------------------------------------------------
# Fair samples: an image folder is read class by class (issue: "the first N" saw two classes)


@pytest.fixture(scope="session")
def sorted_folder_study(tmp_path_factory) -> tuple[Path, float]:
    """ResNet-8 trained on a class-sorted image folder (10 classes, written as PNG files, read
    back class by class as every image folder is); returns the study and its whole-test-set
    error."""
    from PIL import Image

    from resexp.cli import compose
    from resexp.data import load_data
    from resexp.train import fit

    tmp = tmp_path_factory.mktemp("sorted")
    sizes = ["data.train_size=600", "data.test_size=400"]
    generated = load_data(compose([f"data_dir={tmp}/data", "data=synthetic", *sizes]).data)
    for split, xs, ys in (("train", generated.train_x, generated.train_y),
                          ("test", generated.test_x, generated.test_y)):  # fmt: skip
        for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
            folder = tmp / "folder" / split / f"class{int(y)}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(x.permute(1, 2, 0).numpy()).save(folder / f"{i:05d}.png")
    cfg = compose([f"output_root={tmp}", f"data_dir={tmp}/data", "data=folder",
                   f"data.root={tmp / 'folder'}", "schedule=smoke", "device=cpu",
                   "progress=none", "name=s", "depth=8"])  # fmt: skip
    summary = fit(cfg)
    return tmp / "s", summary["test_error"]


def test_samples_are_seeded_balanced_and_the_same_for_every_call():
    from resexp.analysis.common import balanced_sample

    y = torch.arange(10).repeat_interleave(100)  # sorted by class, as an image folder is read
    index = balanced_sample(y, 205)
    assert torch.bincount(y[index], minlength=10).tolist().count(20) == 5  # 20 or 21 each
    assert set(torch.bincount(y[index], minlength=10).tolist()) == {20, 21}
    assert torch.equal(index, balanced_sample(y, 205))  # seeded: every network sees the same
    assert len(set(y[index[:20]].tolist())) > 5  # shuffled: consecutive images mix classes
    assert sorted(balanced_sample(y, 0).tolist()) == list(range(1000))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ANALYSES))
def test_analyses_of_a_class_sorted_folder_look_at_every_class(name, sorted_folder_study, tmp_path):
    study, _ = sorted_folder_study
    fast = {**FAST[name], **({"images": 100} if name in ("responses", "lesion") else {})}
    if name == "gradients":
        fast["grad_images"] = 40
    if name == "landscape":
        fast["train_images"] = 60
    analyze(name, study, out_dir=tmp_path, batch_size=100, progress="none", **fast)
    (numbers,) = tmp_path.glob("*.json")
    samples = json.loads(numbers.read_text())["samples"]
    assert samples, "the analysis must say which images it looked at"
    for sample in samples:
        counts = sample["per_class"]
        assert len(counts) == 10 and max(counts) - min(counts) <= 1, sample  # every class
        assert sample["seed"] == 0 and sample["images"] == sum(counts)


@pytest.mark.slow
def test_lesion_error_of_the_intact_net_matches_its_whole_test_set_error(
    sorted_folder_study, tmp_path
):
    study, whole_test_error = sorted_folder_study
    analyze("lesion", study, out_dir=tmp_path, images=200, draws=1, progress="none")
    result = json.loads((tmp_path / "lesion.json").read_text())
    (run,) = result["runs"].values()
    assert abs(run["baseline_error"] - whole_test_error) < 8.0  # 200 of 400 images, balanced


def test_unfinished_runs_are_left_out_unless_asked_and_then_named(study, tmp_path):
    summary_path = next(study.glob("resnet-8/seed0")) / "summary.json"
    saved = summary_path.read_text()
    summary = json.loads(saved)
    summary_path.write_text(json.dumps({**summary, "status": "interrupted", "iterations": 2}))
    try:
        assert [r.arch for r in find_runs(study)] == ["plain-8"]
        analyze("responses", study, out_dir=tmp_path, images=32, unfinished="true",
                progress="none")  # fmt: skip
        result = json.loads((tmp_path / "responses.json").read_text())
        analysed = {r["run"]: r for r in result["analysed_runs"]}
        assert analysed["resnet-8/seed0 (interrupted at iteration 2)"]["iteration"] == 2
        for check in result["checks"]:
            assert (
                "not completed: resnet-8/seed0 (interrupted at iteration 2)" in (check["measured"])
            )
            assert check["iterations"]["plain-8/seed0"] == 4
    finally:
        summary_path.write_text(saved)


@pytest.mark.parametrize("depth", [1, 2, 5])
def test_scalar_twins_match_layer_for_layer(depth):
    plain, residual = ScalarNet(depth, 16, False), ScalarNet(depth, 16, True)
    shapes = [p.shape for p in plain.parameters()]
    assert shapes == [p.shape for p in residual.parameters()]  # same layers, same parameters
    linears = [m for m in plain.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == depth + 1  # depth hidden layers, then the output
    assert len(plain.norms) == len(residual.norms) == depth


def test_response_stds_need_no_float64_on_the_device(monkeypatch):
    # MPS has no float64: there each batch's sums are float32 and their total float64 on the host.
    # Simulated on the CPU by naming another device as the host: the same stds, to float32's
    # precision, as accumulating in float64 throughout.
    from resexp.analysis import responses

    torch.manual_seed(0)
    model = build_model(8, True, "A", "basic", 10)
    x = torch.randn(64, 3, 32, 32)
    wide = layer_response_stds(model, x, batch_size=16)
    host = torch.device("cpu", 0)  # not equal to x.device ("cpu"): the MPS branch
    monkeypatch.setattr(responses, "float64_device", lambda device: host)
    narrow = layer_response_stds(model, x, batch_size=16)
    assert [n for n, _ in narrow] == [n for n, _ in wide]
    for (_, a), (_, b) in zip(narrow, wide, strict=True):
        assert a == pytest.approx(b, rel=1e-4)
