"""Training speed on the CPU of each network of the wider family (README's cost table).

One training step is what ``resexp train`` does per iteration: forward, cross-entropy, backward,
SGD with momentum and weight decay (He et al. 2015, sec. 4.2), fp32, NCHW. The inputs are random
(the data path is not what is measured here), one warm-up step, then steps until ``--seconds``
have passed (at least two). Writes one JSON with the CPU model, threads and torch version.

    python benchmarks/family_speed.py --out benchmarks/cpu/family.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from resexp.models import build_model, count_parameters, macs_per_image
from resexp.runtime import device_name

TORCHVISION = {"family": "imagenet", "stem": "imagenet", "shortcut": "B"}  # torchvision's nets

# (label, build_model keyword arguments, input side, batch size, classes)
NETWORKS = [
    ("ResNet-20", {"depth": 20}, 32, 128, 10),
    ("ResNet-164", {"depth": 164, "block": "bottleneck"}, 32, 128, 10),
    ("plain-164", {"depth": 164, "block": "bottleneck", "residual": False}, 32, 128, 10),
    ("ResNet-1001", {"depth": 1001, "block": "bottleneck"}, 32, 32, 10),
    ("ResNet-18", {"depth": 18, "family": "imagenet"}, 32, 128, 10),
    ("ResNet-34", {"depth": 34, "family": "imagenet"}, 32, 128, 10),
    ("ResNet-50", {"depth": 50, "family": "imagenet"}, 32, 128, 10),
    ("ResNet-101", {"depth": 101, "family": "imagenet"}, 32, 64, 10),
    ("ResNet-152", {"depth": 152, "family": "imagenet"}, 32, 64, 10),
    ("resnet18 (224x224)", {"depth": 18, **TORCHVISION}, 224, 16, 1000),
    ("resnet50 (224x224)", {"depth": 50, **TORCHVISION}, 224, 8, 1000),
    ("resnet152 (224x224)", {"depth": 152, **TORCHVISION}, 224, 8, 1000),
]


def images_per_second(
    model: torch.nn.Module, side: int, batch: int, classes: int, seconds: float
) -> tuple[float, int]:
    """Training images per second over timed steps (after one warm-up), and the steps timed."""
    x = torch.randn(batch, 3, side, side)
    y = torch.randint(0, classes, (batch,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    model.train()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    step()
    steps, start = 0, time.perf_counter()
    while steps < 2 or time.perf_counter() - start < seconds:
        step()
        steps += 1
    return steps * batch / (time.perf_counter() - start), steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=20.0, help="timed seconds per network")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for label, kwargs, side, batch, classes in NETWORKS:
        torch.manual_seed(0)
        model = build_model(num_classes=classes, **kwargs)
        rate, steps = images_per_second(model, side, batch, classes, args.seconds)
        rows.append(
            {
                "network": label,
                **kwargs,
                "input": side,
                "classes": classes,
                "batch": batch,
                "parameters": count_parameters(model),
                "macs_per_image": macs_per_image(model, side),
                "images_per_second": round(rate, 2),
                "steps": steps,
            }
        )
        print(f"{label:24s} batch {batch:4d}  {rate:8.1f} images/s  ({steps} steps)", flush=True)
    result = {
        "cpu": device_name(torch.device("cpu")),
        "threads": args.threads,
        "torch": torch.__version__,
        "precision": "fp32",
        "memory_format": "NCHW",
        "seconds_per_network": args.seconds,
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        "networks": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
