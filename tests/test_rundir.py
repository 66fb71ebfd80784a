"""The run folder: one owner for its files, a format version in what it writes, older runs read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from resexp.rundir import FORMAT, CheckpointError, RunDir, run_dirs

RESULTS = Path(__file__).resolve().parent.parent / "results" / "laptop"


def test_summary_and_checkpoint_say_their_format(tmp_path):
    run = RunDir(tmp_path / "resnet-20" / "seed0")
    run.write_summary({"status": "completed", "test_error": 8.75})
    run.save_checkpoint({"iteration": 10, "model": {}})
    assert json.loads(run.summary_file.read_text())["format"] == FORMAT
    assert torch.load(run.checkpoint_file, weights_only=False)["format"] == FORMAT
    assert run.read_summary()["test_error"] == 8.75
    assert run.load_checkpoint()["iteration"] == 10


def test_files_written_before_the_format_existed_still_read(tmp_path):
    run = RunDir(tmp_path / "plain-56" / "seed0")
    run.path.mkdir(parents=True)
    run.summary_file.write_text(json.dumps({"status": "completed", "iterations": 1500}))
    torch.save({"iteration": 1500, "model": {"w": torch.ones(1)}}, run.checkpoint_file)
    assert run.read_summary()["status"] == "completed"
    assert run.load_checkpoint()["iteration"] == 1500
    assert [it for it, _ in run.checkpoints()] == [1500]


def test_a_checkpoint_from_a_newer_resexp_is_refused_with_what_to_do(tmp_path):
    run = RunDir(tmp_path / "resnet-20" / "seed0")
    run.path.mkdir(parents=True)
    torch.save({"iteration": 5, "format": FORMAT + 1}, run.checkpoint_file)
    with pytest.raises(CheckpointError, match=r"newer resexp.*upgrade"):
        run.load_checkpoint()


def test_the_previous_checkpoint_stands_in_for_a_torn_one(tmp_path):
    run = RunDir(tmp_path / "resnet-20" / "seed0")
    run.save_checkpoint({"iteration": 10, "model": {}})
    run.save_checkpoint({"iteration": 20, "model": {}})
    run.checkpoint_file.write_bytes(b"torn")
    assert run.load_checkpoint()["iteration"] == 10
    assert run.checkpoint_file.read_bytes() == b"torn"  # kept for inspection, never deleted


def test_runs_of_a_study_exclude_restarted_hidden_and_analysis_folders(tmp_path):
    kept = "resnet-20/seed0.old-20261203-120000"
    for rel in ("plain-20/seed0", "plain-20/seed10", "plain-20/seed2", "resnet-20/seed0", kept,
                ".hidden/seed0", "analysis/seed0"):  # fmt: skip
        (tmp_path / rel).mkdir(parents=True)
    found = [r.label for r in run_dirs(tmp_path)]
    assert found == ["plain-20/seed0", "plain-20/seed2", "plain-20/seed10", "resnet-20/seed0"]


def test_move_aside_keeps_the_whole_folder(tmp_path):
    run = RunDir(tmp_path / "resnet-20" / "seed0")
    run.write_summary({"status": "interrupted"})
    kept = run.move_aside()
    assert not run.path.exists() and kept.name.startswith("seed0.old-")
    assert json.loads((kept / "summary.json").read_text())["status"] == "interrupted"
    assert run_dirs(tmp_path) == []


@pytest.mark.skipif(not RESULTS.is_dir(), reason="results/laptop is not in this checkout")
def test_the_published_study_is_format_1_and_reads():
    runs = run_dirs(RESULTS)
    assert len(runs) >= 8
    for run in runs:
        summary = run.read_summary()
        assert summary is not None and "format" not in summary  # written before the format
        assert run.read_config()["depth"] == summary["depth"]
        assert run.read_metrics()[-1]["iteration"] == summary["iterations"]
