"""A study's runs side by side: He et al. 2015, Figure 6, with the numbers behind it.

A study is a folder of runs, ``<study>/<arch>-<depth>/seed<k>/`` (``resexp sweep`` writes
``outputs/degradation/``). ``compare(study)`` reads every run and writes beside them:

    figure6.png, figure6.pdf   plain nets left, residual nets right; training error thin dashed,
                               test error bold; one colour per depth; the mean over seeds with a
                               min-max band (He et al. 2015, Figure 6)
    results.csv, results.md    one row per network: final errors (mean ± std over seeds), the
                               published value beside it with its source, and the verdict
    events.out.tfevents.0000000000.resexp-compare   in each run's own folder: a custom-scalars
                               layout (Figure 6 as TensorBoard charts) and the run's hparams, so
                               ``tensorboard --logdir <study>`` tells the same story

A module a job: runs, references (the published values), verdict, figure, reports, tensorboard.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from resexp.compare.figure import plot_figure6
from resexp.compare.reports import print_report, results_csv, results_markdown
from resexp.compare.runs import (
    Network,
    Run,
    find_study,
    group_networks,
    load_runs,
    missing_networks,
)
from resexp.compare.tensorboard import (
    EVENTS_NAME,
    LAYOUT_EVENTS,
    write_study_layout,
    write_tensorboard,
)
from resexp.compare.verdict import Verdict, judge, welch_p
from resexp.rundir import atomic_write

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# What resexp.cli and the tests import from resexp.compare.
__all__ = [
    "EVENTS_NAME", "LAYOUT_EVENTS", "Comparison", "compare", "find_study", "load_runs",
    "print_report", "welch_p", "write_study_layout",
]  # fmt: skip


@dataclass
class Comparison:
    """What ``compare`` found and wrote."""

    study: Path
    runs: list[Run]
    networks: list[Network]  # the table's rows
    verdict: Verdict
    missing: list[str]  # networks of Figure 6's grid without runs
    incomplete: list[Run]  # runs not completed: partial, interrupted, diverged, failed
    paths: list[Path]  # figure6.png, figure6.pdf, results.csv, results.md
    events: list[Path] = field(default_factory=list)  # one compare events file per run
    figure: Figure | None = field(default=None, repr=False)


def compare(study: Path, tensorboard: bool = True) -> Comparison:
    """Read a study's runs; write Figure 6, results.csv/.md and TensorBoard extras into it."""
    study = Path(study)
    runs = load_runs(study)
    networks = group_networks(runs)
    figure = plot_figure6(networks, title=study.name)
    cmp = Comparison(
        study=study,
        runs=runs,
        networks=networks,
        verdict=judge(networks),
        missing=missing_networks(networks),
        incomplete=[r for r in runs if r.status != "completed"],
        paths=[
            study / name for name in ("figure6.png", "figure6.pdf", "results.csv", "results.md")
        ],
        figure=figure,
    )
    png, pdf, csv, markdown = cmp.paths
    atomic_write(png, lambda f: figure.savefig(f, format="png", dpi=150), binary=True)
    atomic_write(pdf, lambda f: figure.savefig(f, format="pdf", dpi=150), binary=True)
    atomic_write(csv, lambda f: f.write(results_csv(networks).encode()), binary=True)
    atomic_write(markdown, lambda f: f.write(results_markdown(cmp).encode()), binary=True)
    if tensorboard:
        cmp.events = write_tensorboard(runs, networks)
    return cmp
