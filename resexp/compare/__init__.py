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

The verdict asks the paper's questions of the final values (the last evaluation, averaged over
completed seeds), each finding on its own line: does plain training (and test) error rise with
depth (the degradation problem), does residual training and test error not rise, does each
ResNet beat its plain twin. Each line says how many seeds stand on each side and whether the
difference exceeds the seed noise (Welch's t-test). A finding whose networks have unfinished,
failed or diverged seeds is "not tested"; the table still shows their latest values, marked.

References: ResNets from the paper's Table 6; plain nets, which the paper shows only as curves,
from public reproductions (github.com/nabla0001/resnet: mean of 5 runs of 64k iterations;
github.com/a-martyn/resnet: best epoch).
"""

from __future__ import annotations

import io
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from resexp.compare.figure import plot_figure6
from resexp.compare.references import REFERENCES, Reference
from resexp.compare.reports import print_report, report_lines, results_csv, results_markdown
from resexp.compare.runs import (
    Network,
    Run,
    Stat,
    family_of,
    find_study,
    group_networks,
    load_run,
    load_runs,
    missing_networks,
    run_dirs,
)
from resexp.compare.verdict import Check, Verdict, judge, welch_p
from resexp.tracking import atomic_write, session_end

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "REFERENCES",
    "Check",
    "Network",
    "Reference",
    "Run",
    "Stat",
    "Verdict",
    "find_study",
    "group_networks",
    "judge",
    "load_run",
    "load_runs",
    "plot_figure6",
    "print_report",
    "report_lines",
    "results_csv",
    "results_markdown",
    "run_dirs",
    "welch_p",
]  # fmt: skip

# Early in the sort order on purpose: TensorBoard reads a run's event files in name order and
# assumes older files never change, so a newer-named file here would stop a live TensorBoard
# from following a run that is still training.
EVENTS_NAME = "events.out.tfevents.0000000000.resexp-compare"
EVENTS_GLOB = "events.out.tfevents.*.resexp-compare"


# ----------------------------------------------------------------------------------------------
# TensorBoard: Figure 6 as custom-scalar charts, and hparams, in each run's own folder


def tensorboard_layout(networks: list[Network] | list[tuple[str, int, bool]]) -> dict:
    """A custom-scalars layout (torch's dict form): the two panels, then one chart per depth.

    ``networks``: the study's Networks, or (arch, depth, residual) of each planned network. The
    layout's charts select tags, not runs, so each run carries a copy of its curves under
    ``figure6/<arch>/error_{train,test}`` (written live by the run, and by compare for runs
    that predate that): a chart then shows exactly the runs of its networks.
    """
    if networks and isinstance(networks[0], tuple):
        networks = [
            Network(arch, family_of(arch, depth), depth, residual, "", [], [])
            for arch, depth, residual in networks
        ]

    def tags(archs: list[str]) -> list[str]:
        names = "|".join(re.escape(a).replace("\\-", "-") for a in archs)  # keep plain-56 readable
        return [rf"^figure6/({names})/error_(train|test)$"]

    plain = [n.arch for n in networks if not n.residual]
    residual = [n.arch for n in networks if n.residual]
    panels = {}
    if plain:
        panels["plain nets: training and test error %"] = ["Multiline", tags(plain)]
    if residual:
        panels["residual nets: training and test error %"] = ["Multiline", tags(residual)]
    by_depth = {
        f"{d} layers: plain vs residual, error %": [
            "Multiline",
            tags([n.arch for n in networks if n.depth == d]),
        ]
        for d in sorted({n.depth for n in networks})
    }
    return {
        "Figure 6 (He et al. 2015)": panels,
        "plain vs residual, by depth": by_depth,
        "all runs": {
            "error/train and error/test %": ["Multiline", [r"^error/(train|test)$"]],
            "loss/train and loss/test": ["Multiline", [r"^loss/(train|test)$"]],
        },
    }


LAYOUT_EVENTS = "events.out.tfevents.0000000000.resexp-layout"  # in the study folder


def write_study_layout(study: Path, networks: list[tuple[str, int, bool]]) -> Path:
    """Write the custom-scalars layout into the study folder itself, so that TensorBoard shows
    the plain-versus-residual charts from a sweep's first minute (before any compare)."""
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.summary.writer.record_writer import RecordWriter
    from torch.utils.tensorboard.summary import custom_scalars

    buffer = io.BytesIO()
    writer = RecordWriter(buffer)
    now = time.time()
    writer.write(Event(wall_time=now, file_version="brain.Event:2").SerializeToString())
    layout = custom_scalars(tensorboard_layout(networks))
    writer.write(Event(wall_time=now, step=0, summary=layout).SerializeToString())
    study.mkdir(parents=True, exist_ok=True)
    return _write_bytes(study / LAYOUT_EVENTS, buffer.getvalue())


def write_tensorboard(runs: list[Run], networks: list[Network]) -> list[Path]:
    """Write each run's compare events file (layout, hparams, curve copies); return the paths.

    Each file replaces the one an earlier compare wrote, so reruns leave one file per run, and
    nothing is written outside the run folders (no extra TensorBoard runs).
    """
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.summary.writer.record_writer import RecordWriter
    from torch.utils.tensorboard.summary import custom_scalars, hparams

    layout = custom_scalars(tensorboard_layout(networks))
    hparam_values = {r.path: _hparams(r) for r in runs}
    domains = {
        key: sorted({values[key] for values in hparam_values.values()})
        for key in ("depth", "residual", "block", "shortcut", "arch", "status")
    }
    now = time.time()
    paths = []
    for run in runs:
        buffer = io.BytesIO()
        writer = RecordWriter(buffer)

        def put(summary, step: int = 0, writer=writer) -> None:
            writer.write(Event(wall_time=now, step=step, summary=summary).SerializeToString())

        writer.write(Event(wall_time=now, file_version="brain.Event:2").SerializeToString())
        put(layout)
        final = run.final or {}
        metrics = {"hparams/final_train_error": final.get("train_error"),
                   "hparams/final_test_error": final.get("test_error")}  # fmt: skip
        experiment, start, end = hparams(hparam_values[run.path], metrics, domains)
        put(experiment)
        put(start)
        put(session_end(end, run.status))
        live = bool((run.summary or {}).get("tensorboard_figure6_tags"))  # written by the run
        for kind, rows in (("train", [] if live else run.train_curve),
                           ("test", [] if live else run.curve)):  # fmt: skip
            for row in rows:
                value = Summary.Value(
                    tag=f"figure6/{run.arch}/error_{kind}", simple_value=row[f"{kind}_error"]
                )
                put(Summary(value=[value]), step=int(row["iteration"]))
        if final:
            put(Summary(value=[Summary.Value(tag=k, simple_value=v) for k, v in metrics.items()]),
                step=int(final.get("iteration", 0)))  # fmt: skip
        for old in run.path.glob(EVENTS_GLOB):
            old.unlink()
        paths.append(_write_bytes(run.path / EVENTS_NAME, buffer.getvalue()))
    return paths


def _hparams(run: Run) -> dict:
    return {
        "depth": run.depth,
        "residual": run.residual,
        "seed": run.seed,
        "block": run.block,
        "shortcut": run.shortcut,
        "arch": run.arch,
        "status": run.status,
    }


def _write_bytes(path: Path, data: bytes) -> Path:
    atomic_write(path, lambda f: f.write(data), binary=True)
    return path


# ----------------------------------------------------------------------------------------------
# compare: everything above, written into the study


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
    cmp = Comparison(
        study=study,
        runs=runs,
        networks=networks,
        verdict=judge(networks),
        missing=missing_networks(networks),
        incomplete=[r for r in runs if r.status != "completed"],
        paths=[
            study / "figure6.png",
            study / "figure6.pdf",
            study / "results.csv",
            study / "results.md",
        ],
    )
    cmp.figure = plot_figure6(networks, title=study.name)
    for path, fmt in zip(cmp.paths[:2], ("png", "pdf"), strict=True):
        image = io.BytesIO()
        cmp.figure.savefig(image, format=fmt, dpi=150)
        _write_bytes(path, image.getvalue())
    _write_bytes(cmp.paths[2], results_csv(networks).encode())
    _write_bytes(cmp.paths[3], results_markdown(cmp).encode())
    if tensorboard:
        cmp.events = write_tensorboard(runs, networks)
    return cmp
