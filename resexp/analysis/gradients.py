"""Per-layer gradient norms, at initialization and at each saved checkpoint.

For each conv layer, the L2 norm of the gradient of the mean cross-entropy with respect to its
weights, on one fixed batch of training images (no augmentation), with BN in training mode as in
a training step (the BN running statistics are restored afterwards).

What the literature expects:
- He et al. 2015, sec. 4.1: with BN, the gradients of plain nets "exhibit healthy norms": the
  degradation problem is not vanishing gradients.
- Yang, Pennington, Rao, Sohl-Dickstein, Schoenholz 2019, "A Mean Field Theory of Batch
  Normalization" (arXiv 1902.08129): at initialization, BN makes the gradients of a net without
  shortcuts *explode* towards the input, exponentially with depth; identity shortcuts keep them
  within a small factor across layers (see also Balduzzi et al. 2017, sec. 4).

``resexp.tracking.log_gradient_stats`` writes the same per-layer norms (and weight histograms) to
TensorBoard from inside a training loop.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from resexp.analysis.common import (
    Output,
    Settings,
    integer_ticks,
    new_figure,
    pairs_by_depth,
    run_style,
)
from resexp.compare.figure import depth_colors
from resexp.compare.runs import Run

OPTIONS: dict[str, tuple[object, str]] = {
    "grad_images": (
        128,
        "training images in the one batch the gradients are taken on (the paper's mini-batch: 128)",
    ),
}

STATES = ("initialization", "previous checkpoint", "latest checkpoint")


def conv_layers(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """Every conv layer (3x3 layers, and option-B projections or highway gates), in model order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def conv_gradient_norms(model: nn.Module, x: Tensor, y: Tensor) -> list[tuple[str, float]]:
    """(layer name, L2 norm of d loss / d weight) for each conv layer, on the batch x, y, with BN
    in training mode. The model is left as it was: gradients come from ``torch.autograd.grad``
    (no ``.grad`` written), BN buffers are restored."""
    layers = conv_layers(model)
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    was_training = model.training
    model.train()
    try:
        loss = F.cross_entropy(model(x), y)
        grads = torch.autograd.grad(loss, [m.weight for _, m in layers])
    finally:
        model.train(was_training)
        with torch.no_grad():
            for k, v in model.named_buffers():
                v.copy_(buffers[k])
    norms = torch.stack([g.norm() for g in grads]).tolist()  # one device sync
    return [(name, n) for (name, _), n in zip(layers, norms, strict=True)]


def analyze_gradients(
    runs: list[Run], out: Output, settings: Settings, grad_images: int = 128
) -> None:
    """Per-layer conv gradient norms at init and at each saved checkpoint, plain vs residual."""
    rows = []
    curves: dict[tuple[Run, str], tuple[int, list[float]]] = {}
    total = sum(1 + _saved_checkpoints(r) for r in runs)  # init + each checkpoint
    with out.steps("states", total) as steps:
        for run in runs:
            x, y = settings.data(run).normalized("train", grad_images)
            saved = run.dir.checkpoints()
            states = [("initialization", 0, None)] + [
                ("latest checkpoint" if i == len(saved) - 1 else "previous checkpoint", it, sd)
                for i, (it, sd) in enumerate(saved)
            ]
            for state, iteration, state_dict in states:
                model = run.build()
                if state_dict is not None:
                    model.load_state_dict(state_dict)
                norms = conv_gradient_norms(settings.runtime.prepare(model), x, y)
                curves[run, state] = (iteration, [n for _, n in norms])
                at = {**run.identity, "state": state, "iteration": iteration}
                for i, (name, n) in enumerate(norms, start=1):
                    rows.append({**at, "layer": i, "name": name, "grad_norm": n})
                    out.writer.add_scalar(f"grad_norm/{run.arch}/seed{run.seed}/{state}", n, i)
                steps.tick(f"{run.label} {state}")

    out.csv("gradients", rows)
    _plot(out, runs, curves)

    init = {run: v for (run, state), (_, v) in curves.items() if state == "initialization"}
    first_over_last = {run: v[0] / v[-1] for run, v in init.items()}
    spread = {run: max(v) / min(v) for run, v in init.items()}
    plain = {r: q for r, q in first_over_last.items() if not r.residual}
    out.check(
        "at initialization, plain nets with BN have no vanishing gradients",
        "first-layer / last-layer gradient norm >= 0.1 (not orders of magnitude smaller)",
        ", ".join(f"{r.label} {q:.3g}" for r, q in plain.items()) or "no plain runs",
        all(q >= 0.1 for q in plain.values()) if plain else None,
        "He et al. 2015, sec. 4.1",
    )
    pairs = pairs_by_depth(spread)
    out.check(
        "at initialization, identity shortcuts keep gradient norms even across layers; "
        "without them BN makes gradients grow towards the input with depth",
        "max/min per-layer norm: resnet < plain at every depth",
        "; ".join(f"depth {d}: plain {p:.3g}, resnet {r:.3g}" for d, (p, r) in pairs.items())
        or "needs plain and residual runs of the same depth",
        all(r < p for p, r in pairs.values()) if pairs else None,
        "Yang et al. 2019; Balduzzi et al. 2017",
    )
    out.json(
        "gradients",
        {
            "measure": "L2 norm of d(mean cross-entropy)/d(conv weight), one batch of training "
            "images without augmentation, BN in training mode",
            "grad_images": grad_images,
            "runs": {
                run.label: {
                    "path": str(run.path),
                    "layers": [n for n, _ in conv_layers(run.build())],
                    "states": {
                        state: {"iteration": it, "grad_norms": v}
                        for (r, state), (it, v) in curves.items()
                        if r == run
                    },
                    "init_first_over_last": first_over_last[run],
                    "init_max_over_min": spread[run],
                }
                for run in runs
            },
        },
    )


def _saved_checkpoints(run: Run) -> int:
    files = (run.dir.previous_checkpoint_file, run.dir.checkpoint_file)
    return sum(f.exists() for f in files)


def _plot(
    out: Output, runs: list[Run], curves: dict[tuple[Run, str], tuple[int, list[float]]]
) -> None:
    present = [s for s in STATES if any(state == s for _, state in curves)]
    fig, axes = new_figure(1, len(present), size=(4.6, 3.6))
    colors = depth_colors([r.depth for r in runs])
    for ax, state in zip(axes[0], present, strict=True):
        labelled = set()
        for (run, s), (iteration, norms) in curves.items():
            if s != state:
                continue
            label = run.arch if run.arch not in labelled else None
            labelled.add(run.arch)
            if label and state != "initialization":
                label += f" (it {iteration})"
            y = [max(n, 1e-30) for n in norms]
            ax.plot(range(1, len(norms) + 1), y, label=label, **run_style(run, colors))
        ax.set_yscale("log")
        integer_ticks(ax)
        ax.set(xlabel="conv layer (input -> output)", ylabel="||dL/dW||", title=state)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.suptitle("Per-layer gradient norms on one batch (plain dashed, ResNet solid)")
    out.figure(fig, "gradients")
