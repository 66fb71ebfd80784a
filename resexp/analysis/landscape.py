"""Loss landscapes: Li, Xu, Taylor, Studer, Goldstein 2018, "Visualizing the Loss Landscape of
Neural Nets" (arXiv 1712.09913), secs. 4-5.

The loss is evaluated at w + a d1 (+ b d2) around the trained weights w, along random Gaussian
directions d that are *filter-normalized*: each filter of d (one output channel of a conv, one row
of the fc layer) is rescaled to the norm of the matching filter of w, which removes the scale
invariance that BN gives each filter. BN weights and biases, and every other 1-D parameter, get
zero in d (left fixed); BN running statistics are buffers, also fixed. Evaluation in eval mode,
without augmentation, on a fixed subset of training images.

Li et al. find that nets without shortcuts become chaotic and non-convex around the minimum as they
get deeper (their Fig. 5: plain-20 still looks convex, plain-56 and -110 do not), while ResNets stay
smooth and near-convex. Here the non-convexity of the plotted plane is measured as the fraction of
its interior points where the finite-difference Hessian has a negative eigenvalue larger than 10%
of its positive one (Li et al., Fig. 7, map |lambda_min / lambda_max| in the full weight space).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from resexp.analysis.common import (
    Output,
    Settings,
    batches,
    load_trained,
    new_figure,
    pairs_by_depth,
    run_style,
)
from resexp.compare.figure import depth_colors
from resexp.compare.runs import Run, group_by_arch
from resexp.errors import ConfigError
from resexp.train import error_and_loss

SOURCE = "Li et al. 2018, Fig. 5"
NONCONVEX_RATIO = 0.1  # a negative curvature counts when |lambda_min| > 10% of lambda_max

OPTIONS: dict[str, tuple[object, str]] = {
    "train_images": (
        500,
        "training images the loss is evaluated on, without augmentation "
        "(0: all); the common images option is not used here",
    ),
    "steps_1d": (21, "points along the random direction over [-span, span] (Li et al.: 51)"),
    "steps_2d": (9, "points per side of the 2-D grid (Li et al.: 51 x 51); 0: no 2-D plane"),
    "span": (1.0, "the plot covers [-span, span] in units of the filter-normalized direction"),
    "seed": (
        0,
        "seed of the random directions (the same for every run: plain and residual "
        "twins, which have the same parameter shapes, share them)",
    ),
    "all_seeds": (False, "every run; by default only the lowest seed of each architecture"),
}


def filter_normalized_direction(model: nn.Module, generator: torch.Generator) -> list[Tensor]:
    """A random filter-normalized direction, a tensor per parameter of ``model``, drawn on the
    CPU from ``generator`` (the same on any device), then moved to the parameters' device."""
    direction = []
    for p in model.parameters():
        d = torch.randn(p.shape, generator=generator).to(p.device, p.dtype)
        if p.dim() <= 1:  # BN weights and biases, fc bias: not perturbed
            direction.append(torch.zeros_like(p))
            continue
        w = p.detach()
        scale = w.flatten(1).norm(dim=1) / (d.flatten(1).norm(dim=1) + 1e-10)  # (filters,)
        direction.append(d * scale.view(-1, *[1] * (p.dim() - 1)))
    return direction


@torch.no_grad()
def loss_surface(
    model: nn.Module,
    directions: list[list[Tensor]],
    coords: Tensor,
    x: Tensor,
    y: Tensor,
    batch_size: int,
    on_point: Callable[[], None] | None = None,
) -> tuple[Tensor, Tensor]:
    """Loss and error (%) at w + sum_j coords[i, j] * directions[j], for each row i of ``coords``
    (points, len(directions)). The weights are restored afterwards."""
    params = list(model.parameters())
    base = [p.detach().clone() for p in params]
    was_training = model.training
    model.eval()
    losses, errors = torch.empty(len(coords)), torch.empty(len(coords))
    try:
        for i, c in enumerate(coords.tolist()):
            for j, p in enumerate(params):
                p.copy_(base[j])
                for a, d in zip(c, directions, strict=True):
                    p.add_(d[j], alpha=a)
            errors[i], losses[i] = error_and_loss(model, batches(x, y, batch_size))
            if on_point is not None:
                on_point()
    finally:
        for p, w in zip(params, base, strict=True):
            p.copy_(w)
        model.train(was_training)
    return losses, errors


