"""torch.compile against eager on the CPU, interleaved in one process (the machine's load drifts
too much between separate ``resexp bench`` runs to see a 10-20% difference).

    python benchmarks/compile_ab.py 20      # ResNet-20; prints images/s per round, then medians

Two identical models (bf16 autocast, channels_last, as ``resexp train`` on a CPU with native
bf16), one compiled; rounds of 8 training steps alternate between them.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace

import torch

from resexp.models import build_model
from resexp.runtime import Runtime
from resexp.train import train_step


def main(depth: int, rounds: int = 12, steps: int = 8) -> None:
    torch.manual_seed(0)
    cpu = Runtime(torch.device("cpu"), torch.bfloat16, torch.channels_last)
    loops = {}
    for name, runtime in (("eager", cpu), ("compiled", replace(cpu, compile=True))):
        model = build_model(depth, True)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
        loops[name] = (runtime.prepare(model), optimizer)  # prepare moves the parameters in place
    x = torch.randn(128, 3, 32, 32).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (128,))

    start = time.perf_counter()
    train_step(*loops["compiled"], x, y, cpu)
    print(f"first compiled step (compiling): {time.perf_counter() - start:.1f} s")
    for _ in range(3):
        for model, optimizer in loops.values():
            train_step(model, optimizer, x, y, cpu)
    rates: dict[str, list[float]] = {name: [] for name in loops}
    for _ in range(rounds):
        for name, (model, optimizer) in loops.items():
            start = time.perf_counter()
            for _ in range(steps):
                train_step(model, optimizer, x, y, cpu)
            rates[name].append(steps * len(y) / (time.perf_counter() - start))
    for name, values in rates.items():
        median = sorted(values)[len(values) // 2]
        print(f"{name}: {[round(v) for v in values]} images/s, median {median:.0f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20)
