"""Figure 6 of He et al. 2015 from a study's runs: plain nets left, residual nets right, one
colour per depth; over several seeds, the mean curve with a min-max band."""

from __future__ import annotations

import math
import statistics
from typing import TYPE_CHECKING, Any

from resexp.compare.references import PAPER_ITERATIONS
from resexp.compare.runs import Network, Run

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# The paper's colours, roughly: one per depth, the same on both panels.
DEPTH_COLORS = {20: "#e69f00", 32: "#1f77b4", 44: "#2ca02c", 56: "#d62728", 110: "#000000"}
EXTRA_COLORS = ["#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"]
MARKERS = [None, "o", "s", "^", "D"]  # a second block in one panel (preact beside resnet)
# He et al. 2015, Figure 6: training error thin dashed, test error bold (keyword arguments of
# matplotlib's plot and Line2D).
STYLES: dict[str, dict[str, Any]] = {
    "train": {"linestyle": "--", "linewidth": 0.9},
    "test": {"linestyle": "-", "linewidth": 2.0},
}


def depth_colors(depths: list[int]) -> dict[int, str]:
    """A colour per depth: the paper's for its depths, then others in a fixed order."""
    extra = iter(EXTRA_COLORS * 10)
    return {d: DEPTH_COLORS[d] if d in DEPTH_COLORS else next(extra) for d in sorted(set(depths))}


Curve = tuple[list[int], list[float], list[float], list[float]]  # iterations, mean, min, max


def mean_curve(runs: list[Run]) -> dict[str, Curve]:
    """Per error kind, the iterations common to all seeds and the (mean, min, max) there. The
    training error has a point at every training-log row, the test error at evaluations."""
    out = {}
    for key in ("train_error", "test_error"):
        rows = [run.train_curve if key == "train_error" else run.curve for run in runs]
        curves = [c for c in ({r["iteration"]: r for r in rs} for rs in rows) if c]
        if not curves:
            return {}
        common = sorted(set.intersection(*(set(c) for c in curves)))
        if not common:  # seeds evaluated at different iterations: show the longest alone
            curves = [max(curves, key=len)]
            common = sorted(curves[0])
        values = [[c[it][key] for c in curves] for it in common]
        out[key] = (
            common,
            [statistics.fmean(v) for v in values],
            [min(v) for v in values],
            [max(v) for v in values],
        )
    return out


def y_limit(networks: list[Network]) -> float:
    """The top of both panels: room for every final error, rounded up to a multiple of 5.

    1.4 x the highest final test error, as the paper's 0-20% frames its 7-13%: the end of
    training is what the figure compares; the first evaluations, far higher, run off the top.
    """
    finals = [n.test_error.mean * 1.4 for n in networks if n.test_error]
    finals += [n.train_error.mean * 1.25 for n in networks if n.train_error]
    top = max(finals, default=20.0)
    step = 5 if top <= 50 else 10
    return float(min(100, max(5, math.ceil(top / step) * step)))


def plot_figure6(networks: list[Network], title: str = "") -> Figure:
    """He et al. 2015, Figure 6, from the study's runs; each line tagged with a gid
    ``<arch>/train`` or ``<arch>/test`` (for tests and tools)."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    plotted = [n for n in networks if n.used and any(r.curve for r in n.used)]
    colors = depth_colors([n.depth for n in plotted])
    last = max((r.iterations for n in plotted for r in n.used), default=PAPER_ITERATIONS)
    # The paper's axis is in units of 1e4 iterations; short runs get a readable one.
    scale = 1e4 if last >= 20_000 else 1e3 if last >= 2_000 else 1
    xlabel = f"iter. ({scale:.0e})".replace("e+0", "e") if scale > 1 else "iterations"

    fig = Figure(figsize=(10, 5.0), layout="constrained")
    axes = fig.subplots(1, 2, sharex=True, sharey=True)
    for ax, residual in zip(axes, (False, True), strict=True):
        nets = [n for n in plotted if n.residual == residual]
        families = sorted({n.family for n in nets}, key=lambda f: f not in ("plain", "resnet"))
        for net in sorted(nets, key=lambda n: (families.index(n.family), n.depth)):
            curves = mean_curve(net.used)
            color = colors[net.depth]
            family_marker = MARKERS[families.index(net.family) % len(MARKERS)]
            for kind in ("train", "test"):
                its, mean, lo, hi = curves[f"{kind}_error"]
                x = [i / scale for i in its]
                marker = family_marker
                if marker is None and len(x) < 3:
                    marker = "o"  # a curve of one or two evaluations would not show as a line
                if len(net.used) > 1:
                    ax.fill_between(x, lo, hi, color=color, alpha=0.15, linewidth=0)
                label = net.label + (" (partial)" if net.preliminary else "")
                (line,) = ax.plot(x, mean, label=label if kind == "test" else "_nolegend_",
                                  color=color, marker=marker, markevery=max(len(x) // 8, 1),
                                  markersize=4, **STYLES[kind])  # fmt: skip
                line.set_gid(f"{net.arch}/{kind}")
        handles, _ = ax.get_legend_handles_labels()
        handles += [Line2D([], [], color="0.4", label=f"{name} error", **STYLES[kind])
                    for kind, name in (("train", "training"), ("test", "test"))]  # fmt: skip
        # Below the panel, not on it: short runs end high, where a legend inside would sit.
        ax.legend(handles=handles, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14),
                  ncol=3, frameon=False)  # fmt: skip
        ax.set_title("plain networks" if not residual else "residual networks (ResNet)")
        ax.set_xlabel(xlabel)
        ax.grid(True, linewidth=0.4, alpha=0.5)
        if not nets:
            ax.text(0.5, 0.5, "no runs", transform=ax.transAxes, ha="center", color="0.5")
    axes[0].set_ylabel("error (%)")
    axes[0].set_ylim(0, y_limit(plotted))
    axes[0].yaxis.set_major_locator(MaxNLocator(nbins=5, steps=[1, 2, 5, 10]))  # 0, 5, 10, not 2.5
    axes[0].set_xlim(0, last / scale)
    seeds = max((len(n.used) for n in plotted), default=1)
    note = "; mean over seeds, band: min-max" if seeds > 1 else ""
    prefix = f"{title}: " if title else ""
    fig.suptitle(f"{prefix}training error (thin dashed) and test error (bold){note}", fontsize=10)
    return fig
