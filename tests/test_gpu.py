"""The CUDA paths on a real GPU: a short run in each precision, a run resumed from CUDA on the CPU
and back, and each torch.compile mode. Skipped, saying why, where there is no CUDA device;
tests/test_runtime.py covers the same decisions by simulation on any machine."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from resexp.runtime import TRITON_MIN_CAPABILITY, compile_unavailable
from resexp.train import StopRequested, fit
from tests.conftest import TINY
from tests.test_resume import _stop_at

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason=f"needs a CUDA device; torch {torch.__version__} sees none here",
    ),
]

ON_CUDA = [o if o != "device=cpu" else "device=cuda" for o in TINY]


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16", "auto"])
def test_a_short_run_in_each_precision_learns(compose_cfg, precision):
    summary = fit(compose_cfg(*ON_CUDA, f"precision={precision}", "depth=8"))
    assert summary["status"] == "completed" and summary["device"].startswith("cuda")
    assert summary["device_name"] == torch.cuda.get_device_name(0)
    if precision != "auto":
        names = {"fp32": "fp32", "bf16": "bfloat16", "fp16": "float16"}
        assert summary["precision"] == names[precision]
    assert 0.0 <= summary["train_error"] < 100.0


def test_fp16_checkpoints_its_gradient_scaler(compose_cfg):
    from resexp.rundir import RunDir

    cfg = compose_cfg(*ON_CUDA, "precision=fp16", "depth=8")
    fit(cfg)
    scaler = RunDir(Path(cfg.run_dir)).load_checkpoint()["scaler"]
    assert scaler["scale"] > 0 and "_growth_tracker" in scaler


def test_a_run_moves_from_cuda_to_the_cpu_and_back(compose_cfg, monkeypatch):
    _stop_at(monkeypatch, 25)
    with pytest.raises(StopRequested):
        fit(compose_cfg(*ON_CUDA, "precision=bf16"))
    monkeypatch.undo()
    _stop_at(monkeypatch, 20)  # the second segment's 20th batch: iteration 44
    with pytest.raises(StopRequested):
        fit(compose_cfg(*TINY, "precision=fp32"))  # TINY: device=cpu
    monkeypatch.undo()
    summary = fit(compose_cfg(*ON_CUDA, "precision=bf16"))
    assert summary["status"] == "completed" and summary["iterations"] == 60
    devices = [s["device"].split(":")[0] for s in summary["segments"]]
    assert devices == ["cuda", "cpu", "cuda"]
    assert summary["bit_exact_resume"] is False
    assert summary["segments"][1]["inexact_because"][0].startswith("device cuda")


def test_a_resume_on_the_same_gpu_with_the_same_settings_is_marked_exact(compose_cfg, monkeypatch):
    _stop_at(monkeypatch, 31)
    with pytest.raises(StopRequested):
        fit(compose_cfg(*ON_CUDA))
    monkeypatch.undo()
    summary = fit(compose_cfg(*ON_CUDA))
    assert summary["bit_exact_resume"] is True
    assert summary["segments"][1]["inexact_because"] == []


@pytest.mark.parametrize("mode", ["true", "reduce-overhead", "max-autotune-no-cudagraphs"])
def test_each_compile_mode_trains(compose_cfg, mode):
    missing = compile_unavailable(torch.device("cuda"))
    summary = fit(compose_cfg(*ON_CUDA, f"compile={mode}", "depth=8"))
    assert summary["status"] == "completed"
    if missing is None:
        expected = True if mode == "true" else mode
        assert summary["segments"][-1]["compiled"] == expected
    else:  # an old GPU or no Triton: eager, said in one line
        assert torch.cuda.get_device_capability() < TRITON_MIN_CAPABILITY or "Triton" in missing
        assert summary["segments"][-1]["compiled"] is False