def nonconvex_fraction_1d(loss: Tensor) -> float:
    """Fraction of interior points where the curve bends down (second difference < 0)."""
    second = loss[2:] - 2 * loss[1:-1] + loss[:-2]
    tol = 1e-6 * float(loss.abs().max())
    return float((second < -tol).float().mean()) if len(second) else math.nan


def nonconvex_fraction_2d(loss: Tensor, ratio: float = NONCONVEX_RATIO) -> float:
    """Fraction of interior grid points whose 2x2 finite-difference Hessian has a negative
    eigenvalue with |lambda_min| > ratio * |lambda_max|. ``loss`` is (n, n) on an even grid."""
    f = loss.double()
    fxx = f[2:, 1:-1] - 2 * f[1:-1, 1:-1] + f[:-2, 1:-1]  # the grid spacing cancels in the ratio
    fyy = f[1:-1, 2:] - 2 * f[1:-1, 1:-1] + f[1:-1, :-2]
    fxy = (f[2:, 2:] - f[2:, :-2] - f[:-2, 2:] + f[:-2, :-2]) / 4
    mid, rad = (fxx + fyy) / 2, (((fxx - fyy) / 2) ** 2 + fxy**2).sqrt()
    lo, hi = mid - rad, mid + rad
    bad = (lo < 0) & (lo.abs() > ratio * hi.abs())
    return float(bad.double().mean()) if bad.numel() else math.nan


def analyze_landscape(
    runs: list[Run],
    out: Output,
    settings: Settings,
    train_images: int = 500,
    steps_1d: int = 21,
    steps_2d: int = 9,
    span: float = 1.0,
    seed: int = 0,
    all_seeds: bool = False,
) -> None:
    """Loss along 1 and on 2 filter-normalized random directions (Li et al. 2018)."""
    if steps_1d < 3 or (steps_2d and steps_2d < 3):
        raise ConfigError("steps_1d and steps_2d need at least 3 points (steps_2d=0: no plane)")
    if not all_seeds:
        runs = [group[0] for group in group_by_arch(runs).values()]
    alphas = torch.linspace(-span, span, steps_1d)
    grid = torch.linspace(-span, span, steps_2d) if steps_2d else torch.empty(0)
    plane = torch.cartesian_prod(grid, grid) if steps_2d else torch.empty(0, 2)
    rows, results = [], {}
    with out.steps("points", len(runs) * (steps_1d + len(plane))) as steps:
        for run in runs:
            model, iteration = load_trained(run, settings.runtime)
            x, y = settings.data(run).normalized("train", train_images)
            generator = torch.Generator().manual_seed(seed)
            d1 = filter_normalized_direction(model, generator)
            d2 = filter_normalized_direction(model, generator)
            bs = settings.batch_size
            loss_1d, err_1d = loss_surface(model, [d1], alphas[:, None], x, y, bs, steps.tick)
            result: dict[str, Any] = {
                "path": str(run.path),
                "iteration": iteration,
                "images": len(y),
                "alphas": alphas.tolist(),
                "loss_1d": loss_1d.tolist(),
                "error_1d": err_1d.tolist(),
                "nonconvex_fraction_1d": nonconvex_fraction_1d(loss_1d),
            }
            rows += _rows(run, "1d", alphas[:, None], loss_1d, err_1d)
            if steps_2d:
                loss_2d, err_2d = loss_surface(model, [d1, d2], plane, x, y, bs, steps.tick)
                loss_2d, err_2d = loss_2d.view(steps_2d, steps_2d), err_2d.view(steps_2d, steps_2d)
                result.update(
                    grid=grid.tolist(),
                    loss_2d=loss_2d.tolist(),
                    error_2d=err_2d.tolist(),
                    nonconvex_fraction_2d=nonconvex_fraction_2d(loss_2d),
                )
                rows += _rows(run, "2d", plane, loss_2d, err_2d)
            for i, v in enumerate(loss_1d.tolist()):
                out.writer.add_scalar(f"landscape/{run.arch}/seed{run.seed}/loss_1d", v, i)
            results[run] = result

    out.csv("landscape", rows)
    _plot_1d(out, runs, results)
    if steps_2d:
        _plot_2d(out, results)

    key = "nonconvex_fraction_2d" if steps_2d else "nonconvex_fraction_1d"
    pairs = pairs_by_depth({run: r[key] for run, r in results.items()})
    out.check(
        "with shortcuts the landscape around the minimum is smoother and closer to convex; "
        "Li et al. see the difference from depth 56 on (plain-20 still looks convex)",
        f"{key.replace('_', ' ')}: resnet <= plain at every depth (within 0.05)",
        "; ".join(f"depth {d}: plain {p:.2f}, resnet {r:.2f}" for d, (p, r) in pairs.items())
        or "needs plain and residual runs of the same depth",
        all(r <= p + 0.05 for p, r in pairs.values()) if pairs else None,
        SOURCE,
    )
    out.json(
        "landscape",
        {
            "measure": "mean cross-entropy and error (%) at w + a*d1 + b*d2, filter-normalized "
            "random directions (BN and bias entries zero), eval mode, training images without "
            "augmentation",
            "span": span,
            "seed": seed,
            "nonconvex_ratio": NONCONVEX_RATIO,
            "runs": {run.label: r for run, r in results.items()},
        },
    )


