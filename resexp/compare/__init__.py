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

import csv
import io
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from resexp.compare.figure import plot_figure6
from resexp.compare.references import PAPER_ITERATIONS, REFERENCES, Reference
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
    from rich.console import Console
    from rich.table import Table

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
    "run_dirs",
    "welch_p",
]  # fmt: skip

# Early in the sort order on purpose: TensorBoard reads a run's event files in name order and
# assumes older files never change, so a newer-named file here would stop a live TensorBoard
# from following a run that is still training.
EVENTS_NAME = "events.out.tfevents.0000000000.resexp-compare"
EVENTS_GLOB = "events.out.tfevents.*.resexp-compare"


# ----------------------------------------------------------------------------------------------
# Tables: results.csv, results.md, the terminal

CSV_COLUMNS = [
    "network", "arch", "residual", "depth", "block", "params", "seeds", "iterations",
    "planned_iterations", "train_error_mean", "train_error_std", "test_error_mean",
    "test_error_std", "n", "preliminary", "runs", "reference_test_error", "reference_std",
    "reference_source", "test_error_minus_reference",
]  # fmt: skip


def csv_rows(networks: list[Network]) -> list[dict]:
    """The rows of results.csv: errors in %, std is the sample std over seeds (blank for one)."""
    rows = []
    for n in networks:
        ref, test, train = n.reference, n.test_error, n.train_error
        planned = [r.planned_iterations for r in n.runs if r.planned_iterations]
        row = {
            "network": n.label,
            "arch": n.arch,
            "residual": n.residual,
            "depth": n.depth,
            "block": n.block,
            "params": n.params or "",
            "seeds": len(n.used),
            "iterations": format_iterations(n.iterations, thousands=False),
            "planned_iterations": max(planned, default=""),
            "train_error_mean": _round(train.mean if train else None),
            "train_error_std": _round(train.std if train else None),
            "test_error_mean": _round(test.mean if test else None),
            "test_error_std": _round(test.std if test else None),
            "n": test.n if test else 0,
            "preliminary": n.preliminary,
            "runs": n.status_counts,
        }
        if ref:
            row["reference_test_error"] = ref.test_error
            row["reference_std"] = ref.std if ref.std is not None else ""
            row["reference_source"] = ref.source
            row["test_error_minus_reference"] = _round(test.mean - ref.test_error if test else None)
        rows.append(row)
    return rows


