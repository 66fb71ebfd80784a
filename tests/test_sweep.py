"""`resexp sweep`: the study's grid through Hydra's launchers, resumable, then `resexp compare`."""

from __future__ import annotations

import importlib.util
import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from resexp.cli import compose
from resexp.sweep import plan_sweep, translate_args
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
