"""Where and how a job runs: one ``Runtime``, resolved once from the config.

Device, autocast dtype, memory format, torch.compile and CPU threads decide how fast a network
trains, never what it is trained to (He et al. 2015, "Deep Residual Learning for Image
Recognition", sec. 4.2, whatever they say); ``auto`` is decided by measurement on the CPU
(README, "Speed"; benchmarks/NOTES.md) and, on GPUs, not yet measured, by what the hardware
computes natively (NVIDIA's compute capability tables). ``Runtime.prepare`` is the one place a
model is moved and compiled; ``Runtime.explain`` says what was chosen and why.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import platform
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch

from resexp.errors import ConfigError

# torch.compile pays on the CPU only over a long run: compiling takes about 60 s (ResNet-20) to
# 80 s (ResNet-56) on 2 cores, after which bf16 training runs about 19% (ResNet-20) or 9%
# (ResNet-56) more images per second (benchmarks/NOTES.md): it breaks even near 2000 iterations.
COMPILE_MIN_ITERATIONS = 2000
# On CUDA a step of these small networks is launch-bound and about ten times faster than on the
# CPU, so compiling (still a minute or so) pays only over about ten times as many steps: the
# paper's 64k-iteration run, not the 8k ``short`` one. An estimate, not yet measured on a GPU.
COMPILE_MIN_ITERATIONS_CUDA = 20_000
# The fewest iterations compile=auto compiles, per device type (none on MPS: unmeasured).
AUTO_COMPILE_MIN_ITERATIONS = {"cpu": COMPILE_MIN_ITERATIONS, "cuda": COMPILE_MIN_ITERATIONS_CUDA}
# torch.compile's modes (torch.compile docs): "reduce-overhead" replays the step as CUDA graphs,
# which removes the per-kernel launch cost that dominates small CIFAR networks on a GPU.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
COMPILE_OPTIONS = ("auto", "true", "false", *COMPILE_MODES)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# NVIDIA's compute capability 8.0 (Ampere, A100) brings bf16 tensor cores; 7.0 (Volta) fp16 tensor
# cores (CUDA C++ Programming Guide, "Compute Capabilities"; PyTorch AMP docs: fp16 needs a
# GradScaler). Below 7.0 (Pascal) fp16 arithmetic has no tensor cores, and on 6.1 parts (GTX 10xx)
# runs at 1/64 of the fp32 rate (the guide's arithmetic-throughput table): fp32 is faster there.
BF16_MIN_CAPABILITY = (8, 0)
FP16_MIN_CAPABILITY = (7, 0)
# Triton, Inductor's GPU code generator, supports compute capability 7.0 and up.
TRITON_MIN_CAPABILITY = (7, 0)


@dataclass(frozen=True)
class Runtime:
    """How a job runs. The defaults are the plain case: fp32, contiguous, eager, torch's threads
    (what the analyses measure with)."""

    device: torch.device
    dtype: torch.dtype | None = None  # the autocast dtype; None: plain fp32
    memory_format: torch.memory_format = torch.contiguous_format
    compile: bool = False
    threads: int = 0  # CPU threads for torch; 0: torch's default
    compile_mode: str | None = None  # torch.compile's mode (None: its default)
    notes: tuple[str, ...] = ()  # why each choice was made, and every fallback (``explain``)

    @property
    def precision(self) -> str:
        """``bfloat16``, ``float16`` or ``fp32``, as run logs, summaries and benchmarks name it."""
        return str(self.dtype).replace("torch.", "") if self.dtype else "fp32"

    @property
    def compile_label(self) -> str | bool:
        """What a run's segments record: False, True (torch.compile's default mode) or the mode."""
        return (self.compile_mode or True) if self.compile else False

    @property
    def channels_last(self) -> bool:
        return self.memory_format == torch.channels_last

    def describe(self) -> str:
        """The run log's words for it, e.g. ``cpu (bf16, channels_last, torch.compile)``."""
        layout = ", channels_last" if self.channels_last else ""
        compiled = ", torch.compile" if self.compile else ""
        mode = f" {self.compile_mode}" if self.compile and self.compile_mode else ""
        return f"{self.device} ({self.precision}{layout}{compiled}{mode})"

    def explain(self) -> str:
        """One line: what was chosen and why (a run's first log line)."""
        return f"runtime: {self.describe()}: " + "; ".join(self.notes)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A gradient scaler, enabled for fp16 only: fp16's narrow exponent range flushes small
        gradients to zero unless the loss is scaled up first (PyTorch AMP docs, "Gradient
        Scaling"); bf16 has fp32's range and needs none. Disabled, it passes everything through."""
        return torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)

    def apply(self) -> None:
        """Set what is process-wide: torch's CPU threads (if given), cuDNN's autotuner on CUDA."""
        if self.threads > 0:
            torch.set_num_threads(self.threads)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast to ``dtype`` (convolutions and the linear layer; weights, gradients, optimizer
        state and the loss stay fp32: PyTorch AMP docs), or nothing in fp32."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        """Move ``model`` to the device and memory format, in place; return the module to call:
        ``model`` itself, or its compiled wrapper, which shares its parameters (save ``model``)."""
        model.to(self.device)
        model.to(memory_format=self.memory_format)  # Module.to takes it alone, as documented
        if not self.compile:
            return model
        # cast: torch types compile's result as any callable; for a module it is an OptimizedModule.
        return cast(torch.nn.Module, torch.compile(model, mode=self.compile_mode))


def resolve(cfg: Any, iterations: int | None = None) -> Runtime:
    """The runtime ``cfg`` asks for (its ``device``, ``precision``, ``channels_last``, ``compile``
    and ``threads``), each checked. ``iterations``: the training steps of the job, which
    ``compile=auto`` weighs; None for a job that trains no run: never compiled. What a device
    lacks falls back, with a note: see ``Runtime.explain``."""
    device = select_device(cfg.device)
    dtype, why_precision = choose_precision(cfg.precision, device)
    notes = [why_precision]
    compiled = iterations is not None and compile_for(cfg.compile, device, iterations)
    if compiled and (missing := compile_unavailable(device)) is not None:
        compiled = False
        notes.append(f"compile={cfg.compile} falls back to eager: {missing}")
    elif compiled:
        notes.append(f"torch.compile (compile={cfg.compile})")
    elif iterations is not None and str(cfg.compile).lower() == "auto":
        why = f"{iterations} iterations on {device.type}"
        minimum = AUTO_COMPILE_MIN_ITERATIONS.get(device.type)
        if minimum is not None and iterations >= minimum:  # long enough, but cannot compile here
            why = compile_unavailable(device) or why
        notes.append(f"eager (compile=auto: {why})")
    return Runtime(
        device,
        dtype,
        memory_format_for(cfg.channels_last, device),
        compiled,
        cfg.threads,
        compile_mode=compile_mode(cfg.compile) if compiled else None,
        notes=tuple(notes),
    )


def select_device(name: str) -> torch.device:
    """``auto``: CUDA, else Apple's MPS, else the CPU; any other name is checked, not trusted."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device={name} was asked for, but this machine has no usable CUDA device "
            f"(torch {torch.__version__}). Use device=auto or device=cpu."
        )
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"device={name}: there are only {torch.cuda.device_count()} CUDA devices")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device=mps was asked for, but MPS is not available here")
    return device


