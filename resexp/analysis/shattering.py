"""Shattered gradients: Balduzzi, Frean, Leary, Lewis, Ma, McWilliams 2017, "The Shattered Gradients
Problem: If resnets are the answer, then what is the question?" (arXiv 1702.08591), secs. 2-3.

Networks that map a scalar to a scalar, at initialization: ``depth`` hidden layers of 200 ReLU
units with BN, He-initialized, either plain (h <- relu(BN(W h))) or residual with pre-activation
blocks (h <- h + W relu(BN(h))) after the input layer; twins layer for layer (``ScalarNet``). The
gradient dy/dx is taken at 256 inputs evenly spaced in [-2, 2] (Balduzzi et al.'s setting).
BN uses the statistics of those 256 inputs, frozen after one pass (eval mode), so that each
point's gradient is that of one fixed function, without the batch's cross terms.

What the literature expects: the correlation between gradients at neighbouring inputs decays
exponentially with depth in plain nets (about 2^-L; the gradients look like white noise), and
only sublinearly with skip connections (about 1/sqrt(L); brown noise). Measured here: the
normalised autocorrelation of the 256 gradients, averaged over several random nets; its lag-1
value is the "correlation between neighbouring gradients".

With ``cifar`` and a target holding runs, the same is measured on the CIFAR nets: the gradient of
one logit with respect to t along the line (1 - t) x_a + t x_b between two test images (averaged
over a few pairs), at initialization (BN statistics from the test images) and after training.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from resexp.analysis.common import (
    Output,
    Settings,
    line_style,
    load_trained,
    new_figure,
    pairs_by_depth,
    run_style,
)
from resexp.compare.figure import depth_colors
from resexp.compare.runs import Run, group_by_arch

SOURCE = "Balduzzi et al. 2017, secs. 2-3"
NOISE_LEVEL = 0.1  # |lag-1 autocorrelation| below this counts as white noise

OPTIONS: dict[str, tuple[object, str]] = {
    "depths": ((1, 2, 4, 8, 16, 32, 64), "depths L of the scalar nets (comma-separated)"),
    "width": (200, "ReLU units per hidden layer (Balduzzi et al.: 200)"),
    "points": (256, "inputs evenly spaced in [-2, 2] (Balduzzi et al.: 256)"),
    "nets": (8, "random nets per depth and kind; the autocorrelations are averaged"),
    "max_lag": (64, "largest lag of the autocorrelation that is saved and plotted"),
    "seed": (0, "seed of the first random net"),
    "cifar": (True, "also measure the CIFAR nets of the target's runs along a line of images"),
    "image_pairs": (3, "CIFAR part: pairs of test images (lines), autocorrelations averaged"),
}


# ----------------------------------------------------------------------------------------------
# The scalar networks


class ScalarNet(nn.Module):
    """1 -> ``width`` ReLU units x ``depth`` layers -> 1, plain or residual, with BN.

    The twins match layer for layer: the same ``depth`` linear layers of ``width`` units before
    the output (the input layer counted), the same ``depth`` BN + ReLU pairs, the same number of
    parameters. Plain: ``h <- relu(bn(linear(h)))`` ``depth`` times. Residual (Balduzzi et al.
    2017's pre-activation form): the input layer, then ``depth - 1`` blocks
    ``h <- h + linear(relu(bn(h)))``, then ``relu(bn(h))`` into the output.
    """

    def __init__(self, depth: int, width: int = 200, residual: bool = False) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        self.residual = residual
        self.input = nn.Linear(1, width)
        self.hidden = nn.ModuleList(nn.Linear(width, width) for _ in range(depth - 1))
        # momentum=None: the running statistics are the plain average of the batches seen
        self.norms = nn.ModuleList(nn.BatchNorm1d(width, momentum=None) for _ in range(depth))
        self.output = nn.Linear(width, 1)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")  # He et al. 2015
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        h = self.input(x)  # (N, width)
        if self.residual:
            for linear, bn in zip(self.hidden, self.norms[:-1], strict=True):
                h = h + linear(torch.relu(bn(h)))
            return self.output(torch.relu(self.norms[-1](h)))  # (N, 1)
        h = torch.relu(self.norms[0](h))
        for linear, bn in zip(self.hidden, self.norms[1:], strict=True):
            h = torch.relu(bn(linear(h)))
        return self.output(h)  # (N, 1)


def input_gradients(net: nn.Module, x: Tensor) -> Tensor:
    """dy/dx at each input of ``x`` (N, 1), after fixing BN to the statistics of ``x``."""
    calibrate_bn(net, x, len(x))  # one pass, and eval mode
    x = x.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(net(x).sum(), x)  # eval-mode BN: row i depends on x_i only
    return grad.flatten()


def autocorrelation(g: Tensor, max_lag: int | None = None) -> Tensor:
    """Normalised autocorrelation r(k) = sum_i (g_i - m)(g_{i+k} - m) / sum_i (g_i - m)^2.

    The biased estimator (as ``numpy.correlate(g, g, "full")`` on the centred sequence, divided by
    its lag-0 value): r(0) = 1, |r(k)| <= 1. NaN for a constant sequence.
    """
    g = g.detach().cpu().double()  # on the host: MPS has no float64
    g = g - g.mean()
    n = len(g)
    max_lag = n - 1 if max_lag is None else min(max_lag, n - 1)
    var = (g * g).sum()
    if var == 0:
        return torch.full((max_lag + 1,), math.nan, dtype=torch.float64)
    return torch.stack([(g[: n - k] * g[k:]).sum() / var for k in range(max_lag + 1)])


# ----------------------------------------------------------------------------------------------
# The analysis


def analyze_shattering(
    runs: list[Run],
    out: Output,
    settings: Settings,
    depths: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64),
    width: int = 200,
    points: int = 256,
    nets: int = 8,
    max_lag: int = 64,
    seed: int = 0,
    cifar: bool = True,
    image_pairs: int = 3,
) -> None:
    """Autocorrelation of dy/dx along a line of inputs, plain vs residual, at initialization."""
    depths = tuple(sorted(int(d) for d in depths))
    x = torch.linspace(-2, 2, points, device=settings.runtime.device)[:, None]  # (points, 1)
    acf: dict[tuple[bool, int], Tensor] = {}
    examples: dict[tuple[bool, int], Tensor] = {}
    lag1: dict[tuple[bool, int], list[float]] = {}
    with out.steps("depths", 2 * len(depths)) as steps:
        for residual in (False, True):
            for depth in depths:
                curves = []
                for i in range(nets):
                    torch.manual_seed(seed + i)
                    net = settings.runtime.prepare(ScalarNet(depth, width, residual))
                    g = input_gradients(net, x).cpu()
                    if i == 0:
                        examples[residual, depth] = g
                    curves.append(autocorrelation(g, max_lag))
                stacked = torch.stack(curves)
                acf[residual, depth] = stacked.nanmean(0)
                lag1[residual, depth] = stacked[:, 1].tolist()
                kind, r1 = "resnet" if residual else "plain", float(acf[residual, depth][1])
                steps.tick(f"{kind} L={depth}: lag-1 {r1:.3f}")
                out.writer.add_scalar(f"shattering/lag1_{kind}", r1, depth)

    rows = []
    for (res, d), curve in acf.items():
        rows += _acf_rows("scalar", "resnet" if res else "plain", d, curve)
    summary = _checks(out, depths, acf)
    _plot_scalar(out, depths, acf, examples, x.cpu().flatten())

    cifar_result = {}
    if cifar and runs:
        cifar_result = _cifar(runs, out, settings, points, max_lag, image_pairs, rows)
    out.csv("shattering", rows)
    out.json(
        "shattering",
        {
            "measure": "normalised autocorrelation of dy/dx at inputs evenly spaced in [-2, 2], "
            "nets at initialization, averaged over random nets",
            "setting": {
                "width": width,
                "points": points,
                "nets": nets,
                "seed": seed,
                "batch_norm": "statistics of the inputs, frozen (eval mode)",
            },
            "lag1": {
                kind: {str(d): float(acf[res, d][1]) for d in depths}
                for kind, res in (("plain", False), ("resnet", True))
            },
            "lag1_per_net": {
                kind: {str(d): lag1[res, d] for d in depths}
                for kind, res in (("plain", False), ("resnet", True))
            },
            **summary,
            "cifar": cifar_result,
        },
    )


def _checks(out: Output, depths: tuple[int, ...], acf: dict) -> dict:
    plain = {d: float(acf[False, d][1]) for d in depths}
    res = {d: float(acf[True, d][1]) for d in depths}
    # Exponential fit of the plain curve: log r1 = a + L log b, on the depths above the noise.
    above = [(d, r) for d, r in plain.items() if r > NOISE_LEVEL]
    b = _slope([d for d, _ in above], [math.log(r) for _, r in above])
    base = math.exp(b) if b is not None else math.nan
    white = [d for d, r in plain.items() if abs(r) < NOISE_LEVEL]
    out.check(
        "without skip connections the correlation of neighbouring gradients decays exponentially "
        "with depth (about 2^-L), down to white noise",
        f"lag-1 autocorrelation falls with depth, ever faster, to white noise (|r1| < "
        f"{NOISE_LEVEL}) by the largest depth (2^-L is for inputs with independent activation "
        "patterns; neighbouring inputs start near 1)",
        "plain r1 "
        + ", ".join(f"L={d}: {r:.3f}" for d, r in plain.items())
        + f"; fitted factor per layer {base:.2f} (depths with r1 > {NOISE_LEVEL}); white noise "
        + (f"from L={white[0]}" if white else "at no depth"),
        bool(white) and white[-1] == depths[-1] and plain[depths[0]] > plain[depths[-1]],
        SOURCE,
    )
    # Power-law fit of the residual curve: log r1 = a + p log L.
    positive = [(d, r) for d, r in res.items() if r > 0]
    p = _slope([math.log(d) for d, _ in positive], [math.log(r) for _, r in positive])
    deeper = [d for d in depths if d >= 4]
    out.check(
        "with skip connections it decays only sublinearly (about 1/sqrt(L)): brown noise",
        "resnet r1 decays like L^p with -1 < p <= 0 (p = -0.5 for 1/sqrt(L)) and stays above "
        "the plain r1 from L=4 on",
        "resnet r1 "
        + ", ".join(f"L={d}: {r:.3f}" for d, r in res.items())
        + (f"; fitted exponent p = {p:.2f} ({_versus_sqrt(p)})" if p is not None else ""),
        p is not None and -1 < p <= 0.05 and all(res[d] > plain[d] for d in deeper),
        SOURCE,
    )
    return {"plain_factor_per_layer": base, "resnet_power_exponent": p, "noise_level": NOISE_LEVEL}


def _acf_rows(net: str, kind: str, depth: int, curve: Tensor) -> list[dict]:
    """The CSV rows of one autocorrelation curve, one per lag."""
    return [
        {"net": net, "kind": kind, "depth": depth, "lag": k, "autocorrelation": v}
        for k, v in enumerate(curve.tolist())
    ]


def _versus_sqrt(p: float) -> str:
    if p > -0.4:
        return "slower than 1/sqrt(L)"
    return "faster than 1/sqrt(L)" if p < -0.6 else "about 1/sqrt(L)"


def _slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of ys on xs; None with fewer than 2 points."""
    if len(xs) < 2:
        return None
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((a - mx) ** 2 for a in xs)
    return sum((a - mx) * (b - my) for a, b in zip(xs, ys, strict=True)) / sxx if sxx else None


def _plot_scalar(out: Output, depths, acf, examples, x: Tensor) -> None:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    colors = {d: cmap(i / max(len(depths) - 1, 1)) for i, d in enumerate(depths)}
    shown = [d for d in depths if d in (depths[0], depths[len(depths) // 2], depths[-1])]
    fig, axes = new_figure(2, 3, size=(4.4, 3.0))
    for row, residual in enumerate((False, True)):
        kind = "resnet" if residual else "plain"
        for d in shown:
            g = examples[residual, d]
            axes[row, 0].plot(
                x, g / g.abs().max().clamp_min(1e-12), color=colors[d], lw=0.8, label=f"L={d}"
            )
        axes[row, 0].set(title=f"{kind}: dy/dx (scaled to max 1)", xlabel="input x")
        for d in depths:
            axes[row, 1].plot(acf[residual, d], color=colors[d], lw=1.2, label=f"L={d}")
        axes[row, 1].set(title=f"{kind}: autocorrelation", xlabel="lag", ylim=(-0.3, 1.05))
        axes[row, 0].legend(fontsize=7)
        axes[row, 1].legend(fontsize=7, ncol=2)
    ax = axes[0, 2]
    for residual in (False, True):
        r1 = [float(acf[residual, d][1]) for d in depths]
        ax.plot(
            depths,
            [max(v, 1e-3) for v in r1],
            marker="o",
            linestyle=line_style(residual),
            color="C1" if residual else "C0",
            label="resnet" if residual else "plain",
        )
    # the two laws, through the plain and the residual value at the smallest depth
    d0, p0, r0 = depths[0], float(acf[False, depths[0]][1]), float(acf[True, depths[0]][1])
    ax.plot(depths, [p0 * 2.0 ** (d0 - d) for d in depths], ":", color="grey", label="2^-L")
    ax.plot(depths, [r0 * (d0 / d) ** 0.5 for d in depths], "-.", color="grey", label="1/sqrt(L)")
    ax.axhline(NOISE_LEVEL, color="red", lw=0.6, alpha=0.5)
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="depth L",
        ylabel="lag-1 autocorrelation",
        title="neighbouring gradients",
        ylim=(1e-3, 1.5),
    )
    ax.legend(fontsize=7)
    table = ["lag-1 autocorrelation", "", f"{'L':>4} {'plain':>7} {'resnet':>7}"]
    table += [
        f"{d:>4} {float(acf[False, d][1]):>7.3f} {float(acf[True, d][1]):>7.3f}" for d in depths
    ]
    axes[1, 2].text(0.1, 0.95, "\n".join(table), family="monospace", va="top", fontsize=9)
    axes[1, 2].set_axis_off()
    fig.suptitle("Shattered gradients at initialization, Balduzzi et al. 2017 (width 200, BN)")
    out.figure(fig, "shattering")


# ----------------------------------------------------------------------------------------------
# The CIFAR nets: one logit along a line between two test images


def line_gradients(model: nn.Module, xa: Tensor, xb: Tensor, points: int, logit: int) -> Tensor:
    """d logit / dt at ``points`` values of t in [0, 1], inputs (1 - t) xa + t xb; eval mode."""
    t = torch.linspace(0, 1, points, device=xa.device).requires_grad_(True)
    x = (1 - t)[:, None, None, None] * xa + t[:, None, None, None] * xb  # (points, 3, 32, 32)
    model.eval()
    (grad,) = torch.autograd.grad(model(x)[:, logit].sum(), t)
    return grad.detach()


@torch.no_grad()
def calibrate_bn(model: nn.Module, x: Tensor, batch_size: int) -> None:
    """Set every BN's running statistics to those of ``x`` (the init's are 0 and 1)."""
    saved = {}
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            saved[m], m.momentum = m.momentum, None  # cumulative average over the batches
    model.train()
    for start in range(0, len(x), batch_size):
        model(x[start : start + batch_size])
    for m, momentum in saved.items():
        m.momentum = momentum
    model.eval()


def _cifar(
    runs: list[Run],
    out: Output,
    settings: Settings,
    points: int,
    max_lag: int,
    image_pairs: int,
    rows: list,
) -> dict:
    result: dict[str, dict[str, Any]] = {}
    runs = [group[0] for group in group_by_arch(runs).values()]
    curves = {}
    with out.steps("cifar nets", len(runs)) as steps:
        for run in runs:
            x, y = settings.data(run).normalized("test", settings.images)
            n_pairs = min(image_pairs, len(x) // 2)
            trained, iteration = load_trained(run, settings.runtime)
            init = settings.runtime.prepare(run.build())
            calibrate_bn(init, x, settings.batch_size)
            entry: dict[str, Any] = {
                "path": str(run.path),
                "iteration": iteration,
                "image_pairs": n_pairs,
            }
            # images 2i and 2i + 1, the logit of the first one's class; averaged over pairs
            lines = [(x[2 * i], x[2 * i + 1], int(y[2 * i])) for i in range(n_pairs)]
            for state, model in (("initialization", init), ("trained", trained)):
                grads = [line_gradients(model, a, b, points, logit).cpu() for a, b, logit in lines]
                r = torch.stack([autocorrelation(g, max_lag) for g in grads]).nanmean(0)
                curves[run, state] = r
                entry[state] = {"lag1": float(r[1]), "autocorrelation": r.tolist()}
                rows += _acf_rows(run.label, state, run.depth, r)
            result[run.label] = entry
            steps.tick(f"{run.label}: lag-1 init {entry['initialization']['lag1']:.3f}")

    fig, axes = new_figure(1, 2, size=(4.6, 3.4))
    colors = depth_colors([r.depth for r in runs])
    for col, state in enumerate(("initialization", "trained")):
        for run in runs:
            axes[0, col].plot(curves[run, state], label=run.arch, **run_style(run, colors, lw=1.5))
        axes[0, col].set(title=f"CIFAR nets, {state}", xlabel="lag", ylabel="autocorrelation")
        axes[0, col].legend(fontsize=7)
        axes[0, col].grid(alpha=0.3)
    fig.suptitle("d logit / dt along a line between two test images (plain dashed, ResNet solid)")
    out.figure(fig, "shattering_cifar")

    pairs = pairs_by_depth({run: result[run.label]["initialization"]["lag1"] for run in runs})
    out.check(
        "CIFAR nets at init: a ResNet's gradients are less shattered than its plain twin's",
        "lag-1 autocorrelation along the image line: resnet >= plain at every depth",
        "; ".join(f"depth {d}: plain {p:.3f}, resnet {r:.3f}" for d, (p, r) in pairs.items())
        or "needs plain and residual runs of the same depth",
        all(r >= p for p, r in pairs.values()) if pairs else None,
        "Balduzzi et al. 2017, sec. 4",
    )
    return result
