"""A study's results as tables: results.csv, results.md and the terminal report; each network
beside its published test error, and the paper's 64k iterations (He et al. 2015, sec. 4.2)."""

from __future__ import annotations

import csv
import io
from typing import TYPE_CHECKING

from resexp.compare.references import PAPER_ITERATIONS
from resexp.compare.runs import Network, Run
from resexp.compare.verdict import Verdict

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from resexp.compare import Comparison

CSV_COLUMNS = [
    "network", "arch", "residual", "depth", "block", "params", "seeds", "iterations",
    "planned_iterations", "train_error_mean", "train_error_std", "test_error_mean",
    "test_error_std", "n", "preliminary", "runs", "reference_test_error", "reference_std",
    "reference_source", "test_error_minus_reference",
]  # fmt: skip


def results_csv(networks: list[Network]) -> str:
    """results.csv, a row per network: errors in %, std the sample std over seeds (blank for 1)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, restval="", lineterminator="\n")
    writer.writeheader()
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
        writer.writerow(row)
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
        ref = n.reference
        ref_text = _reference(n) + (f" ± {ref.std:.2f}" if ref and ref.std else "")
        lines.append(
            f"| {_name(n)} | {f'{n.params / 1e6:.2f}M' if n.params else ''} | {len(n.used)} "
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
    problems = [f"- {line}" for line in problem_lines(cmp)]
    lines += problems or ["None: every network has finished runs."]
    lines += ["", "## Iterations and data", ""]
    lines += [f"- {line}" for line in context_lines(cmp)]
    return "\n".join(lines) + "\n"


def problem_lines(cmp: Comparison) -> list[str]:
    """Networks of the grid without runs, and runs that are unfinished, diverged or failed."""
    lines = [
        f"{arch}: no runs (Figure 6's grid is plain and ResNet at 20, 32, 44, 56 layers)"
        for arch in cmp.missing
    ]
    used = {r for n in cmp.networks for r in n.used}
    for run in cmp.incomplete:
        if run in used:
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
    if caveat := data_caveat(cmp.runs):
        lines.append(caveat)
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
            _name(n),
            str(len(n.used)),
            format_iterations(n.iterations),
            str(n.train_error or "n/a"),
            str(n.test_error or "n/a"),
            _reference(n),
            n.unfinished_counts,
        )
    return table


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
        if caveat := data_caveat(cmp.runs):
            console.print(f"[yellow]Caveat:[/] {caveat}", highlight=False)
    console.print(verdict_table(cmp.verdict))
    console.print(f"[bold]{cmp.verdict.headline}[/]")
    if problems := problem_lines(cmp):
        console.print("Missing or unfinished:")
        for line in problems:
            console.print(f"  {line}", highlight=False)
    for line in context_lines(cmp):
        console.print(line, highlight=False)
    console.print("Wrote " + ", ".join(str(p) for p in cmp.paths), highlight=False)


def _name(n: Network) -> str:
    """The network's label, starred when its numbers come from runs that have not finished."""
    return n.label + ("*" if n.preliminary else "")


def _reference(n: Network) -> str:
    return f"{n.reference.test_error:.2f}" if n.reference else ""


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