def results_csv(networks: list[Network]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(csv_rows(networks))
    return out.getvalue()


def results_markdown(cmp: Comparison) -> str:
    """results.md: the table, the verdict, what is missing, and how these runs differ from 64k."""
    lines = [
        f"# Plain vs residual networks: {cmp.study.name}",
        "",
        "He et al. 2015, sec. 4.2 and Figure 6, reproduced from the runs in this folder "
        f"({len(cmp.runs)} runs of {len(cmp.networks)} networks).",
        "",
        "![Figure 6](figure6.png)",
        "",
        *([f"**Caveat.** {caveat}", ""] if (caveat := data_caveat(cmp.runs)) else []),
        "| Network | Params | Seeds | Iterations | Training error % | Test error % (n) "
        "| Reference test error % | Reference source | Runs |",
        "|---|--:|--:|--:|--:|--:|--:|---|---|",
    ]
    for n in cmp.networks:
        star = "*" if n.preliminary else ""
        ref = n.reference
        ref_text = f"{ref.test_error:.2f}" if ref else ""
        ref_text += f" ± {ref.std:.2f}" if ref and ref.std else ""
        lines.append(
            f"| {n.label}{star} | {format_params(n.params)} | {len(n.used)} "
            f"| {format_iterations(n.iterations)} | {n.train_error or 'n/a'} "
            f"| {n.test_error or 'n/a'}{f' ({n.test_error.n})' if n.test_error else ''} "
            f"| {ref_text} | {ref.source if ref else ''} | {n.status_counts} |"
        )
    lines += [
        "",
        "Final errors are each run's last evaluation; mean ± sample standard deviation over seeds "
        "(n runs). Diverged and failed runs are not counted.",
    ]
    if any(n.preliminary for n in cmp.networks):
        lines.append("\\* from runs that have not finished: their latest values, not final ones.")
    lines += [
        "",
        "## Verdict",
        "",
        f"**{cmp.verdict.headline}**",
        "",
        "| Check | Result | Final errors, mean over completed seeds | Seed noise |",
        "|---|---|---|---|",
    ]
    lines += [f"| {c.title} | {c.status} | {c.detail} | {c.noise} |" for c in cmp.verdict.checks]
    lines += ["", "## Missing and unfinished runs", ""]
    lines += [f"- {line}" for line in problem_lines(cmp)] or [
        "None: every network has finished runs."
    ]
    lines += ["", "## Iterations and data", ""]
    lines += [f"- {line}" for line in context_lines(cmp)]
    return "\n".join(lines) + "\n"


def problem_lines(cmp: Comparison) -> list[str]:
    """Networks of the grid without runs, and runs that are unfinished, diverged or failed."""
    lines = [
        f"{arch}: no runs (Figure 6's grid is plain and ResNet at 20, 32, 44, 56 layers)"
        for arch in cmp.missing
    ]
    used = {id(r) for n in cmp.networks for r in n.used}
    for run in cmp.incomplete:
        if id(run) in used:
            effect = "its latest values are used, marked *"
        elif run.usable:
            effect = "not counted: the network has completed runs"
        else:
            effect = "not counted"
        lines.append(f"{run.describe()} ({effect})")
    return lines


def context_lines(cmp: Comparison) -> list[str]:
    """How long the runs trained, on what data, and whether the references compare."""
    its = sorted({r.iterations for n in cmp.networks for r in n.used})
    planned = sorted({r.planned_iterations for r in cmp.runs if r.planned_iterations})
    lines = [
        f"The runs had {format_iterations(its) or 'no'} iterations"
        + (f" (planned: {format_iterations(planned)})." if planned else ".")
    ]
    if its and max(its) < PAPER_ITERATIONS:
        lines.append(
            f"Shorter than the paper's {PAPER_ITERATIONS // 1000}k iterations: references are for "
            "64k iterations on the original CIFAR-10."
        )
    # summary.json describes the data set; config.yaml (runs in progress) only names its source
    data = sorted({r.data for r in cmp.runs if r.data and r.summary}) or sorted(
        {r.data for r in cmp.runs if r.data}
    )
    if data:
        lines.append("Data: " + "; ".join(data) + ".")
    caveat = data_caveat(cmp.runs)
    if caveat:
        lines.append(caveat)
    if data:
        if any("validation split" in d for d in data):
            lines.append(
                "Test error here is on images held out of the training set (validation split); "
                "the references are on the 10k test set."
            )
        if any("subsets" in d for d in data):
            lines.append("Subsets of the data: not comparable with the references.")
    return lines


def data_caveat(runs: list[Run]) -> str | None:
    """The caveat every comparison with the paper's numbers needs, unless all runs used
    torchvision's original CIFAR-10 (whole, no subset or validation split)."""
    if runs and all(r.original_cifar10 for r in runs):
        return None
    sources = sorted(
        {
            f"{r.data_identity.get('source')} at {r.data_identity.get('root')}"
            for r in runs
            if r.data_identity
        }
    )
    seen = f" (these runs: {'; '.join(sources)})" if sources else ""
    return (
        "Not the original CIFAR-10" + seen + ": the reference errors (Table 6 and the "
        "plain-net reproductions) were measured on torchvision's original CIFAR-10, so absolute "
        "errors do not compare with them; plain against residual on the same data does. A "
        "re-encoded copy (JPEG, say) scores a published ResNet-20 about 10 points worse."
    )


def verdict_table(verdict: Verdict) -> Table:
    """The checks as a rich Table: check, PASS/FAIL/n.a., the numbers."""
    from rich import box
    from rich.table import Table

    table = Table(title="Verdict (He et al. 2015, sec. 4.2)", box=box.SIMPLE_HEAD)
    table.add_column("Check")
    table.add_column("Result", no_wrap=True)
    table.add_column("Final errors, mean over seeds")
    table.add_column("Seed noise")
    colour = {"PASS": "green", "FAIL": "red", "within noise": "yellow", "not tested": "dim"}
    for c in verdict.checks:
        table.add_row(c.title, f"[{colour[c.status]}]{c.status}[/]", c.detail, c.noise)
    return table


def results_table(networks: list[Network]) -> Table:
    """The results as a rich Table, 80 columns wide (results.md adds parameters and sources)."""
    from rich import box
    from rich.table import Table

    table = Table(title="Final errors (%), mean ± std over seeds", box=box.SIMPLE_HEAD)
    table.add_column("Network", no_wrap=True)
    for name in ("Seeds", "Iter.", "Train %", "Test %", "Ref. %"):
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("Other runs", overflow="fold")
    for n in networks:
        table.add_row(
            n.label + ("*" if n.preliminary else ""),
            str(len(n.used)),
            format_iterations(n.iterations),
            str(n.train_error or "n/a"),
            str(n.test_error or "n/a"),
            f"{n.reference.test_error:.2f}" if n.reference else "",
            n.unfinished_counts,
        )
    return table


def report_lines(cmp: Comparison) -> list[str]:
    """The whole report as plain text lines (for logs, or a terminal without rich)."""
    lines = [f"{'network':<16} {'train %':>14} {'test %':>14} {'ref. %':>7}  runs"]
    for n in cmp.networks:
        ref = f"{n.reference.test_error:.2f}" if n.reference else ""
        lines.append(
            f"{n.label + ('*' if n.preliminary else ''):<16} {n.train_error or 'n/a'!s:>14} "
            f"{n.test_error or 'n/a'!s:>14} {ref:>7}  {n.status_counts}"
        )
    lines += ["", "verdict:"]
    lines += [
        f"  {c.status:<12} {c.title}: {c.detail}" + (f" [{c.noise}]" if c.noise else "")
        for c in cmp.verdict.checks
    ]
    lines += ["", cmp.verdict.headline]
    problems = problem_lines(cmp)
    if problems:
        lines += ["", "missing or unfinished:", *(f"  {p}" for p in problems)]
    lines += ["", *context_lines(cmp), "", "wrote: " + ", ".join(str(p) for p in cmp.paths)]
    return lines


def print_report(cmp: Comparison, console: Console | None = None) -> None:
    """Print the results table, the verdict and the notes to the terminal (rich)."""
    from rich.console import Console

    console = console or Console()
    console.print(results_table(cmp.networks))
    sources: dict[str, list[str]] = {}
    for n in cmp.networks:
        if n.reference:
            sources.setdefault(n.reference.source.split(" (")[0], []).append(n.label)
    if sources:
        text = "; ".join(f"{source} ({', '.join(labels)})" for source, labels in sources.items())
        console.print(f"References: {text}. Details in results.md.", highlight=False)
        caveat = data_caveat(cmp.runs)
        if caveat:
            console.print(f"[yellow]Caveat:[/] {caveat}", highlight=False)
    console.print(verdict_table(cmp.verdict))
    console.print(f"[bold]{cmp.verdict.headline}[/]")
    problems = problem_lines(cmp)
    if problems:
        console.print("Missing or unfinished:")
        for line in problems:
            console.print(f"  {line}", highlight=False)
    for line in context_lines(cmp):
        console.print(line, highlight=False)
    console.print("Wrote " + ", ".join(str(p) for p in cmp.paths), highlight=False)


def format_params(params: int | None) -> str:
    return "" if not params else f"{params / 1e6:.2f}M"


def format_iterations(iterations: list[int], thousands: bool = True) -> str:
    """64k, or 12k-64k when the runs differ ('' for none)."""

    def k(i: int) -> str:
        return f"{i / 1000:g}k" if thousands and i >= 1000 and i % 100 == 0 else str(i)

    if not iterations:
        return ""
    lo, hi = min(iterations), max(iterations)
    return k(lo) if lo == hi else f"{k(lo)}-{k(hi)}"


def _round(x: float | None) -> float | str:
    return "" if x is None else round(x, 4)


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
