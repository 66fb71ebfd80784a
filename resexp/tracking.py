"""What a run shows while it runs: its curves (metrics.jsonl and TensorBoard) and its progress.

The files themselves, and where they live, are ``resexp.rundir``'s.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from resexp.rundir import RunDir, atomic_write

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.writer import FileWriter

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# The run's curves: metrics.jsonl and TensorBoard


class Tracker:
    """Writes a run's curves to metrics.jsonl and TensorBoard.

    A resumed run passes the checkpoint's ``history``: rows of metrics.jsonl after it are
    dropped, and TensorBoard is told to discard events after its last row (``purge_step``), so a
    resumed curve has no duplicate or stale points.
    """

    def __init__(self, run_dir: Path, history: list[dict], hparams: dict) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams as hparams_summaries

        self.metrics_path = RunDir(run_dir).metrics_file
        self.rows = list(history)
        # Rewrite the file from the checkpoint's own history: rows logged after the checkpoint
        # by an interrupted process are stale and must not stay.
        atomic_write(
            self.metrics_path, lambda f: f.writelines(json.dumps(r) + "\n" for r in self.rows)
        )
        last = self.rows[-1]["iteration"] if self.rows else 0
        self.writer = SummaryWriter(log_dir=str(run_dir), purge_step=last + 1)
        # Each curve also under figure6/<arch>/...: the study's custom-scalars layout (written
        # by `resexp sweep` at its start, and by `resexp compare`) charts plain against
        # residual by these tags, live.
        self.arch = run_dir.parent.name
        # A session in TensorBoard's HParams tab: started by a fresh run, ended by ``close``.
        metrics = {"error/test": None, "error/train": None}
        _, start, self._hparams_end = hparams_summaries(hparams, metrics)
        if not self.rows:
            file_writer(self.writer).add_summary(start)

    def log_row(self, row: dict) -> None:
        """Record one row: iteration, training error (%) and loss, lr, and at evaluations the
        test error (%) and loss as well."""
        self.rows.append(row)
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
        step = row["iteration"]
        for key, tag in (
            ("train_error", "error/train"),
            ("test_error", "error/test"),
            ("train_loss", "loss/train"),
            ("test_loss", "loss/test"),
            ("lr", "lr"),
            ("images_per_second", "speed/images_per_second"),
        ):
            value = row.get(key)
            if value is None or not math.isfinite(value):
                continue
            self.writer.add_scalar(tag, value, step)
            if tag.startswith("error/"):  # figure6/<arch>/error_train, .../error_test
                self.writer.add_scalar(f"figure6/{self.arch}/{tag.replace('/', '_')}", value, step)
        self.writer.flush()

    def close(self, status: str | None = None) -> None:
        """Flush and close; with ``status`` (completed, diverged, ...), end the HParams session
        (still running for an interrupted run)."""
        if status in ("completed", "diverged", "failed"):
            file_writer(self.writer).add_summary(session_end(self._hparams_end, status))
        self.writer.close()


def file_writer(writer: SummaryWriter) -> FileWriter:
    """The event file ``writer`` writes summaries to, opened by ``SummaryWriter.__init__``
    (torch's code sets the attribute to None first, so type checkers take it for None)."""
    return cast("FileWriter", writer.file_writer)


def session_end(end: Any, status: str) -> Any:
    """torch marks every HParams session a success: say failed for diverged or failed runs,
    and running for the others that have not completed."""
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

    plugin_data = end.value[0].metadata.plugin_data
    data = plugin_data_pb2.HParamsPluginData.FromString(plugin_data.content)
    data.session_end_info.status = {
        "completed": api_pb2.STATUS_SUCCESS,
        "diverged": api_pb2.STATUS_FAILURE,
        "failed": api_pb2.STATUS_FAILURE,
    }.get(status, api_pb2.STATUS_RUNNING)
    plugin_data.content = data.SerializeToString()
    return end


def log_gradient_stats(writer: Any, model: torch.nn.Module, step: int) -> None:
    """Write ``grad_norm/<layer>`` scalars and ``weights/<layer>`` histograms for ``step``.

    Call it after ``loss.backward()`` (it reads ``.grad``) and before the next ``zero_grad``.
    Covers every weight with 2 or more dimensions (convs, projections, the fc layer). The norms
    reach the host in one transfer (one synchronisation); histograms copy the weights. Nothing
    in the model or its gradients changes. Works on a ``torch.compile``d model too.
    """
    named = [
        (name.removeprefix("_orig_mod.").removesuffix(".weight"), p, p.grad)
        for name, p in model.named_parameters()
        if p.dim() > 1 and p.grad is not None
    ]
    if not named:
        return
    norms = torch.stack([grad.detach().float().norm() for _, _, grad in named]).cpu().tolist()
    for (name, _, _), n in zip(named, norms, strict=True):
        writer.add_scalar(f"grad_norm/{name}", n, step)
    for name, p, _ in named:
        writer.add_histogram(f"weights/{name}", p.detach().float().cpu(), step)


# ----------------------------------------------------------------------------------------------
# Progress: a live bar in a terminal, one plain line per evaluation elsewhere


class Progress:
    """Shows a job's progress: ``mode`` is bar, lines, none or auto (bar on a terminal).

    A training run reports its iterations (``advance``, ``report``); an analysis counts its
    steps (``tick``), with a line about every 10% when not on a terminal.
    """

    def __init__(self, label: str, total: int, start: int = 0, mode: str = "auto"):
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "lines"
        if mode not in ("bar", "lines", "none"):
            raise ValueError(f"progress must be auto, bar, lines or none, not {mode!r}")
        self.label, self.total, self.mode = label, max(total, 1), mode
        self.start_iteration, self.start_time = start, time.perf_counter()
        self.done, self._next_line = start, 0.0
        self._bar = None
        if mode == "bar":
            from rich import progress as rich

            self._bar = rich.Progress(
                rich.TextColumn("{task.description}"),
                rich.BarColumn(),
                rich.MofNCompleteColumn(),
                rich.TimeElapsedColumn(),
                rich.TimeRemainingColumn(),
                rich.TextColumn("{task.fields[status]}"),
                transient=False,
            )
            self._task = self._bar.add_task(label, total=total, completed=start, status="")
            self._bar.start()

    def advance(self, iteration: int) -> None:
        """Move the bar to ``iteration`` (cheap: no device synchronisation)."""
        if self._bar is not None:
            self._bar.update(self._task, completed=iteration)

    def report(self, row: dict) -> None:
        """Show the latest row of metrics (one line in lines mode, the bar's status otherwise)."""
        it = row["iteration"]
        test = f"  test {row['test_error']:.2f}%" if row.get("test_error") is not None else ""
        status = f"train {row['train_error']:.2f}%{test}  lr {row['lr']:g}"
        if self._bar is not None:
            self._bar.update(self._task, completed=it, status=status)
        elif self.mode == "lines":
            elapsed = time.perf_counter() - self.start_time
            done = max(it - self.start_iteration, 1)
            eta = elapsed / done * (self.total - it)
            speed = row.get("images_per_second")
            log.info(
                "%s  it %d/%d (%d%%)  %s%s  eta %s",
                self.label,
                it,
                self.total,
                100 * it // self.total,
                status,
                f"  {speed:.0f} img/s" if speed else "",
                format_seconds(eta),
            )

    def tick(self, note: str = "") -> None:
        """One more step done, with a note on what it measured."""
        self.done += 1
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, status=note)
        elif self.mode == "lines":
            fraction = self.done / self.total
            if fraction >= self._next_line or self.done == self.total:
                self._next_line = fraction + 0.1
                elapsed = time.perf_counter() - self.start_time
                left = elapsed / self.done * (self.total - self.done)
                log.info("%s: %d/%d %s (%.0f s, time left ~%s)", self.label, self.done,
                         self.total, note, elapsed, format_seconds(left))  # fmt: skip

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def format_seconds(seconds: float) -> str:
    """1:02:03 for hours, 2:03 for minutes."""
    seconds = int(max(seconds, 0))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
