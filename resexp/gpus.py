"""One GPU for each parallel run of a sweep, from a pool its worker processes share.

Hydra's joblib launcher runs a sweep's jobs in worker processes that know nothing of each other.
They agree on GPUs through lock files: each GPU has ``runs_per_gpu`` slots, one lock file each; a
run takes the first free slot, spreading runs over the GPUs before doubling any up, and holds it
until it ends, so a GPU that comes free takes the next run. The locks are ``flock`` locks
(through filelock), which the kernel drops when their process dies: a run killed with -9 frees
its slot.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Slot:
    """One of a GPU's ``runs_per_gpu`` places."""

    gpu: int
    index: int


def pool_folder(study_dir: Path) -> Path:
    """Where a study's slot locks live: this machine's temporary folder (flock works there, and a
    study folder shared with other machines keeps its own GPUs apart), one folder per study."""
    key = hashlib.sha256(str(study_dir.resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"resexp-gpu-slots-{key}"


class GpuPool:
    """``gpus`` GPUs with ``runs_per_gpu`` slots each, shared through lock files in ``folder``."""

    def __init__(self, folder: Path, gpus: int, runs_per_gpu: int = 1) -> None:
        if gpus < 1:
            raise ValueError(f"a GPU pool needs at least one GPU, not {gpus}")
        if runs_per_gpu < 1:
            raise ValueError(f"runs_per_gpu must be 1 or more, not {runs_per_gpu}")
        self.folder, self.gpus, self.runs_per_gpu = Path(folder), gpus, runs_per_gpu

    def slots(self, prefer: int | None = None) -> list[Slot]:
        """The slots in the order a run tries them: every GPU's first slot, then every GPU's
        second, ...; within each round, GPU ``prefer`` first (the one a reused worker process
        already has a CUDA context on)."""
        order = sorted(range(self.gpus), key=lambda g: g != prefer)
        return [Slot(g, i) for i in range(self.runs_per_gpu) for g in order]

    def try_claim(self, prefer: int | None = None) -> tuple[Slot, FileLock] | None:
        """Take the first free slot and return it with its held lock; None if all are taken."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for slot in self.slots(prefer):
            lock = FileLock(self.folder / f"gpu{slot.gpu}-slot{slot.index}.lock")
            try:
                lock.acquire(timeout=0)
            except Timeout:
                continue
            return slot, lock
        return None

    @contextmanager
    def claim(self, prefer: int | None = None, poll: float = 1.0) -> Iterator[int]:
        """Hold a free slot for the ``with`` block, waiting for one while all are taken; yields
        its GPU's index."""
        waited = False
        while (held := self.try_claim(prefer)) is None:
            if not waited:
                log.info("all %d GPU slots are taken (%d GPUs x runs_per_gpu=%d): waiting",
                         self.gpus * self.runs_per_gpu, self.gpus, self.runs_per_gpu)  # fmt: skip
                waited = True
            time.sleep(poll)
        slot, lock = held
        try:
            yield slot.gpu
        finally:
            lock.release()
