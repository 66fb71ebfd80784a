"""The benchmark harness: what it reports and what it compares against (never how fast it is)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from rich.console import Console

from resexp import bench as bench_module
from resexp import runtime as runtime_module
from resexp.bench import PILImages, baseline_transforms, bench, format_table
from resexp.cli import bench_config
from resexp.errors import ConfigError
from resexp.runtime import choose_precision, memory_format_for

TINY = {
    "depth": 8,
    "device": "cpu",
    "schedule.batch_size": 8,
    "bench.iterations": 4,
    "bench.warmup": 2,
    "data.test_size": 24,
    "bench.rounds": 2,
    "compile": "none",  # "auto" compiles on this CPU, which takes a minute
}


def config(**settings):
    """The config of `resexp bench KEY=VALUE ...`, as the command composes and checks it."""
    return bench_config([f"{k}={v}" for k, v in settings.items()])


def run_bench(**settings) -> dict:
    return bench(config(**settings))


RATE_FIELDS = {
    "steps",
    "images_per_s",
    "ms_per_step",
    "ms_per_step_median",
    "data_ms_per_step",
    "data_share",
    "images_per_s_by_round",
    "eval_images_per_s",
    "eval_batch_size",
    "first_step_s",
    "peak_rss_mib",
    "peak_cuda_mib",
    "precision",
    "channels_last",
    "compile",
}


@pytest.fixture(autouse=True)
def few_images(monkeypatch):
    """256 generated training images instead of 10,000 and a 64x64 matmul for the peak: the tests
    check fields, not speed."""
    monkeypatch.setattr(bench_module, "SYNTHETIC_TRAIN_IMAGES", 256)
    monkeypatch.setattr(bench_module, "PEAK_MATMUL_SIZE", 64)


@pytest.fixture(scope="module")
def run() -> tuple[dict, list]:
    """One tiny benchmark, and every DataLoader it made."""
    made = []
    real = torch.utils.data.DataLoader

    def spy(*args, **kwargs):
        loader = real(*args, **kwargs)
        made.append(loader)
        return loader

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bench_module, "SYNTHETIC_TRAIN_IMAGES", 256)
        mp.setattr(bench_module, "PEAK_MATMUL_SIZE", 64)
        mp.setattr(torch.utils.data, "DataLoader", spy)
        return bench(config(**TINY)), made


@pytest.fixture
def result(run) -> dict:
    return run[0]


def test_reports_every_field(result):
    assert set(result) == {
        "options",
        "machine",
        "model",
        "resexp",
        "baseline",
        "speedup",
        "eval_speedup",
    }
    assert result["options"]["depth"] == 8 and result["options"]["compile"] == "none"
    machine = result["machine"]
    for key in ("date", "torch", "device", "device_name", "cpu_model", "cores", "threads"):
        assert machine[key], key
    assert machine["torch"] == torch.__version__
    assert len(machine["load_average_before"]) == 3
    assert result["model"] == {
        "arch": "resnet-8",
        "params": 75_290,
        "data": result["model"]["data"],
    }
    assert RATE_FIELDS | {"first_eval_s"} <= set(result["resexp"])
    assert RATE_FIELDS | {"workers", "pin_memory", "transforms"} <= set(result["baseline"])


@pytest.mark.parametrize("loop", ["resexp", "baseline"])
def test_numbers_are_positive_and_the_data_share_a_fraction(result, loop):
    r = result[loop]
    assert r["steps"] == TINY["bench.iterations"]
    for key in (
        "images_per_s",
        "ms_per_step",
        "ms_per_step_median",
        "eval_images_per_s",
        "first_step_s",
        "peak_rss_mib",
    ):
        assert r[key] > 0, key
    assert len(r["images_per_s_by_round"]) == TINY["bench.rounds"]
    assert all(v > 0 for v in r["images_per_s_by_round"])
    assert 0 <= r["data_share"] <= 1
    assert r["data_ms_per_step"] <= r["ms_per_step"]
    assert r["peak_cuda_mib"] is None  # CPU: RSS only
    assert result["speedup"] > 0 and result["eval_speedup"] > 0


def test_result_is_json_and_prints_as_a_table(result):
    assert json.loads(json.dumps(result)) == result
    console = Console(width=120, record=True)
    console.print(format_table(result))
    text = console.export_text()
    assert "train images/s" in text and "baseline" in text and "resnet-8" in text


def test_default_cpu_run_is_the_step_train_fit_runs(result):
    # precision=auto and channels_last=auto resolve as train.fit resolves them on this CPU.
    cpu = torch.device("cpu")
    amp = choose_precision("auto", cpu)[0]
    assert result["resexp"]["precision"] == (str(amp).replace("torch.", "") if amp else "fp32")
    assert result["resexp"]["channels_last"] is (
        memory_format_for("auto", cpu) == torch.channels_last
    )
    assert result["resexp"]["eval_batch_size"] == 1000  # the schedule's, as train.fit


def test_baseline_is_a_dataloader_over_pil_images_with_the_usual_transforms(result):
    from PIL import Image
    from torchvision import transforms

    assert result["baseline"]["transforms"] == [
        "RandomCrop",
        "RandomHorizontalFlip",
        "ToTensor",
        "Normalize",
    ]
    assert result["baseline"]["workers"] >= 1
    assert result["baseline"]["pin_memory"] is False
    assert result["baseline"]["precision"] == "fp32" and result["baseline"]["compile"] == "none"

    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    pipeline = baseline_transforms(x, train=True)
    crop = pipeline.transforms[0]
    assert isinstance(crop, transforms.RandomCrop) and crop.padding == 4 and crop.size == (32, 32)
    seen = []
    images = PILImages(x, torch.arange(4), lambda image: seen.append(image) or torch.zeros(1))
    images[2]
    assert isinstance(seen[0], Image.Image) and seen[0].size == (32, 32)
    assert torch.equal(torch.from_numpy(np.array(seen[0])), x[2].permute(1, 2, 0))  # HWC
    image, label = PILImages(x, torch.arange(4), pipeline)[1]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and label == 1


def test_baseline_runs_through_torch_dataloader(run):
    made = run[1]
    assert made, "the baseline must use torch.utils.data.DataLoader"
    train_loader = made[0]
    assert isinstance(train_loader.dataset, PILImages)
    assert train_loader.num_workers == bench_module.baseline_workers()
    assert train_loader.batch_size == TINY["schedule.batch_size"]


def test_without_baseline_and_with_options():
    r = run_bench(
        **TINY, **{"bench.baseline": False, "channels_last": True, "threads": 1},
        **{"schedule.eval_batch_size": 7},
    )  # fmt: skip
    assert r["baseline"] is None and r["speedup"] is None
    assert r["resexp"]["channels_last"] is True and r["options"]["channels_last"] == "true"
    assert r["resexp"]["eval_batch_size"] == 7
    assert r["machine"]["threads"] == 1
    Console(width=120, file=io.StringIO()).print(format_table(r))  # no baseline columns


def test_threads_are_restored():
    before = torch.get_num_threads()
    run_bench(**{**TINY, "bench.baseline": False, "threads": 1, "bench.iterations": 1,
                 "bench.rounds": 1})  # fmt: skip
    assert torch.get_num_threads() == before


@pytest.mark.parametrize(
    "override",
    [
        {"compile": "fast"},
        {"channels_last": "yes"},
        {"depth": 21},
        {"bench.iterations": 0},
        {"data": "imagenet"},
        {"precision": "fp8"},
        {"schedule.batch_size": 0},
        {"schedule.eval_batch_size": -1},
        {"schedule.batch_size": 257},  # more than the 256 generated images
        {"bench.iteratons": 3},
    ],
)
def test_bad_options_are_refused(override):
    with pytest.raises(ConfigError):
        run_bench(**{**TINY, **override})


def test_compile_modes_cover_the_cuda_ones():
    from resexp.cli import bench_overrides

    # bench takes train's compile= values; the older `--compile none` still means eager.
    assert bench_overrides(["--compile", "none"])[-1] == "compile=false"
    assert runtime_module.COMPILE_OPTIONS == (
        "auto",
        "true",
        "false",
        "default",
        "reduce-overhead",
        "max-autotune",
        "max-autotune-no-cudagraphs",
    )


def test_auto_compile_decides_as_train_fit_would_for_the_papers_run(monkeypatch):
    asked = []

    def compile_for(option, device, iterations):
        asked.append((option, device.type, iterations))
        return False

    cfg = config(**{**TINY, "compile": "auto", "bench.baseline": False})  # composed and checked
    monkeypatch.setattr(runtime_module, "compile_for", compile_for)
    r = bench(cfg)
    assert asked == [("auto", "cpu", 64_000)]  # He et al. 2015, sec. 4.2: 64k iterations
    assert r["resexp"]["compile"] == "none" and r["options"]["compile"] == "auto"


def test_train_keys_mean_what_they_mean_for_train():
    from resexp.cli import check_config

    cfg = config(depth=8, residual=False, precision="fp32", threads=1, device="cpu")
    train = check_config(["depth=8", "residual=false", "precision=fp32", "threads=1", "device=cpu"])
    for key in ("depth", "residual", "precision", "threads", "device", "schedule", "seed"):
        assert cfg[key] == train[key], key
    assert cfg.data.source == "synthetic"  # bench's one default of its own: no download
    assert config(data="folder", **{"data.root": "."}).data.train_size is None  # all images


def test_the_old_option_form_is_still_understood():
    from resexp.cli import bench_overrides

    old = bench_overrides(["--depth", "56", "--batch-size=64", "--compile", "reduce-overhead",
                           "--no-baseline", "--json", "out.json"])  # fmt: skip
    assert old[3:] == ["depth=56", "schedule.batch_size=64", "compile=reduce-overhead",
                       "bench.baseline=false", "bench.json=out.json"]  # fmt: skip
    assert bench_overrides(["compile=none"])[-1] == "compile=false"
    switches = bench_overrides(["--residual", "--depth", "8", "--no-residual", "--threads", "-1"])
    assert switches[3:] == ["residual=true", "depth=8", "residual=false", "threads=-1"]
    with pytest.raises(ConfigError, match=r"not an option here.*resexp bench depht=VALUE"):
        bench_config(["--depht", "56"])


def test_training_flops_are_a_share_of_the_measured_fp32_peak(result):
    from resexp.models import build_model, macs_per_image

    flops = 6 * macs_per_image(build_model(8))  # forward MACs x 2 FLOPs x 3 (forward + backward)
    peak = result["machine"]["fp32_peak_flops_per_s"]
    assert peak > 0 and "64x64 matmuls, measured" in result["machine"]["fp32_peak_how"]
    for loop in ("resexp", "baseline"):
        r = result[loop]
        assert r["train_flops_per_image"] == flops
        assert r["train_flops_per_s"] == pytest.approx(r["images_per_s"] * flops)
        assert r["peak_share"] == pytest.approx(r["train_flops_per_s"] / peak)
    console = Console(width=160, record=True)
    console.print(format_table(result))
    text = console.export_text()
    assert "share of fp32 peak" in text and f"{result['resexp']['peak_share']:.1%}" in text


def test_the_peak_is_two_n_cubed_over_the_best_matmul_time(monkeypatch):
    clock = iter([0.0, 0.5, 1.0, 1.25, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])  # 0.5, 0.25, then 1 s each
    monkeypatch.setattr(bench_module.time, "perf_counter", lambda: next(clock))
    peak = bench_module.measured_peak_flops(torch.device("cpu"))
    assert peak == 2 * 64**3 / 0.25