def float64_device(device: torch.device) -> torch.device:
    """Where float64 sums for ``device`` can live: the device itself, except MPS, which has no
    float64 (PyTorch MPS backend docs: "float64 is not supported"); there, the host."""
    return torch.device("cpu") if device.type == "mps" else device


def device_name(device: torch.device) -> str:
    """The device's model, for summaries and benchmarks: the GPU's name, or the CPU's (speed
    figures mean little without it)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():  # Linux
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX), where oneDNN's bf16
    convolutions are faster than fp32 ones; elsewhere bf16 is emulated and slower."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def choose_precision(option: str, device: torch.device) -> tuple[torch.dtype | None, str]:
    """The autocast dtype (None: plain fp32) and, in words, why.

    ``auto`` picks what the hardware multiplies natively: bf16 on CUDA devices of compute
    capability 8.0 and up and on CPUs with AVX512-BF16 or AMX; fp16 with a gradient scaler on
    CUDA 7.x (Volta, Turing: fp16 tensor cores, no bf16 ones); fp32 on older GPUs, other CPUs and
    MPS (unmeasured there). On a 2-core AMD EPYC (AVX512-BF16) bf16 autocast trains ResNet-20
    about 1.7x faster than fp32, and short runs on CIFAR-10 reach the same test error in either
    (README, "Speed"). What runs in the lower precision: ``Runtime.autocast``.
    """
    option = str(option).lower()
    if option not in PRECISIONS:
        raise ConfigError(f"precision must be {', '.join(PRECISIONS)}, not {option!r}")
    if option == "fp32":
        return None, "precision fp32 (asked for)"
    if device.type == "mps" and not torch.amp.is_autocast_available("mps"):
        return None, f"precision={option} falls back to fp32: no autocast on MPS in this torch"
    if option == "fp16":
        return torch.float16, "precision fp16 (asked for), with a gradient scaler"
    if option == "bf16":
        why = "precision bf16 (asked for)"
        if device.type == "cuda" and torch.cuda.get_device_capability(device) < BF16_MIN_CAPABILITY:
            why += f"; compute capability {_cc(device)} has no bf16 tensor cores: slow"
        return torch.bfloat16, why
    if device.type == "cuda":
        cc = torch.cuda.get_device_capability(device)
        if cc >= BF16_MIN_CAPABILITY:
            return torch.bfloat16, f"precision bf16 (auto: compute capability {_cc(device)} >= 8.0)"
        if cc >= FP16_MIN_CAPABILITY:
            return torch.float16, (
                f"precision fp16 with a gradient scaler (auto: compute capability {_cc(device)} "
                "has fp16 tensor cores but no bf16 ones)"
            )
        return None, (
            f"precision fp32 (auto: compute capability {_cc(device)} < 7.0 has no fast fp16 "
            "or bf16)"
        )
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16, "precision bf16 (auto: this CPU has AVX512-BF16 or AMX)"
    if device.type == "cpu":
        return None, "precision fp32 (auto: this CPU has no native bf16; emulated bf16 is slower)"
    return None, f"precision fp32 (auto: lower precision unmeasured on {device.type})"


def _cc(device: torch.device) -> str:
    """The compute capability in NVIDIA's words: 8.0 for an A100."""
    return ".".join(map(str, torch.cuda.get_device_capability(device)))


