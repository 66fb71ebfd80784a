"""How a run executes on each kind of device, tested here by simulating the device: CUDA's
compute capability and device count, MPS, Triton and autocast availability (monkeypatched torch
functions). tests/test_gpu.py runs the same paths on a real GPU."""

from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from resexp import runtime, train
from resexp.data import TrainBatches
from resexp.runtime import Runtime, choose_precision, compile_for, float64_device, resolve
from resexp.train import load_batches_state, load_optimizer_state, set_random_states

CUDA, CPU, MPS = torch.device("cuda"), torch.device("cpu"), torch.device("mps")


def simulate_cuda(monkeypatch, capability: tuple[int, int], count: int = 1, triton: bool = True):
    """Make this process believe it has ``count`` CUDA devices of ``capability``."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    real_find_spec = runtime.importlib.util.find_spec

    def find_spec(name: str, *args):
        return (object() if triton else None) if name == "triton" else real_find_spec(name, *args)

    monkeypatch.setattr(runtime.importlib.util, "find_spec", find_spec)


def options(**kw: str) -> SimpleNamespace:
    base = {"device": "cuda", "precision": "auto", "channels_last": "auto", "compile": "auto"}
    return SimpleNamespace(threads=0, **{**base, **kw})


# ----------------------------------------------------------------------------------------------
# Precision


@pytest.mark.parametrize(
    ("capability", "dtype", "words"),
    [
        ((9, 0), torch.bfloat16, "compute capability 9.0 >= 8.0"),  # H100
        ((8, 0), torch.bfloat16, "compute capability 8.0 >= 8.0"),  # A100
        ((7, 5), torch.float16, "gradient scaler"),  # T4, RTX 20xx
        ((7, 0), torch.float16, "no bf16 ones"),  # V100
        ((6, 1), None, "< 7.0"),  # GTX 10xx: fp16 at 1/64 of the fp32 rate
    ],
)
def test_auto_precision_is_what_the_gpu_computes_natively(monkeypatch, capability, dtype, words):
    simulate_cuda(monkeypatch, capability)
    chosen, why = choose_precision("auto", CUDA)
    assert chosen == dtype and words in why


def test_explicit_precisions_are_kept_and_bf16_below_ampere_is_called_slow(monkeypatch):
    simulate_cuda(monkeypatch, (7, 5))
    why = "precision fp16 (asked for), with a gradient scaler"
    assert choose_precision("fp16", CUDA) == (torch.float16, why)
    dtype, why = choose_precision("bf16", CUDA)
    assert dtype == torch.bfloat16 and "7.5 has no bf16 tensor cores: slow" in why
    assert choose_precision("FP32", CUDA)[0] is None  # any case, as Hydra may hand it over


def test_auto_precision_on_the_cpu_is_unchanged(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    assert choose_precision("auto", CPU) == (
        None,
        "precision fp32 (auto: this CPU has no native bf16; emulated bf16 is slower)",
    )
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    assert choose_precision("auto", CPU)[0] == torch.bfloat16


def test_mps_is_fp32_by_default_and_falls_back_without_autocast(monkeypatch):
    assert choose_precision("auto", MPS)[0] is None
    monkeypatch.setattr(torch.amp, "is_autocast_available", lambda device_type: False)
    dtype, why = choose_precision("bf16", MPS)
    assert (
        dtype is None
        and why == "precision=bf16 falls back to fp32: no autocast on MPS in this torch"
    )


@pytest.mark.parametrize(
    ("dtype", "enabled"), [(torch.float16, True), (torch.bfloat16, False), (None, False)]
)
def test_only_fp16_scales_its_gradients(dtype, enabled):
    assert Runtime(CPU, dtype).grad_scaler().is_enabled() is enabled


# ----------------------------------------------------------------------------------------------
# torch.compile


def test_compile_auto_on_cuda_for_long_runs_where_triton_builds(monkeypatch):
    simulate_cuda(monkeypatch, (8, 0))
    assert compile_for("auto", CUDA, 64_000) is True  # the paper's run
    assert compile_for("auto", CUDA, 8_000) is False  # schedule=short: compiling costs more
    assert compile_for("auto", MPS, 64_000) is False
    simulate_cuda(monkeypatch, (6, 0))
    assert compile_for("auto", CUDA, 64_000) is False  # Triton cannot build for a P100
    simulate_cuda(monkeypatch, (8, 0), triton=False)
    assert compile_for("auto", CUDA, 64_000) is False


def test_compile_on_a_gpu_too_old_for_triton_falls_back_to_eager_in_one_line(monkeypatch):
    simulate_cuda(monkeypatch, (6, 1))
    rt = resolve(options(compile="reduce-overhead"), iterations=100)
    assert rt.compile is False and rt.compile_mode is None and rt.dtype is None
    line = rt.explain()
    assert "\n" not in line and line.startswith("runtime: cuda (fp32, channels_last): ")
    why = "compile=reduce-overhead falls back to eager: Triton needs compute capability 7.0"
    assert f"{why}, this GPU has 6.1" in line


def test_compile_without_a_cpp_compiler_falls_back_on_the_cpu(monkeypatch):
    monkeypatch.setattr(runtime, "cpp_compiler", lambda: None)
    rt = resolve(options(device="cpu", compile="true"), iterations=100)
    assert rt.compile is False and "no C++ compiler" in rt.explain()
    # compile=auto says the same where the run is long enough to compile, and only there
    long_run = resolve(options(device="cpu", compile="auto"), iterations=64_000).explain()
    assert "eager (compile=auto: no C++ compiler" in long_run
    short_run = resolve(options(device="cpu", compile="auto"), iterations=100).explain()
    assert "eager (compile=auto: 100 iterations on cpu)" in short_run


@pytest.mark.parametrize(
    "mode", ["reduce-overhead", "max-autotune-no-cudagraphs", "true", "default"]
)
def test_compile_modes_reach_torch_compile(monkeypatch, mode):
    simulate_cuda(monkeypatch, (8, 0))
    rt = resolve(options(compile=mode), iterations=100)
    assert rt.compile is True and rt.compile_mode == (None if mode in ("true", "default") else mode)
    asked = []
    monkeypatch.setattr(torch, "compile", lambda model, mode=None: asked.append(mode) or model)
    Runtime(CPU, compile=True, compile_mode=rt.compile_mode).prepare(torch.nn.Linear(2, 2))
    assert asked == [rt.compile_mode]
    assert rt.compile_label == (rt.compile_mode or True)


def test_unknown_compile_mode_is_refused():
    with pytest.raises(runtime.ConfigError, match="compile must be auto, true, false, default"):
        compile_for("fastest", CPU, 10)


# ----------------------------------------------------------------------------------------------
# MPS


def test_float64_sums_for_mps_live_on_the_host():
    assert float64_device(MPS) == CPU and float64_device(CUDA) == CUDA


def test_mps_is_chosen_by_auto_when_there_is_no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    rt = resolve(options(device="auto"), iterations=64_000)
    assert rt.device == MPS and rt.dtype is None and not rt.channels_last and not rt.compile


# ----------------------------------------------------------------------------------------------
# Checkpoints from another device


def _conv_sgd(fused: bool, channels_last: bool, lr: float | torch.Tensor = 0.1):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3)
    if channels_last:
        conv.to(memory_format=torch.channels_last)
    return conv, torch.optim.SGD(conv.parameters(), lr=lr, momentum=0.9, fused=fused or None)


def test_fused_sgd_state_resumes_in_another_memory_format():
    # Momentum buffers saved beside channels_last weights; resumed beside contiguous ones. A fused
    # step reads buffer and weight as flat memory: without matching strides it updates the wrong
    # elements (silently on the CPU).
    conv, opt = _conv_sgd(fused=True, channels_last=True, lr=torch.tensor(0.1))
    x = torch.randn(2, 3, 8, 8)
    conv(x).sum().backward()
    opt.step()
    saved, weights = opt.state_dict(), conv.state_dict()

    results = []
    for fused in (True, False):
        resumed, opt2 = _conv_sgd(fused=fused, channels_last=False)
        resumed.load_state_dict(weights)
        load_optimizer_state(opt2, saved)
        group = opt2.param_groups[0]
        assert group["fused"] is (True if fused else None) and isinstance(group["lr"], float)
        resumed(x).sum().backward()
        opt2.step()
        results.append(resumed.weight.detach())
    torch.testing.assert_close(results[0], results[1])


def test_a_float_lr_resumes_into_a_fused_optimizers_device_tensor():
    _, opt = _conv_sgd(fused=False, channels_last=False, lr=0.01)
    saved = opt.state_dict()
    _, fused = _conv_sgd(fused=True, channels_last=False, lr=torch.tensor(0.1))
    lr_tensor = fused.param_groups[0]["lr"]
    load_optimizer_state(fused, saved)
    lr = fused.param_groups[0]["lr"]
    assert torch.is_tensor(lr) and lr.item() == pytest.approx(0.01) and lr is not lr_tensor


def test_fewer_visible_gpus_restore_the_states_they_have(monkeypatch):
    simulate_cuda(monkeypatch, (8, 0), count=1)
    restored = []
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.append(device))
    states = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": [torch.zeros(16, dtype=torch.uint8)] * 2,  # saved on a machine with two GPUs
    }
    set_random_states(states)  # set_rng_state_all would index a second device
    assert restored == [0]


def _batches(seed: int = 0) -> TrainBatches:
    x = torch.zeros(64, 3, 32, 32, dtype=torch.uint8)
    y = torch.zeros(64, dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    return TrainBatches(x, y, 16, torch.zeros(3, 32, 32), torch.ones(3, 32, 32), g)


def test_a_generator_state_from_cuda_is_reseeded_and_the_epoch_order_kept():
    cpu_batches = _batches()
    cpu_batches.next()
    saved = cpu_batches.state_dict()
    # As CUDA writes it: Philox's seed and offset (16 bytes), not the CPU's 5056.
    from_cuda = {
        **saved,
        "generator": torch.zeros(16, dtype=torch.uint8),
        "generator_device": "cuda",
    }
    resumed = [_batches(seed=1), _batches(seed=2)]
    for b in resumed:
        assert load_batches_state(b, from_cuda, seed=0, iteration=7) == [
            "the augmentation generator was saved on cuda: re-seeded"
        ]
        assert torch.equal(b.permutation, saved["permutation"]) and b.position == saved["position"]
    # Re-seeded from the run's seed and iteration: the same on every resume.
    assert torch.equal(resumed[0].generator.get_state(), resumed[1].generator.get_state())
    same = _batches(seed=3)
    assert load_batches_state(same, saved, seed=0, iteration=7) == []  # same device: exact
    assert torch.equal(same.generator.get_state(), saved["generator"])


def test_changed_settings_name_what_breaks_bit_exactness():
    before = {
        "device": "cuda:0",
        "device_name": "NVIDIA A100",
        "precision": "bfloat16",
        "channels_last": True,
        "compiled": False,
        "threads": 16,
        "torch_version": "2.14.1",
    }
    now = {**before, "device": "cuda:1"}
    assert train.changed_settings(before, now) == []  # another GPU of the same model: exact
    now = {**before, "device": "cpu", "device_name": None, "precision": "fp32", "threads": 2}
    assert train.changed_settings(before, now) == [
        "device cuda:0 -> cpu",
        "device_name NVIDIA A100 -> None",
        "precision bfloat16 -> fp32",
    ]
