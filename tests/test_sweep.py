"""`resexp sweep`: the study's grid through Hydra's launchers, resumable, then `resexp compare`."""

from __future__ import annotations

import importlib.util
import json
import tempfile
import threading
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from resexp.cli import compose
from resexp.config import validate
from resexp.errors import ConfigError
from resexp.gpus import pool_folder
from resexp.sweep import gpu_pool, plan_sweep, run_job, translate_args
from tests.conftest import run_cli

# Two depths x plain/residual, ten steps each on 256 generated images: seconds per run.
GRID = [
    "depth=8,14",
    "data=synthetic",
    "data.train_size=256",
    "data.test_size=128",
    "schedule=smoke",
    "schedule.iterations=10",
    "schedule.eval_every=5",
    "device=cpu",
]
RUNS = ["plain-8", "resnet-8", "plain-14", "resnet-14"]


def plan(tmp_path, *args: str):
    return plan_sweep(translate_args([f"output_root={tmp_path}", *args]), compose)


def test_default_study_is_figure_6s_grid(tmp_path):
    p = plan(tmp_path)
    names = sorted(f"{r.run_dir.parent.name}/{r.run_dir.name}" for r in p.runs)
    assert names == sorted(f"{a}-{d}/seed0" for a in ("plain", "resnet") for d in (20, 32, 44, 56))
    assert p.study_dir == tmp_path / "degradation"
    assert {r.iterations for r in p.runs} == {64_000}


def test_command_line_overrides_compose_with_the_preset(tmp_path):
    p = plan(tmp_path, "depth=20,56", "seeds=3", "schedule=short", "name=mine")
    assert len(p.runs) == 2 * 2 * 3
    assert {r.run_dir.name for r in p.runs} == {"seed0", "seed1", "seed2"}
    assert {r.iterations for r in p.runs} == {8000}
    assert p.study_dir == tmp_path / "mine"
    # A single value replaces the preset's axis too.
    assert {r.run_dir.parent.name for r in plan(tmp_path, "depth=56").runs} == {
        "plain-56",
        "resnet-56",
    }


def test_bad_seeds_is_a_clear_error(tmp_path):
    result = run_cli("sweep", "seeds=none", cwd=tmp_path)
    assert result.returncode == 2 and "seeds=" in result.stderr and "Traceback" not in result.stderr


