"""What a run leaves on disk, and what it shows while it runs.

A run directory (``outputs/<name>/<arch>-<depth>/seed<k>/``) holds:

    config.yaml         the resolved config
    metrics.jsonl       one JSON object per training-log point (iteration, train error and loss,
                        lr) and per evaluation (the same, plus test error and loss): the curves
                        of He et al. 2015, Figure 6
    summary.json        final errors, status, speed, device, versions
    events.out.tfevents.*   the same curves for TensorBoard (x-axis: iteration)
    checkpoint.pt       the latest checkpoint (checkpoint.prev.pt: the one before)
    train.log           the log lines, with time stamps

Every file that a later step reads back is written atomically (temporary file, flush to disk,
rename), so a crash or a full disk during a write leaves the previous version intact.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from resexp.errors import ResexpError

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
PREVIOUS_CHECKPOINT = "checkpoint.prev.pt"


# ----------------------------------------------------------------------------------------------
# Atomic writes


def atomic_write(path: Path, write: Callable[[Any], None], binary: bool = False) -> None:
    """Write ``path`` through ``write(file)`` into a temporary file, fsync it, then rename.

    The temporary name has no "tfevents" in it, so a live TensorBoard never reads a half file,
    and the file gets the permissions the umask allows (mkstemp alone would make it 0600).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".resexp-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2) + "\n"))


def read_json(path: Path) -> Any | None:
    """The JSON in ``path``, or None if it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_metrics(path: Path) -> list[dict]:
    """The rows of a metrics.jsonl file; a torn last line (a crash mid-write) is skipped."""
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    return rows


# ----------------------------------------------------------------------------------------------
# Checkpoints


class CheckpointError(ResexpError):
    """A checkpoint exists but cannot be read."""


def save_checkpoint(run_dir: Path, state: dict) -> None:
    """Write ``state`` as the run's checkpoint, keeping the previous one as a fallback.

    The new file is complete on disk before it replaces anything, so a crash or a full disk at
    any point leaves at least one readable checkpoint.
    """
    path = run_dir / CHECKPOINT
    atomic_write(path.with_suffix(".new"), lambda f: torch.save(state, f), binary=True)
    if path.exists():
        os.replace(path, run_dir / PREVIOUS_CHECKPOINT)
    os.replace(path.with_suffix(".new"), path)


def load_checkpoint(run_dir: Path, map_location: str | torch.device = "cpu") -> dict | None:
    """The newest readable checkpoint of a run, or None if it has none.

    An unreadable newest checkpoint is left in place for inspection (never deleted); the previous
    one is used when it is readable, else the run stops with a message saying what to do.
    """
    candidates = [run_dir / CHECKPOINT, run_dir / PREVIOUS_CHECKPOINT]
    if not candidates[0].exists() and (run_dir / (CHECKPOINT[:-3] + ".new")).exists():
        # Killed between the two renames of save_checkpoint: the .new file is the latest.
        candidates.insert(0, run_dir / (CHECKPOINT[:-3] + ".new"))
    broken = []
    for path in candidates:
        if not path.exists():
            continue
        try:
            state = torch.load(path, map_location=map_location, weights_only=False)
            if not isinstance(state, dict) or "iteration" not in state:
                raise ValueError("not a resexp checkpoint")
        except Exception as e:  # torch raises many kinds on a truncated or foreign file
            log.warning("checkpoint %s is unreadable (%s); it is kept as it is", path, _short(e))
            broken.append(path)
            continue
        if broken:
            log.warning("resuming from the older checkpoint %s instead", path)
        return state
    if broken:
        raise CheckpointError(
            f"no readable checkpoint in {run_dir} ({', '.join(p.name for p in broken)} "
            "could not be read and are kept for inspection). To start this run over, add "
            "restart=true (the old directory is kept under a new name), or choose another name=."
        )
    return None


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:200]


# ----------------------------------------------------------------------------------------------
# The run's curves: metrics.jsonl and TensorBoard


class Tracker:
    """Writes a run's curves to metrics.jsonl and TensorBoard.

    A resumed run passes the checkpoint's ``history``: rows of metrics.jsonl after it are
    dropped, and TensorBoard is told to discard events after its last row (``purge_step``), so a
    resumed curve has no duplicate or stale points.
    """

    def __init__(
        self, run_dir: Path, history: list[dict] | None = None, hparams: dict | None = None
    ):
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir = run_dir
        self.metrics_path = run_dir / "metrics.jsonl"
        self.rows: list[dict] = list(history or [])
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
        self.hparams = hparams
        if hparams and not self.rows:  # a fresh run: a session in TensorBoard's HParams tab
            from torch.utils.tensorboard.summary import hparams as hparams_summaries

            _, start, _ = hparams_summaries(hparams, {"error/test": None, "error/train": None})
            self.writer.file_writer.add_summary(start)

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
            if row.get(key) is not None and math.isfinite(row[key]):
                self.writer.add_scalar(tag, row[key], step)
        for kind in ("train", "test"):
            value = row.get(f"{kind}_error")
            if value is not None and math.isfinite(value):
                self.writer.add_scalar(f"figure6/{self.arch}/error_{kind}", value, step)
        self.writer.flush()

    def close(self, status: str | None = None) -> None:
        """Flush and close; with ``status`` (completed, diverged, ...), end the HParams session
        (still running for an interrupted run)."""
        if self.hparams and status in ("completed", "diverged", "failed"):
            from torch.utils.tensorboard.summary import hparams as hparams_summaries

            _, _, end = hparams_summaries(self.hparams, {"error/test": None})
            self.writer.file_writer.add_summary(session_end(end, status))
        self.writer.close()


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


def log_gradient_stats(
    writer: Any, model: torch.nn.Module, step: int, histograms: bool = True
) -> None:
    """Write ``grad_norm/<layer>`` scalars and ``weights/<layer>`` histograms for ``step``.

    Call it after ``loss.backward()`` (it reads ``.grad``) and before the next ``zero_grad``.
    Covers every weight with 2 or more dimensions (convs, projections, the fc layer). The norms
    reach the host in one transfer (one synchronisation); histograms copy the weights. Nothing
    in the model or its gradients changes. Works on a ``torch.compile``d model too.
    """
    named = [
        (name.removeprefix("_orig_mod.").removesuffix(".weight"), p)
        for name, p in model.named_parameters()
        if p.dim() > 1 and p.grad is not None
    ]
    if not named:
        return
    norms = torch.stack([p.grad.detach().float().norm() for _, p in named]).cpu().tolist()
    for (name, _), n in zip(named, norms, strict=True):
        writer.add_scalar(f"grad_norm/{name}", n, step)
    if histograms:
        for name, p in named:
            writer.add_histogram(f"weights/{name}", p.detach().float().cpu(), step)


# ----------------------------------------------------------------------------------------------
# Progress: a live bar in a terminal, one plain line per evaluation elsewhere


class Progress:
    """Shows a run's progress: ``mode`` is bar, lines, none or auto (bar on a terminal)."""

    def __init__(self, label: str, total: int, start: int = 0, mode: str = "auto"):
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "lines"
        if mode not in ("bar", "lines", "none"):
            raise ValueError(f"progress must be auto, bar, lines or none, not {mode!r}")
        self.label, self.total, self.mode = label, total, mode
        self.start_iteration, self.start_time = start, time.perf_counter()
        self._bar = None
        if mode == "bar":
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[status]}"),
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

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def format_seconds(seconds: float) -> str:
    """1:02:03 for hours, 2:03 for minutes."""
    seconds = int(max(seconds, 0))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
