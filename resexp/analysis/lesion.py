"""Lesion study: Veit, Wilber, Belongie 2016, "Residual Networks Behave Like Ensembles of Relatively
Shallow Networks" (arXiv 1605.06431), sec. 4.

At test time a block y = x + f(x) is replaced by y = x (``block.lesion()``). Veit et al. find that
removing any single block barely changes a ResNet's error, except for the downsampling blocks, while
removing a layer of a plain net collapses it to chance; and that a ResNet's error grows smoothly
with the number of blocks removed, as for an ensemble losing members.

A plain block has no shortcut, so it can only be replaced by the identity where it keeps the shape
of its input: not the first block of stages 2 and 3, which halve the map and double the channels.
Those blocks get no single-lesion number for plain nets, and the random removals choose among the
blocks both kinds can lose (option ``candidates``).

The nets are in eval mode: BN uses the running statistics from training, as Veit et al. did, so a
lesion also changes the statistics that later layers see without them adapting.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from resexp.analysis.common import (
    Output,
    Settings,
    batches,
    integer_ticks,
    load_trained,
    log,
    new_figure,
    pairs_by_depth,
    run_style,
)
from resexp.compare.figure import depth_colors
from resexp.compare.runs import Run, group_by_arch
from resexp.errors import ConfigError
from resexp.models import ResNet
from resexp.train import error_and_loss

SOURCE = "Veit et al. 2016, sec. 4"

NOTES = [
    "plain nets: the downsampling blocks (first of stages 2 and 3) cannot be removed, having no "
    "shortcut and changing the shape; their single-block errors are null",
    "eval mode: BN uses its running statistics from training, which do not adapt to a lesion",
]

OPTIONS: dict[str, tuple[object, str]] = {
    # Defaults sized for a whole 8-network CPU study (README, "Why residuals work": measured);
    # draws=3 max_removed=0 is Veit et al.'s full curve, about 4x the evaluations.
    "draws": (2, "random sets of blocks removed for each k"),
    "max_removed": (6, "largest number k of blocks removed at random (0: all candidates)"),
    "candidates": (
        "same_shape",
        "blocks the random removals choose from: same_shape (blocks a plain net can lose too: "
        "all but the downsampling ones) or all (every block a net can lose)",
    ),
    "seed": (0, "seed of the random draws (the same sets for every run of a depth)"),
}


def can_lesion(model: ResNet) -> list[bool]:
    """For each block: can it be replaced by its shortcut (a plain block: only by an identity)?"""
    return [b.residual or b.same_shape for b in model.blocks()]


@contextmanager
def lesioned(model: ResNet, indices: list[int]) -> Iterator[ResNet]:
    """The model with blocks ``indices`` (0-based) removed; restored on exit."""
    blocks = model.blocks()
    try:
        for i in indices:
            blocks[i].lesion(True)
        yield model
    finally:
        for b in blocks:
            b.lesion(False)


def single_lesion_errors(
    model: ResNet,
    x: Tensor,
    y: Tensor,
    batch_size: int,
    on_eval: Callable[[str], None] | None = None,
) -> list[float]:
    """Test error (%) with each single block removed; NaN where the block cannot be removed."""
    return [
        lesioned_error(model, [i], x, y, batch_size, on_eval) if ok else math.nan
        for i, ok in enumerate(can_lesion(model))
    ]


def lesioned_error(
    model: ResNet,
    removed: list[int],
    x: Tensor,
    y: Tensor,
    batch_size: int,
    on_eval: Callable[[str], None] | None = None,
) -> float:
    """Test error (%) of ``model`` without blocks ``removed`` (0-based)."""
    with lesioned(model, removed):
        error = error_and_loss(model, batches(x, y, batch_size))[0]
    if on_eval is not None:
        on_eval(f"without blocks {[i + 1 for i in removed]}: {error:.1f}%")
    return error


def random_subsets(
    candidates: list[int], k: int, draws: int, generator: torch.Generator
) -> list[list[int]]:
    """``draws`` random k-subsets of ``candidates`` (sorted); just one when k takes them all."""
    if k >= len(candidates):
        return [sorted(candidates)]
    return [
        sorted(
            candidates[i] for i in torch.randperm(len(candidates), generator=generator)[:k].tolist()
        )
        for _ in range(draws)
    ]


def analyze_lesion(
    runs: list[Run],
    out: Output,
    settings: Settings,
    draws: int = 2,
    max_removed: int = 6,
    candidates: str = "same_shape",
    seed: int = 0,
) -> None:
    """Test error after removing each single block, and k random blocks (Veit et al. 2016)."""
    if candidates not in ("same_shape", "all"):
        raise ConfigError(f"candidates must be same_shape or all, not {candidates!r}")
    plans = {run: _plan(run.build(), candidates, max_removed, draws) for run in runs}
    results: dict[Run, dict] = {}
    with out.steps("evaluations", sum(p[2] for p in plans.values())) as steps:
        for run in runs:
            pool, k_max, _ = plans[run]
            results[run] = _measure(run, settings, pool, k_max, draws, seed, steps.tick)
    rows = [row for run, r in results.items() for row in _rows(run, r)]
    if any(not run.residual for run in runs):
        log.info("lesion: %s", NOTES[0])

    out.csv("lesion", rows)
    _plot(out, runs, results)
    _checks(out, results)
    chance = {run: 100.0 * (1 - 1 / run.num_classes) for run in runs}
    out.json(
        "lesion",
        {
            "measure": "test error (%) with blocks replaced by their shortcut (Veit et al. 2016); "
            "eval mode, BN running statistics from training",
            "candidates": candidates,
            "draws": draws,
            "seed": seed,
            "notes": NOTES,
            "runs": {run.label: {**r, "chance_error": chance[run]} for run, r in results.items()},
        },
    )


def _measure(
    run: Run,
    settings: Settings,
    pool: list[int],
    k_max: int,
    draws: int,
    seed: int,
    on_eval: Callable[[str], None],
) -> dict:
    """One run: its error intact, without each single block, and without k random blocks."""
    model, iteration = load_trained(run, settings.runtime)
    x, y = settings.data(run).normalized("test", settings.images)
    bs = settings.batch_size

    def progress(note: str) -> None:
        on_eval(f"{run.label} {note}")

    base = lesioned_error(model, [], x, y, bs, progress)
    single = single_lesion_errors(model, x, y, bs, progress)
    generator = torch.Generator().manual_seed(seed)  # the same draws for every run of a depth
    random_errors = {
        k: [
            (subset, lesioned_error(model, subset, x, y, bs, progress))
            for subset in random_subsets(pool, k, draws, generator)
        ]
        for k in range(1, k_max + 1)
    }
    return {
        "path": str(run.path),
        "iteration": iteration,
        "images": len(y),
        "baseline_error": base,
        "single_block_errors": single,
        "downsampling_blocks": [i + 1 for i, b in enumerate(model.blocks()) if not b.same_shape],
        "random_candidates": [i + 1 for i in pool],
        "random_errors": {k: [e for _, e in v] for k, v in random_errors.items()},
        "random_blocks": {k: [[i + 1 for i in s] for s, _ in v] for k, v in random_errors.items()},
    }


def _rows(run: Run, r: dict) -> list[dict]:
    """The CSV rows of one run: one per single-block lesion, one per random draw."""
    common = {**run.identity, "iteration": r["iteration"], "baseline_error": r["baseline_error"]}
    rows = []
    for i, e in enumerate(r["single_block_errors"], start=1):
        note = "downsampling block" if i in r["downsampling_blocks"] else ""
        if math.isnan(e):
            note = "not removable: a plain block that changes the shape"
        rows.append(
            {**common, "kind": "single", "k": 1, "blocks": str(i), "error": e, "note": note}
        )
    for k, errors in r["random_errors"].items():
        for blocks, e in zip(r["random_blocks"][k], errors, strict=True):
            blocks = " ".join(map(str, blocks))
            rows.append(
                {**common, "kind": "random", "k": k, "blocks": blocks, "error": e, "note": ""}
            )
    return rows


def _plan(
    model: ResNet, candidates: str, max_removed: int, draws: int
) -> tuple[list[int], int, int]:
    """The blocks the random removals choose from, the largest k, and the evaluations needed."""
    ok = can_lesion(model)
    pool = [
        i for i, b in enumerate(model.blocks()) if ok[i] and (candidates == "all" or b.same_shape)
    ]
    k_max = len(pool) if max_removed <= 0 else min(max_removed, len(pool))
    randoms = sum(1 if k >= len(pool) else draws for k in range(1, k_max + 1))
    return pool, k_max, 1 + sum(ok) + randoms


def _checks(out: Output, results: dict[Run, dict]) -> None:
    increase = {}
    for run, r in results.items():
        base, down = r["baseline_error"], set(r["downsampling_blocks"])
        same = [
            e - base
            for i, e in enumerate(r["single_block_errors"], start=1)
            if i not in down and not math.isnan(e)
        ]
        increase[run] = sum(same) / len(same) if same else math.nan
    pairs = pairs_by_depth(increase)
    out.check(
        "removing one (non-downsampling) block barely hurts a ResNet but collapses a plain net",
        "mean error increase per removed block: resnet's under half the plain net's, every depth",
        "; ".join(
            f"depth {d}: plain +{p:.1f}, resnet +{r:.1f} points" for d, (p, r) in pairs.items()
        )
        or "needs plain and residual runs of the same depth",
        all(r < 0.5 * p for p, r in pairs.values()) if pairs else None,
        SOURCE,
    )
    smooth = {
        run: [r["baseline_error"]] + [sum(v) / len(v) for v in r["random_errors"].values()]
        for run, r in results.items()
        if run.residual and len(r["random_errors"]) >= 2
    }
    out.check(
        "a ResNet's error grows smoothly with the number of blocks removed",
        "mean error over draws rises with k (no drop of more than 1 point)",
        "; ".join(
            f"{run.label}: " + " -> ".join(f"{m:.1f}" for m in v) for run, v in smooth.items()
        )
        or "needs residual runs with at least 2 removable blocks (depth >= 14)",
        all(b >= a - 1.0 for v in smooth.values() for a, b in itertools.pairwise(v))
        if smooth
        else None,
        SOURCE,
    )


def _plot(out: Output, runs: list[Run], results: dict[Run, dict]) -> None:
    fig, axes = new_figure(1, 2, size=(5.5, 3.8))
    colors = depth_colors([r.depth for r in runs])
    ax_single, ax_k = axes[0]
    for arch, group in group_by_arch(runs).items():
        run = group[0]
        style = run_style(run, colors)
        single = torch.tensor([results[r]["single_block_errors"] for r in group]).mean(0)
        blocks = range(1, len(single) + 1)
        ax_single.plot(blocks, single, marker="o", ms=3, label=arch, **style)
        down = results[run]["downsampling_blocks"]
        ax_single.plot(down, [single[d - 1] for d in down], "x", color=colors[run.depth], ms=8)
        base = sum(results[r]["baseline_error"] for r in group) / len(group)
        ax_single.axhline(base, color=colors[run.depth], linestyle=":", lw=0.8)
        randoms = results[run]["random_errors"]  # k -> errors of the draws, of the first seed
        if randoms:
            ks = sorted(randoms)
            mean = [sum(randoms[k]) / len(randoms[k]) for k in ks]
            intact = results[run]["baseline_error"]
            ax_k.plot([0, *ks], [intact, *mean], marker="o", ms=3, label=run.label, **style)
            lo, hi = [min(randoms[k]) for k in ks], [max(randoms[k]) for k in ks]
            ax_k.fill_between(ks, lo, hi, color=colors[run.depth], alpha=0.12)
    ax_single.set(
        xlabel="removed block (x: downsampling block)",
        ylabel="test error (%)",
        title="one block removed (dotted: none)",
    )
    ax_k.set(
        xlabel="blocks removed at random (k)",
        ylabel="test error (%)",
        title="k blocks removed (band: min-max of draws)",
    )
    for ax in axes[0]:
        integer_ticks(ax)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Lesion study, Veit et al. 2016 (plain dashed, ResNet solid)")
    out.figure(fig, "lesion")