def memory_format_for(option: str, device: torch.device) -> torch.memory_format:
    """``channels_last``: ``true``/``false``, or ``auto``: on CUDA and on the CPU (oneDNN), where
    it measured faster (CPU, ResNet-20: 1.1x to 1.5x in fp32); not on MPS. Hydra hands a bare
    ``true`` over as ``True``, so case does not matter."""
    option = str(option).lower()
    if option not in ("auto", "true", "false"):
        raise ConfigError(f"channels_last must be auto, true or false, not {option!r}")
    if option == "true" or (option == "auto" and device.type in ("cuda", "cpu")):
        return torch.channels_last
    return torch.contiguous_format


def compile_for(option: str, device: torch.device, iterations: int) -> bool:
    """Whether to compile. ``compile``: ``true``/``false``, a torch.compile mode (compiles), or
    ``auto``: runs of at least COMPILE_MIN_ITERATIONS iterations on the CPU, where a C++
    compiler is found (Inductor's CPU code needs one), and of COMPILE_MIN_ITERATIONS_CUDA on
    CUDA, where Triton can build kernels (compute capability 7.0+); never on MPS (unmeasured)."""
    option = str(option).lower()
    if option not in COMPILE_OPTIONS:
        raise ConfigError(f"compile must be {', '.join(COMPILE_OPTIONS)}, not {option!r}")
    if option != "auto":
        return option != "false"
    minimum = AUTO_COMPILE_MIN_ITERATIONS.get(device.type)
    return minimum is not None and iterations >= minimum and compile_unavailable(device) is None


def compile_mode(option: str) -> str | None:
    """torch.compile's ``mode`` for ``compile``: the mode it names, else None (its default, as
    ``true`` and ``default`` both mean)."""
    option = str(option).lower()
    return option if option in COMPILE_MODES and option != "default" else None


def compile_unavailable(device: torch.device) -> str | None:
    """Why torch.compile cannot build kernels for ``device`` here, or None if it can."""
    if device.type == "cpu" and cpp_compiler() is None:
        return "no C++ compiler for Inductor's CPU kernels (set CXX, or install g++)"
    if device.type == "cuda":
        if importlib.util.find_spec("triton") is None:
            return "Triton is not installed"
        if torch.cuda.get_device_capability(device) < TRITON_MIN_CAPABILITY:
            return f"Triton needs compute capability 7.0, this GPU has {_cc(device)}"
    return None


def cpp_compiler() -> str | None:
    """The C++ compiler Inductor would use (``$CXX``, else g++, c++ or clang++ on the PATH)."""
    names = [os.environ["CXX"]] if os.environ.get("CXX") else ["g++", "c++", "clang++"]
    return next((path for name in names if (path := shutil.which(name))), None)
