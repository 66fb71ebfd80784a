"""End to end, as a user types it: `resexp train ...` in a fresh process."""

from __future__ import annotations

import json

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import TINY, run_cli


@pytest.mark.slow
@pytest.mark.parametrize("residual,arch", [("false", "plain-20"), ("true", "resnet-20")])
def test_train_synthetic_smoke_run(tmp_path, residual, arch):
    result = run_cli("train", "depth=20", f"residual={residual}", *TINY, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "outputs" / "default" / arch / "seed0"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["params"] == 269_722
    assert summary["status"] == "completed"
    assert summary["residual"] is (residual == "true")
    # One plain line per evaluation when the output is not a terminal.
    assert result.stderr.count("it 20/60") == 1 and "it 60/60" in result.stderr
    events = EventAccumulator(str(run_dir))
    events.Reload()
    train = [e.value for e in events.Scalars("error/train")]
    assert len(train) == 3 and train[-1] < train[0]


@pytest.mark.parametrize(
    "override,message",
    [
        ("depth=21", "6n+2"),
        ("dept=20", "unknown key 'dept': did you mean depth?"),
        ("depth=abc", "could not be converted to Integer"),
        ("data=folder", "data.root=PATH"),
        ("shortcut=C", "shortcut must be one of A, B"),
        ("channels_last=yes", "channels_last must be auto, true or false"),
        ("compile=maybe", "compile must be auto, true, false, default, reduce-overhead"),
        ("precision=fp8", "precision must be auto, fp32, bf16, fp16"),
    ],
)
def test_bad_input_is_a_short_error(tmp_path, override, message):
    result = run_cli("train", override, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "outputs").exists()  # nothing written for a refused command


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_refused_before_anything_is_written(tmp_path):
    result = run_cli("train", *[a for a in TINY if a != "device=cpu"], "device=cuda", cwd=tmp_path)
    assert result.returncode == 2
    assert "no usable CUDA device" in result.stderr and "device=cpu" in result.stderr
    assert not (tmp_path / "outputs").exists()


def test_missing_data_root_is_a_clear_error(tmp_path):
    result = run_cli(
        "train", "data=folder", f"data.root={tmp_path / 'nowhere'}", "device=cpu", cwd=tmp_path
    )
    assert result.returncode == 2
    assert "nowhere" in result.stderr and "Traceback" not in result.stderr


def test_cfg_job_prints_the_config(tmp_path):
    result = run_cli("train", "depth=56", "residual=false", "--cfg", "job", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "depth: 56" in result.stdout and "residual: false" in result.stdout
    assert "lr: 0.1" in result.stdout


def test_a_bare_true_or_false_is_taken_for_string_switches(tmp_path):
    result = run_cli("train", "channels_last=true", "precision=fp32", "--cfg", "job", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "channels_last: 'True'" in result.stdout


def test_help_lists_the_choices(tmp_path):
    result = run_cli("train", "--help", cwd=tmp_path)
    assert result.returncode == 0
    assert "data=cifar10|cifar100|folder|synthetic" in result.stdout
    assert "residual=true|false" in result.stdout


def test_bench_command_prints_a_table_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    result = run_cli(
        "bench", "--depth", "8", "--batch-size", "16", "--iterations", "2", "--warmup", "1",
        "--eval-images", "64", "--json", str(out), cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "train images/s" in result.stdout and "baseline" in result.stdout
    assert json.loads(out.read_text())["model"]["arch"] == "resnet-8"


def test_analyze_lists_its_analyses_and_refuses_unknown_ones(tmp_path):
    listed = run_cli("analyze", "--list", cwd=tmp_path)
    assert listed.returncode == 0
    for name in ("responses", "gradients", "lesion", "landscape", "shattering"):
        assert name in listed.stdout
    unknown = run_cli("analyze", "nope", str(tmp_path), cwd=tmp_path)
    assert unknown.returncode == 2 and "unknown analysis" in unknown.stderr


def test_analyze_takes_train_keys_with_train_errors_and_its_own_with_a_did_you_mean(tmp_path):
    typo = run_cli("analyze", "lesion", str(tmp_path), "drws=3", cwd=tmp_path)
    assert typo.returncode == 2 and "did you mean draws?" in typo.stderr
    bad = run_cli("analyze", "responses", str(tmp_path), "progress=loud", cwd=tmp_path)
    assert bad.returncode == 2 and "progress=loud: must be one of" in bad.stderr
    assert "Traceback" not in typo.stderr + bad.stderr
    if not torch.cuda.is_available():  # train's own message for a missing GPU
        cuda = run_cli("analyze", "responses", str(tmp_path), "device=cuda", cwd=tmp_path)
        assert cuda.returncode == 2 and "no usable CUDA device" in cuda.stderr
    assert not any(tmp_path.iterdir())  # nothing written


def test_hydras_own_flags_are_read_by_hydras_parser():
    from resexp.cli import _split_flags

    assert _split_flags(["depth=8"]) == (["depth=8"], False)
    assert _split_flags(["depth=8", "-m", "residual=true,false"]) == (
        ["depth=8", "residual=true,false"],
        True,
    )
    assert _split_flags(["--cfg", "job", "depth=8", "--resolve"]) == (["depth=8"], True)
    assert _split_flags(["--info", "config"]) == ([], True)


def test_train_composes_once_and_trains_on_the_config_it_checked(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import resexp.train
    from resexp import cli

    composed, trained = [], []

    def counting_compose(*args, **kwargs):
        composed.append(cli_compose(*args, **kwargs))
        return composed[-1]

    cli_compose = cli.compose
    monkeypatch.setattr(cli, "compose", counting_compose)
    logging_configs: list = []  # Hydra's logging setup, recorded (not applied to this process)
    monkeypatch.setattr("hydra.core.utils.configure_log", lambda *a: logging_configs.append(a))
    monkeypatch.setattr(resexp.train, "fit", lambda cfg: trained.append(cfg) or {"status": "x"})
    result = CliRunner().invoke(
        cli.app, ["train", "data=synthetic", f"output_root={tmp_path}", "device=cpu", "depth=8"]
    )
    assert result.exit_code == 0, result.output
    assert len(composed) == 1 and len(trained) == 1 and trained[0] is composed[0]
    assert trained[0].depth == 8 and "hydra" not in trained[0]
    assert logging_configs and logging_configs[0][0].root.level == "INFO"  # configs/hydra/...