def _rows(run: Run, kind: str, coords: Tensor, loss: Tensor, error: Tensor) -> list[dict]:
    """The CSV rows of a line (``coords`` (points, 1): beta 0) or a plane (points, 2)."""
    ab = coords if coords.shape[1] == 2 else torch.cat([coords, torch.zeros_like(coords)], 1)
    points = zip(ab.tolist(), loss.flatten().tolist(), error.flatten().tolist(), strict=True)
    return [
        {**run.identity, "kind": kind, "alpha": a, "beta": b, "loss": lo, "error": e}
        for (a, b), lo, e in points
    ]


def _plot_1d(out: Output, runs: list[Run], results: dict[Run, dict]) -> None:
    depths = sorted({r.depth for r in results})
    fig, axes = new_figure(2, len(depths), size=(4.2, 3.0))
    colors = depth_colors([r.depth for r in runs])
    for col, depth in enumerate(depths):
        for run, r in results.items():
            if run.depth != depth:
                continue
            style = run_style(run, colors, lw=1.4)
            axes[0, col].plot(r["alphas"], r["loss_1d"], label=run.label, **style)
            axes[1, col].plot(r["alphas"], r["error_1d"], label=run.label, **style)
        axes[0, col].set(title=f"depth {depth}", ylabel="training loss", yscale="log")
        axes[1, col].set(xlabel="alpha (filter-normalized direction)", ylabel="training error (%)")
        axes[0, col].legend(fontsize=7)
        for ax in axes[:, col]:
            ax.grid(alpha=0.3, which="both")
    fig.suptitle("Loss along one random direction, Li et al. 2018 (plain dashed, ResNet solid)")
    out.figure(fig, "landscape_1d")


def _plot_2d(out: Output, results: dict[Run, dict]) -> None:
    depths = sorted({r.depth for r in results})
    kinds = sorted({(r.block, r.residual) for r in results})  # plain before residual
    fig, axes = new_figure(len(depths), len(kinds), size=(3.7, 3.4))
    all_loss = torch.tensor([v for r in results.values() for row in r["loss_2d"] for v in row])
    lo = math.log10(max(float(all_loss.min()), 1e-6))
    hi = max(math.log10(float(all_loss.max())), lo + 0.1)
    levels = torch.linspace(lo, hi, 25).tolist()  # the same levels in every panel
    panels: dict[tuple, tuple[Run, dict]] = {}  # (depth, block, residual): its first run
    for run, r in results.items():
        panels.setdefault((run.depth, run.block, run.residual), (run, r))
    contours = None
    for row, depth in enumerate(depths):
        for col, kind in enumerate(kinds):
            ax, key = axes[row, col], (depth, *kind)
            if key not in panels:
                ax.set_axis_off()
                continue
            run, r = panels[key]
            g = r["grid"]
            z = torch.tensor(r["loss_2d"]).clamp_min(1e-6).log10().T  # rows: beta, cols: alpha
            contours = ax.contour(g, g, z.numpy(), levels=levels, cmap="viridis", linewidths=0.9)
            ax.plot([0], [0], "r*", ms=7)
            ax.set(
                title=f"{run.label}\nnon-convex fraction {r['nonconvex_fraction_2d']:.2f}",
                xlabel="alpha",
                ylabel="beta",
                aspect="equal",
            )
    if contours is not None:
        fig.colorbar(contours, ax=axes.ravel().tolist(), label="log10 training loss", shrink=0.8)
    fig.suptitle("Loss on a plane of two filter-normalized directions, Li et al. 2018")
    out.figure(fig, "landscape_2d")