def _check_study(study):
    for run in RUNS:
        summary = json.loads((study / run / "seed0" / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["iterations"] == 10


@pytest.mark.slow
def test_sweep_runs_the_grid_resumes_and_compare_draws_figure_6(tmp_path):
    first = run_cli("sweep", *GRID, "--interval", "1", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    study = tmp_path / "outputs" / "degradation"
    _check_study(study)
    assert "4 runs (4 to run, 0 already completed)" in first.stderr
    assert "sweep: data ready" in first.stderr  # prepared once, before the runs
    assert "runs done" in first.stderr  # the sweep's own progress lines
    mtimes = {r: (study / r / "seed0" / "checkpoint.pt").stat().st_mtime_ns for r in RUNS}

    again = run_cli("sweep", *GRID, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("already completed") >= 4
    assert {r: (study / r / "seed0" / "checkpoint.pt").stat().st_mtime_ns for r in RUNS} == mtimes
    assert again.stdout.count("skipped") == 4

    compared = run_cli("compare", cwd=tmp_path)  # the latest study by default
    assert compared.returncode == 0, compared.stderr
    assert "Verdict" in compared.stdout
    from PIL import Image

    with Image.open(study / "figure6.png") as image:
        image.load()  # decodes
        assert image.width > 1.5 * image.height  # two panels side by side
    assert (study / "figure6.pdf").exists()
    rows = (study / "results.csv").read_text().splitlines()
    assert len(rows) == 1 + 4
    # TensorBoard's own reader finds the layout and the hparams, in the runs' own folders.
    events = EventAccumulator(str(study / "plain-8" / "seed0"))
    events.Reload()
    assert events.PluginTagToContent("custom_scalars")
    assert events.PluginTagToContent("hparams")
    assert sorted(p.name for p in study.iterdir() if p.is_dir()) == sorted(RUNS)


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_sweep_with_parallel_launchers(tmp_path, launcher):
    plugin = f"hydra_plugins.hydra_{launcher.split('_')[0]}_launcher"
    try:
        found = importlib.util.find_spec(plugin) is not None
    except ModuleNotFoundError:  # no Hydra plugin at all: not even the hydra_plugins package
        found = False
    if not found:
        pytest.skip(f"the {launcher} launcher plugin ({plugin}) is not installed; "
                    'pip install -e ".[dev]" brings it')  # fmt: skip
    extra = ["hydra.launcher.n_jobs=2"] if launcher == "joblib" else []
    result = run_cli("sweep", *GRID, f"hydra/launcher={launcher}", *extra, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    _check_study(tmp_path / "outputs" / "degradation")


@pytest.mark.slow
def test_a_failed_run_does_not_stop_the_others(tmp_path):
    # plain-8's checkpoints are unreadable: that run fails, the three others complete.
    broken = tmp_path / "outputs" / "degradation" / "plain-8" / "seed0"
    broken.mkdir(parents=True)
    (broken / "checkpoint.pt").write_bytes(b"not a checkpoint")
    result = run_cli("sweep", *GRID, cwd=tmp_path)
    assert result.returncode == 1
    assert "1 of 4 run(s) did not complete" in result.stderr
    assert "plain-8/seed0: failed" in result.stderr
    assert "failed" in result.stdout
    study = tmp_path / "outputs" / "degradation"
    assert json.loads((broken / "summary.json").read_text())["status"] == "failed"
    assert (broken / "checkpoint.pt").read_bytes() == b"not a checkpoint"  # kept
    for run in RUNS[1:]:
        assert (
            json.loads((study / run / "seed0" / "summary.json").read_text())["status"]
            == "completed"
        )


# ----------------------------------------------------------------------------------------------
# A GPU of its own for each parallel run (resexp/gpus.py), on a simulated multi-GPU machine

JOBLIB = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
BASIC = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"


@pytest.fixture
def gpus(monkeypatch, tmp_path):
    """gpus(n) makes torch see n CUDA devices; returns the list of GPUs set_device pinned. The
    pool's lock files go under tmp_path, not the machine's temporary folder."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    pinned: list[int] = []

    def simulate(n: int) -> list[int]:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
        monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)  # a fresh worker
        monkeypatch.setattr(torch.cuda, "set_device", pinned.append)
        return pinned

    return simulate


def _together(cfgs, launcher: str = JOBLIB) -> tuple[list[str], list]:
    """Run ``cfgs`` as concurrent jobs whose fit waits until all of them are training; return
    the devices they trained on and what each job returned (None: it never ran alongside)."""
    barrier, devices, results = threading.Barrier(len(cfgs)), [], []

    def fit(cfg):
        devices.append(str(cfg.device))
        barrier.wait(timeout=5)  # fails unless every run holds its GPU at once
        return {"ok": True}

    threads = [
        threading.Thread(target=lambda c=c: results.append(run_job(c, fit, launcher))) for c in cfgs
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return sorted(devices), results


def test_parallel_runs_each_get_a_gpu_of_their_own(compose_cfg, gpus):
    pinned = gpus(3)
    devices, results = _together([compose_cfg(f"seed={s}") for s in range(3)])
    assert devices == ["cuda:0", "cuda:1", "cuda:2"]
    assert sorted(pinned) == [0, 1, 2]  # the process's current device too, before the run
    assert results == [{"ok": True}] * 3


def test_runs_per_gpu_lets_two_runs_share_one_gpu(compose_cfg, gpus):
    gpus(1)
    cfgs = [compose_cfg(f"seed={s}", "runs_per_gpu=2") for s in range(2)]
    devices, results = _together(cfgs)
    assert devices == ["cuda:0", "cuda:0"] and results == [{"ok": True}] * 2


def test_with_one_run_per_gpu_the_next_run_waits_for_a_free_gpu(compose_cfg, gpus):
    gpus(1)
    started, release, order = threading.Event(), threading.Event(), []

    def first(cfg):
        order.append(("first", str(cfg.device)))
        started.set()
        release.wait(timeout=30)

    def second(cfg):
        order.append(("second", str(cfg.device)))

    a = threading.Thread(target=run_job, args=(compose_cfg("seed=0"), first, JOBLIB))
    a.start()
    assert started.wait(timeout=30)
    b = threading.Thread(target=run_job, args=(compose_cfg("seed=1"), second, JOBLIB))
    b.start()
    b.join(timeout=1.5)  # longer than the pool's poll
    assert b.is_alive() and order == [("first", "cuda:0")]
    release.set()
    a.join(timeout=30)
    b.join(timeout=30)
    assert order == [("first", "cuda:0"), ("second", "cuda:0")]


def test_a_stopped_or_failed_run_frees_its_gpu(compose_cfg, gpus):
    from resexp.train import StopRequested

    gpus(1)

    def stopped(cfg):
        raise StopRequested("SIGTERM")

    def failed(cfg):
        raise RuntimeError("out of memory")

    with pytest.raises(SystemExit):
        run_job(compose_cfg("seed=0"), stopped, JOBLIB)
    assert run_job(compose_cfg("seed=1"), failed, JOBLIB) is None
    cfg = compose_cfg("seed=2")
    pool = gpu_pool(cfg, JOBLIB)
    assert pool is not None and pool.try_claim() is not None  # the only slot is free again


@pytest.mark.parametrize(
    ("n", "device", "launcher"),
    [
        (0, "auto", JOBLIB),  # the CPU: nothing changes
        (2, "auto", BASIC),  # one run at a time
        (2, "cuda:1", JOBLIB),  # the user's own choice
        (2, "cpu", JOBLIB),
    ],
)
def test_no_pool_without_parallel_runs_on_cuda(compose_cfg, gpus, n, device, launcher):
    pinned = gpus(n)
    cfg = compose_cfg(f"device={device}")
    seen = []
    assert run_job(cfg, lambda c: seen.append(str(c.device)), launcher) is None
    assert seen == [device] and pinned == []
    assert not pool_folder(Path(cfg.output_root) / str(cfg.name)).exists()


def test_the_plan_runs_no_more_at_once_than_gpu_slots(tmp_path, gpus):
    joblib = ["depth=20", "hydra/launcher=joblib", "hydra.launcher.n_jobs=8"]
    gpus(2)
    assert plan(tmp_path, *joblib, "runs_per_gpu=2").n_jobs == 4
    assert plan(tmp_path, *joblib).n_jobs == 2
    gpus(0)
    assert plan(tmp_path, *joblib).n_jobs == 8  # the CPU: as asked


def test_runs_per_gpu_below_one_is_refused(compose_cfg):
    with pytest.raises(ConfigError, match="runs_per_gpu"):
        validate(compose_cfg("runs_per_gpu=0"))


def test_a_run_resumes_under_another_runs_per_gpu():
    from resexp.train import config_differences

    # Saved before the key existed (its default, 1), or with another value: the same experiment.
    assert config_differences({"depth": 20}, {"depth": 20, "runs_per_gpu": 2}) == []
    assert config_differences({"runs_per_gpu": 2}, {"runs_per_gpu": 1}) == []


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device; none here")
def test_a_pooled_run_computes_on_its_own_gpu(compose_cfg):
    # With two GPUs or more, GPU 0's only slot is taken: the run must go to GPU 1.
    n = torch.cuda.device_count()
    cfg = compose_cfg("seed=0")
    pool = gpu_pool(cfg, JOBLIB)
    assert pool is not None and pool.gpus == n
    held = pool.try_claim(prefer=0) if n >= 2 else None
    expected = 1 if n >= 2 else 0

    def fit(cfg):
        x = torch.ones(8, device="cuda")  # plain "cuda": the current device, pinned
        return {"device": str(cfg.device), "current": torch.cuda.current_device(),
                "tensor": x.device.index}  # fmt: skip

    try:
        assert run_job(cfg, fit, JOBLIB) == {
            "device": f"cuda:{expected}",
            "current": expected,
            "tensor": expected,
        }
    finally:
        if held:
            held[1].release()
        torch.cuda.set_device(0)


def test_the_plans_step_timing_uses_the_datas_classes(tmp_path):
    from resexp.sweep import time_steps

    two_classes = ["data=synthetic", "data.synthetic.num_classes=2", "depth=8", "device=cpu"]
    cfg = compose([f"output_root={tmp_path}", *two_classes, "schedule.batch_size=8"])
    assert time_steps(cfg, steps=1) > 0  # labels 0..9 on a 2-class head: an IndexError
