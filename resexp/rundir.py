"""A run's folder, and the one place that knows what is in it.

A study is ``outputs/<name>/``; each of its runs lives in ``<arch>/seed<k>/`` below it
(``plain-56/seed0``, ``resnet-110/seed2``) and holds:

    config.yaml         the resolved config
    metrics.jsonl       one JSON object per training-log point (iteration, train error and loss,
                        lr) and per evaluation (the same, plus test error and loss): the curves
                        of He et al. 2015, Figure 6
    summary.json        final errors, status, speed, device, versions, and the file format
    events.out.tfevents.*   the same curves for TensorBoard (x-axis: iteration)
    checkpoint.pt       the latest checkpoint (checkpoint.prev.pt: the one before)
    train.log           the log lines, with time stamps

``restart=true`` moves a run aside whole as ``seed<k>.old-<time>``; such folders are never read
as runs. Every file that a later step reads back is written atomically (temporary file, flush
to disk, rename), so a crash or a full disk during a write leaves the previous version intact.

summary.json and the checkpoint carry ``format``: the version of this layout. Files written
before it existed have none and read as format 1; both read the same way today.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from resexp.errors import ResexpError, one_line

log = logging.getLogger(__name__)

FORMAT = 2  # 1: before summary.json and checkpoints said their format (read the same way)
SEED_FOLDER = re.compile(r"seed(\d+)")  # seedK.old-<time> (kept by restart=true): not a run


class CheckpointError(ResexpError):
    """A checkpoint exists but cannot be read."""


@dataclass(frozen=True)
class RunDir:
    """The folder of one run: its file paths, and reading and writing each file."""

    path: Path

    @property
    def config_file(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def summary_file(self) -> Path:
        return self.path / "summary.json"

    @property
    def checkpoint_file(self) -> Path:
        return self.path / "checkpoint.pt"

    @property
    def previous_checkpoint_file(self) -> Path:
        return self.path / "checkpoint.prev.pt"

    @property
    def log_file(self) -> Path:
        return self.path / "train.log"

    @property
    def label(self) -> str:
        """``<arch>/seed<k>``, as the sweep's and compare's tables name a run."""
        return f"{self.path.parent.name}/{self.path.name}"

    # ------------------------------------------------------------------------------------------
    # What the folder holds

    def has_curves(self) -> bool:
        """Anything compare can draw: metrics or a summary."""
        return self.metrics_file.is_file() or self.summary_file.is_file()

    def is_trained(self) -> bool:
        """A config and a checkpoint: a network the analyses and evaluate can rebuild."""
        checkpoints = (self.checkpoint_file, self.previous_checkpoint_file)
        return self.config_file.is_file() and any(p.is_file() for p in checkpoints)

    # ------------------------------------------------------------------------------------------
    # config.yaml, summary.json, metrics.jsonl

    def read_config(self) -> dict | None:
        """The saved config as a dict (as ``fit`` saved it: resolved), or None if missing or
        unreadable (a torn or foreign file)."""
        from omegaconf import OmegaConf

        if not self.config_file.is_file():
            return None
        try:
            config = OmegaConf.to_container(OmegaConf.load(self.config_file), resolve=False)
        except Exception as e:
            log.debug("unreadable %s (%s)", self.config_file, type(e).__name__)
            return None
        return config if isinstance(config, dict) else None

    def write_config(self, cfg: Any) -> None:
        """Save ``cfg`` (a DictConfig), resolved, as config.yaml."""
        from omegaconf import OmegaConf

        text = OmegaConf.to_yaml(cfg, resolve=True)
        atomic_write(self.config_file, lambda f: f.write(text))

    def read_summary(self) -> dict | None:
        """summary.json, or None while there is none (still training, killed) or it is torn."""
        try:
            summary = json.loads(self.summary_file.read_text())
        except (OSError, ValueError):
            return None
        return summary if isinstance(summary, dict) else None

    def write_summary(self, summary: dict) -> None:
        write_json(self.summary_file, {**summary, "format": FORMAT})

    def read_metrics(self) -> list[dict]:
        return read_metrics(self.metrics_file)

    # ------------------------------------------------------------------------------------------
    # Checkpoints

    def save_checkpoint(self, state: dict) -> None:
        """Write ``state`` as the run's checkpoint, keeping the previous one as a fallback.

        The new file is complete on disk before it replaces anything, so a crash or a full disk
        at any point leaves at least one readable checkpoint.
        """
        new = self.checkpoint_file.with_suffix(".new")
        atomic_write(new, lambda f: torch.save({**state, "format": FORMAT}, f), binary=True)
        if self.checkpoint_file.exists():
            os.replace(self.checkpoint_file, self.previous_checkpoint_file)
        os.replace(new, self.checkpoint_file)

    def load_checkpoint(self) -> dict | None:
        """The newest readable checkpoint of the run, on the CPU, or None if it has none.

        An unreadable newest checkpoint is left in place for inspection (never deleted); the
        previous one is used when it is readable, else the run stops with a message saying what
        to do.
        """
        candidates = [self.checkpoint_file, self.previous_checkpoint_file]
        new = self.checkpoint_file.with_suffix(".new")
        if not candidates[0].exists() and new.exists():
            candidates.insert(0, new)  # killed between save_checkpoint's two renames
        broken = []
        for path in candidates:
            if not path.exists():
                continue
            state = _read_checkpoint(path)
            if state is None:
                broken.append(path)
                continue
            if broken:
                log.warning("resuming from the older checkpoint %s instead", path)
            return state
        if broken:
            raise CheckpointError(
                f"no readable checkpoint in {self.path} ({', '.join(p.name for p in broken)} "
                "could not be read and are kept for inspection). To start this run over, add "
                "restart=true (the old directory is kept under a new name), or choose another "
                "name=."
            )
        return None

    def checkpoints(self) -> list[tuple[int, dict]]:
        """(iteration, model state dict) of each readable saved checkpoint, oldest first."""
        found = {}
        for path in (self.previous_checkpoint_file, self.checkpoint_file):
            state = _read_checkpoint(path) if path.exists() else None
            if state is not None:
                found[int(state["iteration"])] = state["model"]
        return sorted(found.items())

    def move_aside(self) -> Path:
        """Rename the whole folder to ``seed<k>.old-<time>`` (``restart=true``); never deletes."""
        kept = self.path.with_name(f"{self.path.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
        os.replace(self.path, kept)
        return kept


def _read_checkpoint(path: Path) -> dict | None:
    """A resexp checkpoint's state on the CPU, or None (with a warning) if it cannot be read."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(state, dict) or "iteration" not in state:
            raise ValueError("not a resexp checkpoint")
    except Exception as e:  # torch raises many kinds on a truncated or foreign file
        log.warning("checkpoint %s is unreadable (%s); it is kept as it is", path, one_line(e))
        return None
    if int(state.get("format", 1)) > FORMAT:
        raise CheckpointError(
            f"{path} was written by a newer resexp (format {state['format']}, this one reads up "
            f"to {FORMAT}): upgrade resexp to resume or analyse it."
        )
    return state


# ----------------------------------------------------------------------------------------------
# Finding runs


def run_dirs(study: Path) -> list[RunDir]:
    """Every run folder of a study (``<arch>/seed<k>/``), whatever it holds yet, sorted by
    arch and seed. Hidden folders and analysis outputs are not runs."""
    if not study.is_dir():
        return []
    seeds = [p for p in study.glob("*/seed*") if p.is_dir() and SEED_FOLDER.fullmatch(p.name)]
    found = [RunDir(p) for p in seeds if not p.parent.name.startswith((".", "analysis"))]
    return sorted(found, key=lambda r: (r.path.parent.name, int(r.path.name[4:])))


# ----------------------------------------------------------------------------------------------
# Atomic files


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


def read_metrics(path: Path) -> list[dict]:
    """The rows of a JSON-lines file; a torn last line (a crash mid-write) is skipped."""
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    return rows
