"""The training loop: the paper's schedule, a run's outputs, and what re-running does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from resexp import runtime, train
from resexp.errors import ConfigError
from resexp.runtime import (
    COMPILE_MIN_ITERATIONS,
    choose_precision,
    compile_for,
    memory_format_for,
    select_device,
)
from resexp.train import config_differences, fit, lr_at, make_optimizer, set_lr
from tests.conftest import TINY


def test_paper_schedule_drops_lr_at_32k_and_48k(compose_cfg):
    sched = compose_cfg().schedule
    assert sched.iterations == 64_000 and sched.batch_size == 128
    assert sched.momentum == 0.9 and sched.weight_decay == 1e-4
    assert lr_at(0, sched) == 0.1
    assert lr_at(31_999, sched) == 0.1
    assert lr_at(32_000, sched) == pytest.approx(0.01)
    assert lr_at(47_999, sched) == pytest.approx(0.01)
    assert lr_at(48_000, sched) == pytest.approx(0.001)
    assert lr_at(63_999, sched) == pytest.approx(0.001)


def test_shorter_schedule_moves_the_drops_along(compose_cfg):
    sched = compose_cfg("schedule.iterations=8000").schedule
    assert lr_at(3_999, sched) == 0.1
    assert lr_at(4_000, sched) == pytest.approx(0.01)
    assert lr_at(6_000, sched) == pytest.approx(0.001)
    assert compose_cfg("schedule=short").schedule.iterations == 8000


def test_warmup_holds_lr_at_0_01():
    sched = type("S", (), {"warmup": type("W", (), {"lr": 0.01})()})()
    assert lr_at(10, sched, warming_up=True) == 0.01


def test_fused_sgd_with_a_tensor_lr_matches_plain_sgd(compose_cfg):
    # The CUDA path: one fused kernel and the lr in a tensor (no recompiles at the lr drops).
    sched = compose_cfg().schedule
    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    b = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    b.load_state_dict(a.state_dict())
    plain, fused = make_optimizer(a, sched), make_optimizer(b, sched, fused=True)
    assert torch.is_tensor(fused.param_groups[0]["lr"])
    x = torch.randn(16, 8)
    for lr in (0.1, 0.1, 0.01):
        for model, opt in ((a, plain), (b, fused)):
            set_lr(opt, lr)
            opt.zero_grad()
            model(x).pow(2).sum().backward()
            opt.step()
    assert fused.param_groups[0]["lr"].item() == pytest.approx(0.01)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb)


def test_auto_device_is_cpu_without_accelerators():
    if torch.cuda.is_available() or torch.backends.mps.is_available():
        pytest.skip("this machine has an accelerator")
    assert select_device("auto").type == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"no usable CUDA device.*device=cpu"):
        select_device("cuda")


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_bf16_on_cpus_that_have_it(monkeypatch, native):
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: native)
    cpu = torch.device("cpu")
    assert choose_precision("auto", cpu)[0] == (torch.bfloat16 if native else None)
    assert (
        choose_precision("fp32", cpu)[0] is None
        and choose_precision("bf16", cpu)[0] == torch.bfloat16
    )
    assert choose_precision("fp16", cpu)[0] == torch.float16
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert choose_precision("auto", torch.device("cuda"))[0] == torch.bfloat16
    with pytest.raises(ConfigError, match="precision must be"):
        choose_precision("fp8", cpu)[0]


def test_channels_last_auto_on_cpu_and_cuda_and_any_spelling_of_true():
    cpu, mps = torch.device("cpu"), torch.device("mps")
    assert memory_format_for("auto", cpu) == torch.channels_last
    assert memory_format_for("auto", torch.device("cuda")) == torch.channels_last
    assert memory_format_for("auto", mps) == torch.contiguous_format
    assert memory_format_for("True", mps) == torch.channels_last  # Hydra's bool, as a str
    assert memory_format_for("false", cpu) == torch.contiguous_format
    with pytest.raises(ConfigError, match="channels_last must be"):
        memory_format_for("yes", cpu)


def test_compile_auto_only_for_long_cpu_runs_with_a_compiler(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(runtime, "cpp_compiler", lambda: "/usr/bin/g++")
    assert compile_for("auto", cpu, 64_000) is True
    assert compile_for("auto", cpu, COMPILE_MIN_ITERATIONS - 1) is False  # compiling costs more
    assert compile_for("True", cuda, 10) is True and compile_for("false", cpu, 64_000) is False
    assert compile_for("reduce-overhead", cpu, 10) is True  # a named mode compiles
    monkeypatch.setattr(runtime, "cpp_compiler", lambda: None)
    assert compile_for("auto", cpu, 64_000) is False  # Inductor could not build its kernels
    with pytest.raises(ConfigError, match="compile must be"):
        compile_for("max", cpu, 10)


def test_cpp_compiler_follows_cxx(monkeypatch, tmp_path):
    fake = tmp_path / "my-c++"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CXX", str(fake))
    assert runtime.cpp_compiler() == str(fake)
    monkeypatch.setenv("CXX", str(tmp_path / "missing"))
    assert runtime.cpp_compiler() is None


def test_config_differences_ignore_device_but_not_depth():
    old = {"depth": 20, "device": "cpu", "schedule": {"lr": 0.1, "iterations": 10}}
    new = {"depth": 56, "device": "cuda", "schedule": {"lr": 0.1, "iterations": 20}}
    assert config_differences(old, new) == ["depth", "schedule.iterations"]


def test_fit_writes_a_complete_run_and_learns(compose_cfg):
    cfg = compose_cfg(*TINY, "residual=false")
    summary = fit(cfg)
    run_dir = Path(cfg.run_dir)
    assert run_dir.parts[-3:] == ("default", "plain-20", "seed0")
    assert summary["params"] == 269_722  # He et al. 2015, Table 6: 0.27M
    assert summary["status"] == "completed" and summary["iterations"] == 60
    assert summary["residual"] is False and summary["depth"] == 20
    for key in (
        "train_error",
        "test_error",
        "wall_seconds",
        "images_per_second",
        "device",
        "device_name",  # the CPU's model on a CPU: a speed figure names its machine
        "torch_version",
    ):
        assert summary[key] is not None, key
    assert json.loads((run_dir / "summary.json").read_text()) == summary
    assert (run_dir / "config.yaml").exists() and (run_dir / "checkpoint.pt").exists()

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [20, 40, 60]
    assert set(rows[0]) >= {
        "iteration",
        "train_error",
        "test_error",
        "train_loss",
        "test_loss",
        "lr",
    }
    # A short run on learnable data: the training error falls, the test error beats chance (90%).
    assert rows[-1]["train_error"] < rows[0]["train_error"]
    assert rows[-1]["test_error"] < 80

    events = EventAccumulator(str(run_dir))
    events.Reload()
    tags = events.Tags()["scalars"]
    for tag in ("error/train", "error/test", "loss/train", "loss/test", "lr"):
        assert tag in tags
    assert [e.step for e in events.Scalars("error/test")] == [20, 40, 60]


@pytest.mark.slow
def test_compiled_run_learns_and_says_so(compose_cfg):
    summary = fit(compose_cfg(*TINY, "depth=8", "compile=true"))  # about a minute: compiling
    assert summary["compiled"] is True and summary["status"] == "completed"
    assert summary["test_error"] < 80  # chance is 90%


def test_completed_run_is_not_trained_again(compose_cfg):
    cfg = compose_cfg(*TINY, "depth=8", "schedule.iterations=20")
    first = fit(cfg)
    mtime = (Path(cfg.run_dir) / "checkpoint.pt").stat().st_mtime_ns
    assert fit(cfg) == first
    assert (Path(cfg.run_dir) / "checkpoint.pt").stat().st_mtime_ns == mtime


def test_changed_config_is_refused_and_restart_keeps_the_old_run(compose_cfg):
    fit(compose_cfg(*TINY, "depth=8", "schedule.iterations=20"))
    changed = compose_cfg(*TINY, "depth=8", "schedule.iterations=20", "schedule.lr=0.05")
    with pytest.raises(ConfigError, match=r"schedule\.lr.*name=.*restart=true"):
        fit(changed)
    summary = fit(
        compose_cfg(*TINY, "depth=8", "schedule.iterations=20", "schedule.lr=0.05", "restart=true")
    )
    assert summary["status"] == "completed"
    kept = list(Path(changed.run_dir).parent.glob("seed0.old-*"))
    assert len(kept) == 1 and (kept[0] / "summary.json").exists()


def test_warmup_returns_to_the_full_lr(compose_cfg):
    # The ResNet-110 recipe: 0.01 until the training error is below a threshold, then 0.1.
    # (akamaster/pytorch_resnet_cifar10 issue 21: a warm-up that never gives the lr back.)
    cfg = compose_cfg(
        *TINY,
        "depth=8",
        "schedule.iterations=20",
        "schedule.eval_every=5",
        "schedule.warmup.enabled=true",
        "schedule.warmup.check_every=5",
        "schedule.warmup.until_train_error=95",
    )
    fit(cfg)
    metrics = (Path(cfg.run_dir) / "metrics.jsonl").read_text().splitlines()
    lrs = [json.loads(line)["lr"] for line in metrics]
    assert lrs[:2] == [0.01, 0.1]  # warm-up for the first check, then the paper's lr


def test_diverging_run_stops_with_status_diverged(compose_cfg):
    cfg = compose_cfg(*TINY, "depth=8", "schedule.lr=1e6")
    summary = fit(cfg)
    assert summary["status"] == "diverged"
    # The exact iteration is recorded (found on the device, without a sync per step) ...
    assert 1 <= summary["diverged_at_iteration"] <= 20
    # ... and no evaluation row or checkpoint holds the NaN weights.
    assert not (Path(cfg.run_dir) / "checkpoint.pt").exists()
    assert (Path(cfg.run_dir) / "metrics.jsonl").read_text() == ""


@pytest.mark.slow
def test_short_run_on_the_real_cifar10_jpeg_copy_learns(
    compose_cfg, cifar10_jpeg, cifar10_jpeg_cache
):
    # CIFAR-10 itself (JPEG, RESEXP_TEST_CIFAR10_JPEG): a few hundred CPU steps of ResNet-8
    # on a 5k-image subset must end clearly better than chance (90% error) on 2k test images.
    cfg = compose_cfg(
        "depth=8",
        "data=folder",
        f"data.root={cifar10_jpeg}",
        f"data.cache_dir={cifar10_jpeg_cache}",
        "data.train_size=5000",
        "data.test_size=2000",
        "schedule.iterations=300",
        "schedule.batch_size=64",
        "schedule.eval_every=100",
        "device=cpu",
        "progress=none",
    )
    summary = fit(cfg)
    assert summary["status"] == "completed"
    assert "50000 train / 10000 test" in summary["data"] or "5000" in summary["data"]
    assert summary["test_error"] < 65, summary


def test_gradient_logging_writes_per_layer_norms_and_histograms(compose_cfg):
    cfg = compose_cfg(*TINY, "depth=8", "schedule.iterations=20", "log_gradients_every=10")
    fit(cfg)
    events = EventAccumulator(str(cfg.run_dir), size_guidance={"histograms": 0})
    events.Reload()
    norms = [t for t in events.Tags()["scalars"] if t.startswith("grad_norm/")]
    # 7 convs (stem + 3 blocks x 2) and the fc layer of a depth-8 net
    assert len(norms) == 8 and "grad_norm/conv1" in norms and "grad_norm/fc" in norms
    assert [e.step for e in events.Scalars("grad_norm/conv1")] == [10, 20]
    assert "weights/fc" in events.Tags()["histograms"]


def test_training_error_is_logged_between_evaluations(compose_cfg):
    cfg = compose_cfg(*TINY, "schedule.log_every=10")
    fit(cfg)
    run_dir = Path(cfg.run_dir)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [10, 20, 30, 40, 50, 60]
    assert [r["iteration"] for r in rows if "test_error" in r] == [20, 40, 60]  # eval_every 20
    assert all(0 <= r["train_error"] <= 100 and r["lr"] > 0 for r in rows)
    events = EventAccumulator(str(run_dir))
    events.Reload()
    assert [e.step for e in events.Scalars("error/train")] == [10, 20, 30, 40, 50, 60]
    assert [e.step for e in events.Scalars("error/test")] == [20, 40, 60]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["evaluated_at"] == 60 and summary["test_error"] == rows[-1]["test_error"]


def test_summary_records_what_data_the_run_saw(compose_cfg):
    summary = fit(compose_cfg(*TINY))
    identity = summary["data_identity"]
    assert identity["source"] == "synthetic" and identity["root"] is None
    assert sum(identity["train_per_class"]) == 512 and sum(identity["test_per_class"]) == 256
    assert len(identity["sha256"]) == 64
    again = fit(compose_cfg(*TINY, "name=again"))["data_identity"]
    assert again["sha256"] == identity["sha256"]  # the same images: the same fingerprint


class _FixedLogits(torch.nn.Module):
    """Logits 1 and 1 + 2**-9 for every image: distinct in fp32, equal once rounded to bf16."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(1, 2)
        with torch.no_grad():
            self.fc.weight.zero_()
            self.fc.bias.copy_(torch.tensor([1.0, 1.0 + 2**-9]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.new_ones(len(x), 1))


def test_test_error_comes_from_fp32_logits_whatever_the_training_precision():
    # bf16 keeps 8 significant bits: 1 + 2**-9 rounds to 1, the two logits tie and the argmax
    # picks class 0. The reported error must not depend on that rounding: evaluate takes no
    # precision and always runs in fp32.
    x = torch.zeros(8, 3, 32, 32, dtype=torch.uint8)
    y = torch.ones(8, dtype=torch.long)
    mean, std = torch.zeros(3, 32, 32), torch.ones(3, 32, 32)
    error, loss = train.evaluate(_FixedLogits(), x, y, mean, std, 4)
    assert error == 0.0 and loss == pytest.approx(0.6922, abs=1e-3)


def test_each_segment_of_a_resumed_run_is_recorded(compose_cfg, monkeypatch):
    from resexp.train import StopRequested

    original, calls = train.TrainBatches.next, {"n": 0}

    def next_or_stop(self):
        calls["n"] += 1
        if calls["n"] == 31:
            raise StopRequested("SIGTERM")
        return original(self)

    monkeypatch.setattr(train.TrainBatches, "next", next_or_stop)
    with pytest.raises(StopRequested):
        fit(compose_cfg(*TINY))
    threads = torch.get_num_threads()
    try:
        summary = fit(compose_cfg(*TINY, "threads=1", "channels_last=false"))  # harmless changes
    finally:
        torch.set_num_threads(threads)  # fit sets the process's threads
    first, second = summary["segments"]
    assert (first["from_iteration"], second["from_iteration"]) == (0, 30)
    assert first["channels_last"] is True and second["channels_last"] is False
    assert second["threads"] == 1 and summary["status"] == "completed"
    # Another memory format and thread count: the same run, but no longer bit for bit.
    assert second["bit_exact_resume"] is False and summary["bit_exact_resume"] is False
    assert any("channels_last True -> False" in why for why in second["inexact_because"])


def test_a_run_feeds_the_studys_tensorboard_charts_and_hparams_live(compose_cfg):
    cfg = compose_cfg(*TINY)
    fit(cfg)
    events = EventAccumulator(str(Path(cfg.run_dir)))
    events.Reload()
    assert {"figure6/resnet-20/error_train", "figure6/resnet-20/error_test"} <= set(
        events.Tags()["scalars"]
    )
    assert set(events.PluginTagToContent("hparams")) == {
        "_hparams_/session_start_info",
        "_hparams_/session_end_info",
    }


def test_sweep_writes_the_shared_charts_before_any_run(tmp_path):
    from resexp.compare import LAYOUT_EVENTS, write_study_layout

    path = write_study_layout(
        tmp_path / "study", [("plain-20", 20, False), ("resnet-20", 20, True)]
    )
    assert path.name == LAYOUT_EVENTS
    events = EventAccumulator(str(path.parent))
    events.Reload()
    assert "custom_scalars__config__" in events.PluginTagToContent("custom_scalars")
    (layout,) = events.Tensors("custom_scalars__config__")
    text = layout.tensor_proto.string_val[0]
    assert b"plain-20|resnet-20" in text and b"20 layers: plain vs residual" in text


def test_a_stop_during_an_evaluation_keeps_that_intervals_training_error(compose_cfg, monkeypatch):
    # Review finding: the counters were reset before the test pass, so a run stopped inside it
    # resumed with a training error of 0.0 for that interval.
    from resexp.train import StopRequested

    fit(compose_cfg(*TINY, "name=reference"))
    original, calls = train.evaluate, {"n": 0}

    def evaluate_or_stop(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # inside the second evaluation (iteration 40)
            raise StopRequested("SIGTERM")
        return original(*args, **kwargs)

    monkeypatch.setattr(train, "evaluate", evaluate_or_stop)
    with pytest.raises(StopRequested):
        fit(compose_cfg(*TINY))
    monkeypatch.setattr(train, "evaluate", original)
    fit(compose_cfg(*TINY))

    def rows(name: str) -> list[tuple]:
        path = Path(compose_cfg(*TINY, f"name={name}").run_dir)
        lines = (path / "metrics.jsonl").read_text().splitlines()
        return [(r["iteration"], r["train_error"], r["train_loss"]) for r in map(json.loads, lines)]

    resumed, uninterrupted = rows("default"), rows("reference")
    assert [r[0] for r in resumed] == [20, 40, 60]
    assert resumed[1][1] > 0.0
    assert resumed == uninterrupted  # bit for bit: same device and settings
