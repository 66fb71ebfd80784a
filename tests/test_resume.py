"""Never lose a run: kill -9 and resume, SIGTERM, two processes on one run, corrupt checkpoints,
divergence, unwritable outputs, a full disk. Real processes where it matters."""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from resexp.errors import ResexpError
from resexp.train import EXIT_DIVERGED, EXIT_INTERRUPTED, fit
from tests.conftest import run_cli

# A small, exactly reproducible CPU run: depth 8 on 512 generated images, 40 steps of 32.
SMALL = [
    "depth=8",
    "data=synthetic",
    "data.train_size=512",
    "data.test_size=256",
    "schedule=smoke",
    "schedule.iterations=40",
    "schedule.eval_every=10",
    "device=cpu",
    "threads=2",
    "progress=lines",
]
# Long enough to be stopped in the middle.
LONG = [
    *SMALL[:-5],
    "schedule.iterations=100000",
    "schedule.eval_every=5",
    "device=cpu",
    "threads=2",
]


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.Popen(
        [sys.executable, "-m", "resexp.cli", "train", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def final_state(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoint.pt", weights_only=False)


def curves(run_dir: Path) -> list[tuple]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    keys = ("iteration", "train_error", "train_loss", "test_error", "test_loss", "lr")
    return [tuple(r[k] for k in keys) for r in rows]


def assert_same_run(a: Path, b: Path, iterations: int = 40) -> None:
    sa, sb = final_state(a), final_state(b)
    assert sa["iteration"] == sb["iteration"] == iterations
    for key, value in sa["model"].items():
        assert torch.equal(value, sb["model"][key]), key
    assert curves(a) == curves(b)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The same small run, never interrupted."""
    cwd = tmp_path_factory.mktemp("reference")
    result = run_cli("train", *SMALL, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return cwd / "outputs" / "default" / "resnet-8" / "seed0"


def wait_for_evaluation(run_dir: Path, iteration: int, proc: subprocess.Popen) -> None:
    """Until metrics.jsonl holds the test error at ``iteration`` (its checkpoint may not be
    written yet)."""
    metrics, deadline = run_dir / "metrics.jsonl", time.time() + 120
    while True:
        lines = metrics.read_text().split("\n")[:-1] if metrics.exists() else []  # whole lines
        if any(r["iteration"] == iteration and "test_error" in r for r in map(json.loads, lines)):
            return
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, f"no evaluation at iteration {iteration}"
        time.sleep(0.005)


@pytest.mark.slow
@pytest.mark.parametrize("killed_after", ["the first checkpoint", "the second evaluation"])
def test_kill_9_and_resume_ends_bit_for_bit_like_an_uninterrupted_run(
    tmp_path, reference, killed_after
):
    run_dir = tmp_path / "outputs" / "default" / "resnet-8" / "seed0"
    proc = start(SMALL, tmp_path)
    if killed_after == "the first checkpoint":
        wait_for(run_dir / "checkpoint.pt", proc)
    else:  # with metrics of more than one evaluation, maybe before its checkpoint
        wait_for_evaluation(run_dir, 20, proc)
    proc.kill()  # SIGKILL: no handler runs, the process just ends
    proc.wait()
    done = final_state(run_dir)["iteration"]
    if done == 40:
        pytest.skip("the run finished before it could be killed")

    result = run_cli("train", *SMALL, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"resuming {Path('outputs/default/resnet-8/seed0')} from iteration" in result.stderr
    assert_same_run(run_dir, reference)
    # TensorBoard sees each evaluation once, even those logged twice across the crash.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir))
    events.Reload()
    assert [e.step for e in events.Scalars("error/test")] == [10, 20, 30, 40]


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_in_seconds_and_resumes_exactly(tmp_path, reference):
    run_dir = tmp_path / "outputs" / "default" / "resnet-8" / "seed0"
    proc = start(SMALL, tmp_path)
    wait_for(run_dir / "checkpoint.pt", proc)
    sent = time.time()
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=30)
    assert time.time() - sent < 10
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal arrived")
    assert proc.returncode == EXIT_INTERRUPTED, output
    assert "SIGTERM" in output and "Traceback" not in output
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "interrupted"

    result = run_cli("train", *SMALL, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert_same_run(run_dir, reference)


@pytest.mark.slow
def test_a_second_process_on_the_same_run_is_refused(tmp_path):
    run_dir = tmp_path / "outputs" / "default" / "resnet-8" / "seed0"
    first = start(LONG, tmp_path)
    try:
        wait_for(run_dir / "checkpoint.pt", first)
        second = run_cli("train", *LONG, cwd=tmp_path, timeout=60)
        assert second.returncode == 2
        assert "another process is already training" in second.stderr
        assert first.poll() is None  # the first one is untouched
    finally:
        first.kill()
        first.wait()
    # A killed holder leaves no stuck lock: the next run takes over (and is stopped by SIGTERM).
    third = start(LONG, tmp_path)
    time.sleep(1)
    output = ""
    while "resuming" not in output and third.poll() is None:
        output += third.stdout.readline()
    third.send_signal(signal.SIGTERM)
    third.communicate(timeout=30)
    assert "resuming" in output
    assert third.returncode == EXIT_INTERRUPTED


def test_second_ctrl_c_exits_at_once():
    from resexp.train import SignalGuard

    with SignalGuard() as guard:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
        assert guard.requested == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)


@pytest.mark.slow
def test_corrupt_checkpoints_are_kept_and_explained(tmp_path):
    run_dir = tmp_path / "outputs" / "default" / "resnet-8" / "seed0"
    proc = start(LONG, tmp_path)
    wait_for(run_dir / "checkpoint.prev.pt", proc)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)

    # The newest one truncated: resume from the one before, and say so.
    newest = run_dir / "checkpoint.pt"
    newest.write_bytes(newest.read_bytes()[:1000])
    prev_iteration = torch.load(run_dir / "checkpoint.prev.pt", weights_only=False)["iteration"]
    proc = start(LONG, tmp_path)
    output = ""
    while f"from iteration {prev_iteration}" not in output and proc.poll() is None:
        output += proc.stdout.readline()
    proc.send_signal(signal.SIGTERM)
    output += proc.communicate(timeout=30)[0]
    assert "checkpoint.pt is unreadable" in output and "older checkpoint" in output

    # Both unreadable: refuse, keep both files, say what to do.
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        (run_dir / name).write_bytes(b"garbage")
    result = run_cli("train", *LONG, cwd=tmp_path)
    assert result.returncode == 2
    assert "no readable checkpoint" in result.stderr and "restart=true" in result.stderr
    assert "Traceback" not in result.stderr
    assert (run_dir / "checkpoint.pt").read_bytes() == b"garbage"
    assert (run_dir / "checkpoint.prev.pt").read_bytes() == b"garbage"


@pytest.mark.slow
def test_nan_loss_stops_with_status_diverged(tmp_path):
    result = run_cli("train", *SMALL, "schedule.lr=1e8", cwd=tmp_path)
    assert result.returncode == EXIT_DIVERGED
    run_dir = tmp_path / "outputs" / "default" / "resnet-8" / "seed0"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "diverged"
    assert 1 <= summary["diverged_at_iteration"] <= 10
    assert "not finite at iteration" in result.stderr


def test_unwritable_output_folder_is_refused(tmp_path):
    if os.geteuid() == 0:  # root writes through permission bits: use a file system that refuses
        if not Path("/proc/self").exists():
            pytest.skip("needs /proc as a read-only place when run as root")
        target = "/proc/resexp-outputs"
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        target = str(locked / "outputs")
    result = run_cli(
        "train", "data=synthetic", "schedule=smoke", f"output_root={target}", cwd=tmp_path
    )
    assert result.returncode == 2
    assert "cannot write outputs under" in result.stderr and "output_root=" in result.stderr
    assert "Traceback" not in result.stderr


def test_full_disk_during_a_checkpoint_keeps_the_previous_one(compose_cfg, monkeypatch):
    import resexp.rundir as rundir

    cfg = compose_cfg(*SMALL)
    real_save, calls = torch.save, []

    def save_then_fill_the_disk(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the second checkpoint: half written, then no space left
            f.write(b"\0" * 4096)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(rundir.torch, "save", save_then_fill_the_disk)
    with pytest.raises(ResexpError, match=r"could not write a checkpoint.*previous checkpoint"):
        fit(cfg)
    run_dir = Path(cfg.run_dir)
    assert torch.load(run_dir / "checkpoint.pt", weights_only=False)["iteration"] == 10
    assert not list(run_dir.glob(".resexp-*.tmp"))  # no half-written leftovers

    monkeypatch.setattr(rundir.torch, "save", real_save)  # space freed: the run resumes
    assert fit(cfg)["status"] == "completed"


# ----------------------------------------------------------------------------------------------
# Resuming on another device. Without a GPU here, a checkpoint is made to look as a CUDA run
# writes it; tests/test_gpu.py resumes real CUDA checkpoints on the CPU and back.


def _stop_at(monkeypatch, call: int) -> None:
    """Make the run stop (as SIGTERM does) when it asks for its ``call``-th batch."""
    from resexp import train
    from resexp.train import StopRequested

    original, calls = train.TrainBatches.next, {"n": 0}

    def next_or_stop(self):
        calls["n"] += 1
        if calls["n"] == call:
            raise StopRequested("SIGTERM")
        return original(self)

    monkeypatch.setattr(train.TrainBatches, "next", next_or_stop)


def test_a_checkpoint_written_on_cuda_resumes_on_the_cpu_and_says_it_is_not_exact(
    compose_cfg, monkeypatch
):
    from resexp.rundir import RunDir
    from resexp.train import StopRequested
    from tests.conftest import TINY

    cfg = compose_cfg(*TINY)
    _stop_at(monkeypatch, 31)
    with pytest.raises(StopRequested):
        fit(cfg)
    monkeypatch.undo()
    run = RunDir(Path(cfg.run_dir))
    state = run.load_checkpoint()
    # As a bf16 run with fused SGD on the first of two A100s writes it: Philox's 16-byte
    # generator state, a device tensor for the lr, the fused flag, two CUDA random states.
    state["batches"].update(generator=torch.zeros(16, dtype=torch.uint8), generator_device="cuda")
    for group in state["optimizer"]["param_groups"]:
        group.update(fused=True, lr=torch.tensor(group["lr"]))
    state["random"]["cuda"] = [torch.zeros(16, dtype=torch.uint8)] * 2
    state["segments"][-1].update(device="cuda:0", device_name="NVIDIA A100", precision="bfloat16")
    run.save_checkpoint(state)

    summary = fit(cfg)
    assert summary["status"] == "completed" and summary["iterations"] == 60
    resumed = summary["segments"][-1]
    assert resumed["bit_exact_resume"] is False and summary["bit_exact_resume"] is False
    assert resumed["inexact_because"][0] == "device cuda:0 -> cpu"
    assert "the augmentation generator was saved on cuda: re-seeded" in resumed["inexact_because"]
    log = run.log_file.read_text()
    assert "the result can no longer be bit-identical to an uninterrupted run" in log


def test_a_cpu_checkpoints_generator_state_is_reseeded_on_a_cuda_generator():
    from types import SimpleNamespace

    from resexp.train import load_batches_state

    loaded, seeded = [], []
    cuda_generator = SimpleNamespace(
        device=torch.device("cuda"),
        get_state=lambda: torch.zeros(16, dtype=torch.uint8),
        manual_seed=seeded.append,
    )
    batches = SimpleNamespace(generator=cuda_generator, load_state_dict=loaded.append)
    saved = {"generator": torch.Generator().get_state(), "permutation": torch.arange(4)}
    why = load_batches_state(batches, saved, seed=3, iteration=5)  # an older one: no device
    assert why == ["the augmentation generator was saved on another device: re-seeded"]
    assert seeded == [3 * 2**32 + 5] and loaded[0]["generator"].shape == (16,)


def test_fp16_resumes_bit_for_bit_with_its_gradient_scaler(compose_cfg, monkeypatch, caplog):
    from resexp.rundir import RunDir
    from resexp.train import StopRequested
    from tests.conftest import TINY

    short = [*TINY, "depth=8", "precision=fp16", "schedule.iterations=20", "schedule.eval_every=10"]
    caplog.set_level(logging.INFO)  # train.log gets what the root logger passes on
    reference = compose_cfg(*short, "name=reference")
    fit(reference)
    cfg = compose_cfg(*short)
    _stop_at(monkeypatch, 15)
    with pytest.raises(StopRequested):
        fit(cfg)
    assert RunDir(Path(cfg.run_dir)).load_checkpoint()["scaler"]["scale"] > 0  # fp16: scaled
    monkeypatch.undo()
    summary = fit(cfg)
    assert summary["precision"] == "float16" and summary["bit_exact_resume"] is True
    assert_same_run(Path(cfg.run_dir), Path(reference.run_dir), iterations=20)
    first = RunDir(Path(cfg.run_dir)).log_file.read_text().splitlines()[0]
    expected = (
        "runtime: cpu (float16, channels_last): precision fp16 (asked for), with a gradient "
        "scaler; eager (compile=auto: 20 iterations on cpu)"
    )
    assert first.endswith(expected)
