"""Layer responses: He, Zhang, Ren, Sun 2015, "Deep Residual Learning", Figure 7.

The response of a 3x3 layer is its output after BN and before the ReLU or the addition (the
output of ``bn1`` and ``bn2`` in every block, and of the stem's ``bn1``); its standard deviation is
taken over every value the layer outputs on the test images (all images, channels and pixels), in
eval mode, i.e. with the BN running statistics the network was tested with. The paper finds that
ResNets respond less than their plain twins and deeper ResNets less still: the residual functions
are closer to zero than the unreferenced functions a plain net learns.

In a pre-activation block (He et al. 2016) the BN comes before its conv, so there the response is
the conv's own output (what reaches the addition or the next BN).
"""

from __future__ import annotations

import itertools
import math
from typing import cast

import torch
from torch import Tensor, nn

from resexp.analysis.common import (
    Output,
    Settings,
    batches,
    integer_ticks,
    load_trained,
    new_figure,
    pairs_by_depth,
    run_style,
)
from resexp.compare.figure import depth_colors
from resexp.compare.runs import Run, group_by_arch
from resexp.errors import ConfigError
from resexp.models import ResNet
from resexp.runtime import float64_device

SOURCE = "He et al. 2015, Fig. 7"

OPTIONS: dict[str, tuple[object, str]] = {
    "split": ("test", "images the responses are measured on: test (as in the paper) or train"),
}


def response_modules(model: ResNet) -> list[tuple[str, nn.Module]]:
    """(name, module) whose outputs are the 3x3 layers' responses, in the order of the layers."""
    names = {m: n for n, m in model.named_modules()}
    modules: list[nn.Module] = [model.bn1]
    for block in model.blocks():
        # cast: nn.Module.__getattr__ is typed Tensor | Module; these are the block's layers.
        if model.block == "preact":
            modules += [cast(nn.Module, block.conv1), cast(nn.Module, block.conv2)]
        else:
            modules += [cast(nn.Module, block.bn1), cast(nn.Module, block.bn2)]
    return [(names[m], m) for m in modules]


@torch.no_grad()
def layer_response_stds(model: ResNet, x: Tensor, batch_size: int) -> list[tuple[str, float]]:
    """The std of each 3x3 layer's response over all of ``x`` (N, 3, 32, 32), in eval mode.

    Sums and sums of squares are accumulated in float64, so the result does not depend on the
    batch size; on MPS, which has no float64, each batch's sums are float32 and their total is
    kept in float64 on the host.
    """
    layers = response_modules(model)
    wide = float64_device(x.device)
    sums = torch.zeros(len(layers), 3, dtype=torch.float64, device=wide)  # n, sum, sum sq

    def hook(i: int):
        def record(_m: nn.Module, _inp: tuple[Tensor, ...], out: Tensor) -> None:
            v = out.detach().double() if wide == x.device else out.detach().float()
            sums[i, 0] += v.numel()
            sums[i, 1] += v.sum().to(wide)
            sums[i, 2] += (v * v).sum().to(wide)

        return record

    handles = [m.register_forward_hook(hook(i)) for i, (_, m) in enumerate(layers)]
    was_training = model.training
    model.eval()
    try:
        for xb, _ in batches(x, x, batch_size):
            model(xb)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    n, s, sq = sums.cpu().unbind(1)
    var = (sq - s * s / n) / (n - 1)  # unbiased, like torch.std
    return [
        (name, math.sqrt(max(v, 0.0))) for (name, _), v in zip(layers, var.tolist(), strict=True)
    ]


def analyze_responses(
    runs: list[Run], out: Output, settings: Settings, split: str = "test"
) -> None:
    """Std of each 3x3 layer's response (after BN) on test images; He et al. 2015, Fig. 7."""
    if split not in ("test", "train"):
        raise ConfigError(f"split must be test or train, not {split!r}")
    rows = []
    per_run: dict[Run, list[float]] = {}
    layer_names: dict[Run, list[str]] = {}
    with out.steps("runs", len(runs)) as steps:
        for run in runs:
            model, iteration = load_trained(run, settings.runtime)
            x, _ = settings.data(run).normalized(split, settings.images)
            n_images = len(x)
            stds = layer_response_stds(model, x, settings.batch_size)
            per_run[run] = [s for _, s in stds]
            layer_names[run] = [name for name, _ in stds]
            for i, (name, s) in enumerate(stds, start=1):
                rows.append(
                    {**run.identity, "iteration": iteration, "layer": i, "name": name, "std": s}
                )
                out.writer.add_scalar(f"responses/{run.arch}/seed{run.seed}", s, i)
            steps.tick(f"{run.label}: mean std {sum(per_run[run]) / len(stds):.3f}")

    out.csv("responses", rows)
    _plot(out, runs, per_run)

    means = {run: sum(v) / len(v) for run, v in per_run.items()}
    pairs = pairs_by_depth(means)
    measured = "; ".join(f"depth {d}: plain {p:.3f}, resnet {r:.3f}" for d, (p, r) in pairs.items())
    out.check(
        "ResNets respond less than plain nets of the same depth (mean std over layers)",
        "resnet < plain at every depth",
        measured or "needs plain and residual runs of the same depth",
        all(r < p for p, r in pairs.values()) if pairs else None,
        SOURCE,
    )
    resnet: dict[int, list[float]] = {}
    for run, m in means.items():
        if run.residual and run.block == "basic":
            resnet.setdefault(run.depth, []).append(m)
    trend = [(d, sum(v) / len(v)) for d, v in sorted(resnet.items())]
    out.check(
        "deeper ResNets respond less (mean std over layers)",
        "falls with depth",
        ", ".join(f"resnet-{d} {m:.3f}" for d, m in trend) or "no ResNet runs",
        all(b[1] < a[1] for a, b in itertools.pairwise(trend)) if len(trend) > 1 else None,
        SOURCE,
    )
    out.json(
        "responses",
        {
            "measure": "std of each 3x3 layer's output after BN (before ReLU/addition), eval mode",
            "split": split,
            "images": n_images,
            "runs": {
                run.label: {
                    "path": str(run.path),
                    "mean_std": means[run],
                    "stds": v,
                    "layers": layer_names[run],
                }
                for run, v in per_run.items()
            },
        },
    )


def _plot(out: Output, runs: list[Run], per_run: dict[Run, list[float]]) -> None:
    fig, axes = new_figure(1, 2, size=(5.5, 3.8))
    colors = depth_colors([r.depth for r in runs])
    for arch, group in group_by_arch(runs).items():
        stds = torch.tensor([per_run[r] for r in group]).mean(0)  # mean over seeds
        run = group[0]
        style = run_style(run, colors)
        layer = range(1, len(stds) + 1)
        axes[0, 0].plot(layer, stds, label=arch, **style)
        axes[0, 1].plot(layer, stds.sort(descending=True).values, label=arch, **style)
    axes[0, 0].set(xlabel="layer index (original)", ylabel="std", title="(a) responses by layer")
    axes[0, 1].set(xlabel="layer index (sorted by magnitude)", ylabel="std", title="(b) sorted")
    for ax in axes[0]:
        integer_ticks(ax)
        ax.grid(alpha=0.3)
    axes[0, 1].legend(fontsize=8)
    fig.suptitle("Std of 3x3 layer responses (plain dashed, ResNet solid); He et al. 2015, Fig. 7")
    out.figure(fig, "responses")
