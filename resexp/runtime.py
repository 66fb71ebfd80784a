"""Where and how a job runs: one ``Runtime``, resolved once from the config.

Device, autocast dtype, memory format, torch.compile and CPU threads decide how fast a network
trains, never what it is trained to (He et al. 2015, "Deep Residual Learning for Image
Recognition", sec. 4.2, whatever they say); ``auto`` is decided by measurement (README, "Speed";
benchmarks/NOTES.md). ``Runtime.prepare`` is the one place a model is moved and compiled.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass
from typing import Any, cast

import torch

from resexp.errors import ConfigError

# torch.compile pays on the CPU only over a long run: compiling takes about 60 s (ResNet-20) to
# 80 s (ResNet-56) on 2 cores, after which bf16 training runs about 19% (ResNet-20) or 9%
# (ResNet-56) more images per second (benchmarks/NOTES.md): it breaks even near 2000 iterations.
COMPILE_MIN_ITERATIONS = 2000


@dataclass(frozen=True)
class Runtime:
    """How a job runs. The defaults are the plain case: fp32, contiguous, eager, torch's threads
    (what the analyses measure with)."""

    device: torch.device
    dtype: torch.dtype | None = None  # the autocast dtype; None: plain fp32
    memory_format: torch.memory_format = torch.contiguous_format
    compile: bool = False
    threads: int = 0  # CPU threads for torch; 0: torch's default
    compile_mode: str | None = None  # torch.compile's mode (None: its default); resexp bench's

    @property
    def precision(self) -> str:
        """``bf16`` or ``fp32``, as run logs, summaries and benchmarks name it."""
        return str(self.dtype).replace("torch.", "") if self.dtype else "fp32"

    @property
    def channels_last(self) -> bool:
        return self.memory_format == torch.channels_last

    def describe(self) -> str:
        """The run log's words for it, e.g. ``cpu (bf16, channels_last, torch.compile)``."""
        layout = ", channels_last" if self.channels_last else ""
        compiled = ", torch.compile" if self.compile else ""
        return f"{self.device} ({self.precision}{layout}{compiled})"

    def apply(self) -> None:
        """Set what is process-wide: torch's CPU threads (if given), cuDNN's autotuner on CUDA."""
        if self.threads > 0:
            torch.set_num_threads(self.threads)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast to ``dtype`` (convolutions and the linear layer; weights, gradients, optimizer
        state and the loss stay fp32), or nothing in fp32."""
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
        # cast: torch types compile's result as any callable; for a module it is a module (an
        # OptimizedModule, which shares the model's parameters).
        return cast(torch.nn.Module, torch.compile(model, mode=self.compile_mode))


def resolve(cfg: Any, iterations: int | None = None) -> Runtime:
    """The runtime ``cfg`` asks for (its ``device``, ``precision``, ``channels_last``, ``compile``
    and ``threads``), each checked. ``iterations``: the training steps of the job, which
    ``compile=auto`` weighs; None for a job that trains no run: never compiled."""
    device = select_device(cfg.device)
    return Runtime(
        device,
        autocast_dtype(cfg.precision, device),
        memory_format_for(cfg.channels_last, device),
        iterations is not None and compile_for(cfg.compile, device, iterations),
        cfg.threads,
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


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX), where oneDNN's bf16
    convolutions are faster than fp32 ones; elsewhere bf16 is emulated and slower."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32.

    ``auto`` means bf16 on CUDA and on CPUs with native bf16, chosen by measurement: on a 2-core
    AMD EPYC (AVX512-BF16) bf16 autocast trains ResNet-20 about 1.7x faster than fp32, and short
    runs on CIFAR-10 reach the same test error in either (README, "Speed"). Weights, gradients,
    optimizer state and the loss stay fp32; only convolutions and the linear layer run in bf16.
    """
    if precision == "auto":
        native = device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())
        return torch.bfloat16 if native else None
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    raise ConfigError(f"precision must be auto, fp32 or bf16, not {precision!r}")


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
    """``compile``: ``true``/``false``, or ``auto``: on the CPU for runs of at least
    COMPILE_MIN_ITERATIONS iterations, where a C++ compiler is found (Inductor's CPU code needs
    one). Not on CUDA or MPS yet: unmeasured there."""
    option = str(option).lower()
    if option not in ("auto", "true", "false"):
        raise ConfigError(f"compile must be auto, true or false, not {option!r}")
    if option != "auto":
        return option == "true"
    return (
        device.type == "cpu" and iterations >= COMPILE_MIN_ITERATIONS and cpp_compiler() is not None
    )


def cpp_compiler() -> str | None:
    """The C++ compiler Inductor would use (``$CXX``, else g++, c++ or clang++ on the PATH)."""
    names = [os.environ["CXX"]] if os.environ.get("CXX") else ["g++", "c++", "clang++"]
    return next((path for name in names if (path := shutil.which(name))), None)
