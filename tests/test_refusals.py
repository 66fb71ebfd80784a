"""Bad input and refused starts: a short message, exit status 2, and earlier results untouched.

Each refusal runs against a finished study whose files are hashed before and after: a refused
start must leave every earlier file byte for byte as it was, and write nothing new.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest
from typer.testing import CliRunner

from resexp import train
from resexp.cli import app, compose
from resexp.train import StopRequested, fit
from tests.conftest import run_cli

# A tiny study: two ResNet-8 runs on generated images, 60 iterations each.
BASE = ["depth=8", "data=synthetic", "data.train_size=256", "data.test_size=128",
        "schedule=smoke", "device=cpu", "progress=none"]  # fmt: skip


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` with the SHA-256 of its bytes."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("refusals")
    for residual in ("true", "false"):
        fit(compose([f"output_root={root / 'outputs'}", f"data_dir={root / 'data'}", *BASE,
                     f"residual={residual}"]))  # fmt: skip
    return root


def invoke(study: Path, *args: str):
    where = [f"output_root={study / 'outputs'}", f"data_dir={study / 'data'}"]
    return CliRunner().invoke(app, [args[0], *BASE, *where, *args[1:]])


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ("train", "schedule.lr=0.2"),
            "holds a run made with another config (differs in: schedule.lr)",
        ),
        (("train", "schedule.batch_size=0"), "schedule.batch_size=0: must be positive"),
        (("train", "schedule.lr=-1"), "schedule.lr=-1.0: must be positive"),
        (("train", "schedule.iterations=0"), "schedule.iterations=0: must be positive"),
        (("train", "schedule.momentum=1.0"), "schedule.momentum=1.0: must be in [0, 1)"),
        (("train", "schedule.eval_every=0"), "schedule.eval_every=0: must be positive"),
        (("train", "schedule.milestones=[32000,48000]"), "must be increasing fractions"),
        (("train", "schedule.milestones=[0.5,1.2]"), "each in (0, 1)"),
        (("train", "name=../../etc"), "name=../../etc: must be one folder name"),
        (("train", "name=a b"), "must be one folder name"),
        (("train", "seed=-1"), "seed=-1: must be 0 or more"),
        (("train", "threads=-2"), "threads=-2: must be 0"),
        (("train", "data.test_size=0"), "data.test_size=0: must be positive"),
        (("train", "depht=8"), "unknown key 'depht': did you mean depth?"),
        (("train", "--depth", "56"), "`resexp train depth=VALUE`"),
        (
            ("train", "data=folder", "data.root=/no/such/folder"),
            "data.root=/no/such/folder does not exist",
        ),
        (("sweep", "depth=8", "schedule.lr=0.05", "name=default"), "differs in: schedule.lr"),
        (("sweep", "--depth", "8"), "`resexp train depth=VALUE`"),
    ],
)
def test_refused_start_says_why_exits_2_and_changes_nothing(study, args, message):
    before = snapshot(study)
    result = invoke(study, *args)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())  # rich may wrap long lines
    assert "Traceback" not in result.output
    assert snapshot(study) == before  # no earlier file changed, no new file written


def test_restart_moves_the_old_run_aside_whole_and_writes_only_the_new_one(tmp_path):
    where = [f"output_root={tmp_path / 'outputs'}", f"data_dir={tmp_path / 'data'}", *BASE]
    assert run_cli("train", *where, cwd=tmp_path).returncode == 0
    run = tmp_path / "outputs" / "default" / "resnet-8" / "seed0"
    before = snapshot(run)
    result = run_cli("train", *where, "restart=true", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (old,) = run.parent.glob("seed0.old-*")
    assert snapshot(old) == before  # the old run, byte for byte, nothing added
    assert {"train.log", "config.yaml", "summary.json", "metrics.jsonl"} <= set(
        p.name for p in run.iterdir()
    )
    assert "restart=true: the previous run is kept" in (run / "train.log").read_text()


def test_a_refused_first_start_leaves_no_folder_behind(tmp_path):
    # CIFAR-10 cannot be downloaded here (no network in tests): the run is refused, and neither
    # its run folder nor the data folder the download began is left behind.
    result = run_cli("train", "depth=8", "device=cpu", "data.root=" + str(tmp_path / "d/c10"),
                     cwd=tmp_path, env={"http_proxy": "http://127.0.0.1:9", "https_proxy":
                     "http://127.0.0.1:9"})  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "could not download CIFAR-10" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_sweep_reports_a_run_refused_inside_its_job_and_exits_1(tmp_path):
    from filelock import FileLock

    where = [f"output_root={tmp_path / 'outputs'}", f"data_dir={tmp_path / 'data'}", *BASE]
    held = FileLock(tmp_path / "outputs" / "degradation" / "plain-8" / ".seed0.lock")
    (tmp_path / "outputs" / "degradation" / "plain-8").mkdir(parents=True)
    with held.acquire(timeout=0):  # another process is training plain-8/seed0
        result = CliRunner().invoke(app, ["sweep", *where])
    assert result.exit_code == 1, result.output
    assert "1 of 2 run(s) did not complete" in result.output
    assert "plain-8/seed0: refused: another process is already training" in result.output
    assert "skipped" not in result.output
    assert not (tmp_path / "outputs" / "degradation" / "plain-8" / "seed0").exists()


@pytest.mark.parametrize(
    "stop_after,expected", [(5, "no evaluation yet"), (31, "at the last evaluation (iteration 20)")]
)
def test_interrupt_message_tells_the_true_iteration(tmp_path, monkeypatch, caplog, stop_after,
                                                    expected):  # fmt: skip
    original, calls = train.TrainBatches.next, {"n": 0}

    def next_or_stop(self):
        calls["n"] += 1
        if calls["n"] > stop_after:
            raise StopRequested("SIGTERM")
        return original(self)

    monkeypatch.setattr(train.TrainBatches, "next", next_or_stop)
    cfg = compose([f"output_root={tmp_path}", f"data_dir={tmp_path / 'data'}", *BASE])
    with caplog.at_level(logging.INFO), pytest.raises(StopRequested):
        fit(cfg)
    summary = json.loads((Path(cfg.run_dir) / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["iterations"] == stop_after
    line = next(r.getMessage() for r in caplog.records if " interrupted at iteration" in
                r.getMessage())  # fmt: skip
    assert f"interrupted at iteration {stop_after}: " in line and expected in line
    assert "n/a" not in line and "None" not in line
