"""A study's runs (read through ``resexp.rundir.RunDir``), and grouping them into networks."""

from __future__ import annotations

import math
import re
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from resexp.compare.references import GRID_DEPTHS, REFERENCES, Reference
from resexp.errors import ResexpError
from resexp.models import ResNet, build_model, count_parameters
from resexp.rundir import RunDir, run_dirs


@dataclass(frozen=True, eq=False)  # one object per run folder: hashed by identity
class Run:
    """One run as found on disk: compare's, and the analyses' (``resexp.analysis.find_runs``)."""

    path: Path
    arch: str  # the folder name: plain-56, resnet-56, preact-110, plain-preact-110, resnet50, ...
    depth: int
    residual: bool
    block: str
    shortcut: str
    family: str  # cifar | imagenet
    stem: str
    seed: int
    config: dict = field(repr=False)  # {} without a readable config.yaml
    summary: dict = field(repr=False)  # {}: no summary.json yet

    @classmethod
    def read(cls, path: Path) -> Run:
        """Read a run folder. Settings come from summary.json, else config.yaml, else the folder
        names (a run in progress has no summary, one from before a key existed lacks it)."""
        folder = RunDir(path)
        summary, config = folder.read_summary() or {}, folder.read_config() or {}

        def setting(key: str, default: Any = None) -> Any:
            for source in (summary, config):
                if source.get(key) is not None:
                    return source[key]
            return default

        arch = path.parent.name
        name_depth = re.search(r"-?(\d+)(?=$|-)", arch)  # plain-56, resnet50-imagenet-stem
        depth = int(setting("depth", int(name_depth.group(1)) if name_depth else 0))
        kind = family_of(arch, depth)  # plain, resnet, preact, ...: the block when none is saved
        block = "basic" if kind in ("plain", "resnet") else kind.split("-")[-1]
        seed = setting("seed")
        return cls(
            path=path,
            arch=arch,
            depth=depth,
            residual=bool(setting("residual", not arch.startswith("plain"))),
            block=str(setting("block", block)),
            shortcut=str(setting("shortcut", "A")),
            family=str(setting("family", "cifar")),  # runs made before the key existed: cifar
            stem=str(setting("stem", "cifar")),
            seed=int(path.name[4:] if seed is None else seed),
            config=config,
            summary=summary,
        )

    @property
    def dir(self) -> RunDir:
        return RunDir(self.path)

    @property
    def name(self) -> str:
        return self.dir.label

    @property
    def num_classes(self) -> int:
        """From the run's summary (the data it read), else its data config, else 10."""
        identity = self.data_identity or {}
        if identity.get("classes"):
            return len(identity["classes"])
        from omegaconf import OmegaConf

        from resexp.config import num_classes

        return num_classes(OmegaConf.create(self.config)) or 10

    @property
    def status(self) -> str:
        """completed | diverged | failed | interrupted | partial (no summary.json yet)."""
        return str(self.summary.get("status", "completed")) if self.summary else "partial"

    @property
    def iteration(self) -> int | None:
        """The iteration it trained to, as its summary says (None without one)."""
        return self.summary.get("iterations")

    @property
    def label(self) -> str:
        """Its name, and for a run that has not completed, its state and iteration."""
        if self.status == "completed":
            return self.name
        at = f" at iteration {self.iteration:,}" if self.iteration is not None else ""
        return f"{self.name} ({self.status}{at})"

    @property
    def identity(self) -> dict:
        """The columns that say which run a row of numbers belongs to."""
        return {
            "run": self.label,
            "arch": self.arch,
            "depth": self.depth,
            "residual": self.residual,
            "seed": self.seed,
        }

    @cached_property
    def rows(self) -> list[dict]:
        return self.dir.read_metrics()

    def build(self) -> ResNet:
        """The network at initialization, exactly as ``fit`` built it (same seed, same calls)."""
        torch.manual_seed(self.seed)
        return build_model(self.depth, self.residual, self.shortcut, self.block,
                           self.num_classes, family=self.family, stem=self.stem)  # fmt: skip

    @cached_property
    def params(self) -> int | None:
        """From the summary; for a run without one yet (in progress), counted on its network."""
        if self.summary.get("params"):
            return self.summary["params"]
        try:
            return count_parameters(self.build())
        except Exception:
            return None

    @property
    def planned_iterations(self) -> int | None:
        planned = self.summary.get("planned_iterations")
        planned = planned or (self.config.get("schedule") or {}).get("iterations")
        return int(planned) if planned else None

    @property
    def data(self) -> str | None:
        data = self.summary.get("data") or (self.config.get("data") or {}).get("source")
        return str(data) if data else None

    @property
    def data_identity(self) -> dict | None:
        return self.summary.get("data_identity")

    @property
    def original_cifar10(self) -> bool:
        """Whether the run trained and tested on torchvision's original CIFAR-10, whole: the
        data He et al. report on. Runs that predate the recorded identity are judged by their
        data description, which names the loader."""
        if self.data_identity:
            ident = self.data_identity
            return ident.get("source") == "cifar10" and not ident.get("subset_or_split")
        text = self.data or ""
        return text.startswith("CIFAR-10 (torchvision)") and "(" not in text.split(":", 1)[-1]

    @property
    def curve(self) -> list[dict]:
        """The evaluations with finite errors (a diverged run's last rows may hold NaN)."""
        return [
            r for r in self.rows if _finite(r.get("train_error")) and _finite(r.get("test_error"))
        ]

    @property
    def train_curve(self) -> list[dict]:
        """Every row with a finite training error: the training-log points between evaluations
        (``schedule.log_every``) and the evaluations themselves."""
        return [r for r in self.rows if _finite(r.get("train_error"))]

    @property
    def final(self) -> dict | None:
        """The last evaluation: iteration, train_error, test_error (%); None if there is none."""
        curve = self.curve
        if curve:
            return curve[-1]
        s = self.summary
        if _finite(s.get("train_error")) and _finite(s.get("test_error")):
            keys = ("train_error", "test_error")
            return {"iteration": s.get("iterations") or 0, **{k: s[k] for k in keys}}
        return None

    @property
    def iterations(self) -> int:
        """The iteration of its last evaluation (0 without one)."""
        final = self.final
        return int(final["iteration"]) if final else 0

    @property
    def usable(self) -> bool:
        """Whether its numbers may count: not diverged or failed, and evaluated at least once."""
        return self.status not in ("diverged", "failed") and self.final is not None

    def describe(self) -> str:
        """One line: what state the run is in, and how far it got."""
        planned = f" of {self.planned_iterations:,}" if self.planned_iterations else ""
        what = self.status
        if what == "partial":
            what = "partial (no summary.json: still running, or stopped before the end)"
        return f"{self.name}: {what}, at iteration {self.iterations:,}{planned}"


def find_study(root: Path = Path("outputs")) -> Path:
    """The study under ``root`` whose runs changed most recently."""
    root = Path(root)
    if not root.is_dir():
        raise ResexpError(
            f"{root} does not exist: train some runs first (`resexp sweep` runs the whole "
            "study), or name the study folder to compare."
        )
    studies = [root, *sorted(p for p in root.iterdir() if p.is_dir())]
    changed = {study: max(map(_mtime, runs)) for study in studies if (runs := _with_curves(study))}
    if not changed:
        raise ResexpError(
            f"no study under {root}: expected runs at {root}/<study>/<arch>-<depth>/seed<k>/ "
            "with a metrics.jsonl. Train some first (`resexp sweep` runs the whole study), or "
            "name the study folder to compare."
        )
    return max(changed, key=changed.__getitem__)  # of equal times, the first in ``studies``


def _with_curves(study: Path) -> list[RunDir]:
    """The run folders of a study that hold metrics or a summary."""
    return [run for run in run_dirs(study) if run.has_curves()]


def load_runs(study: Path) -> list[Run]:
    """Every run of a study, sorted by network and seed."""
    study = Path(study)
    if not study.is_dir():
        raise ResexpError(f"{study} is not a folder: name a study folder, e.g. outputs/degradation")
    runs = [Run.read(run.path) for run in _with_curves(study)]
    if not runs:
        hint = ""
        if RunDir(study).has_curves():
            hint = f" {study} is a run folder; its study is {study.parent.parent}."
        elif any(_with_curves(p) for p in study.iterdir() if p.is_dir()):
            names = ", ".join(sorted(p.name for p in study.iterdir() if _with_curves(p)))
            hint = f" {study} holds studies ({names}): name one of them."
        raise ResexpError(
            f"no runs in {study}: expected {study}/<arch>-<depth>/seed<k>/metrics.jsonl.{hint}"
        )
    return runs


def family_of(arch: str, depth: int) -> str:
    """The arch name without its depth: plain-56 -> plain, resnet50 -> resnet,
    plain-bottleneck-164 -> plain-bottleneck, resnet50-imagenet-stem -> resnet-imagenet-stem."""
    return re.sub(rf"-?{depth}(?=$|-)", "", arch, count=1)


def _mtime(run: RunDir) -> float:
    times = [f.stat().st_mtime for f in (run.metrics_file, run.summary_file) if f.exists()]
    return max(times, default=0.0)


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


# Networks: the runs grouped by architecture, their final errors over seeds (no reading below).
@dataclass(frozen=True)
class Stat:
    """Mean, sample standard deviation (None for one value) and count."""

    mean: float
    std: float | None
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Stat | None:
        if not values:
            return None
        std = statistics.stdev(values) if len(values) > 1 else None
        return cls(statistics.fmean(values), std, len(values))

    def __str__(self) -> str:
        return f"{self.mean:.2f}" if self.std is None else f"{self.mean:.2f} ± {self.std:.2f}"


@dataclass
class Network:
    """One row of the results: an architecture and depth, over its seeds."""

    arch: str
    family: str  # the arch without its depth: plain, resnet, preact, plain-preact, ...
    depth: int
    residual: bool
    block: str
    runs: list[Run] = field(repr=False)  # every run found
    used: list[Run] = field(repr=False)  # the runs behind the numbers and the curves
    train_error: Stat | None = None
    test_error: Stat | None = None
    reference: Reference | None = None

    @property
    def label(self) -> str:
        """The paper's name: plain-20, ResNet-20 (PreAct-110, Highway-20 for the variants)."""
        pretty = {"resnet": "ResNet", "preact": "PreAct", "highway": "Highway"}
        return f"{pretty.get(self.family, self.family)}-{self.depth}"

    @property
    def preliminary(self) -> bool:
        """True when the numbers come from runs that have not finished."""
        return any(r.status != "completed" for r in self.used)

    @property
    def params(self) -> int | None:
        return next((r.params for r in self.runs if r.params), None)

    @property
    def iterations(self) -> list[int]:
        return sorted({r.iterations for r in self.used})

    @property
    def status_counts(self) -> str:
        """Its runs counted by state: '1 completed, 1 partial'."""
        return _count_statuses(self.runs)

    @property
    def unfinished_counts(self) -> str:
        """Its runs that have not completed, counted by state: '1 diverged' ('' for none)."""
        return _count_statuses([r for r in self.runs if r.status != "completed"])

    @property
    def twin(self) -> str:
        """The plain network of the same depth and block (a plain net is its own twin)."""
        if not self.residual:
            return self.arch
        if re.match(r"resnet\d", self.arch):  # the ImageNet family: resnet50 -> plain50
            return "plain" + self.arch.removeprefix("resnet")
        return (
            f"plain-{self.depth}" if self.block == "basic" else f"plain-{self.block}-{self.depth}"
        )


def final_values(runs: list[Run], metric: str) -> list[float]:
    """``metric`` (train_error, test_error) at each run's last evaluation: usable runs only."""
    values = []
    for run in runs:
        final = run.final
        assert final is not None, f"{run.name} has no evaluation: it is not usable"
        values.append(final[metric])
    return values


def group_networks(runs: list[Run]) -> list[Network]:
    """One Network per architecture: plain nets first, then residual ones, by depth.

    A network's numbers come from its completed runs; when none has completed yet, from the
    latest values of its runs in progress (the network is then ``preliminary``). Diverged and
    failed runs never count.
    """
    networks = []
    for arch, group in group_by_arch(runs).items():
        first = group[0]
        usable = [r for r in group if r.usable]
        used = [r for r in usable if r.status == "completed"] or usable
        networks.append(
            Network(
                arch=arch,
                family=family_of(arch, first.depth),
                depth=first.depth,
                residual=first.residual,
                block=first.block,
                runs=group,
                used=used,
                train_error=Stat.of(final_values(used, "train_error")),
                test_error=Stat.of(final_values(used, "test_error")),
                reference=REFERENCES.get(arch),
            )
        )

    def order(n: Network) -> tuple:  # plain or ResNet first in its half, then other families
        return (n.residual, n.family != ("resnet" if n.residual else "plain"), n.family, n.depth)

    return sorted(networks, key=order)


def group_by_arch(runs: Sequence[Run]) -> dict[str, list[Run]]:
    """Runs of the same architecture (several seeds) together, in the runs' order."""
    groups: dict[str, list[Run]] = {}
    for r in runs:
        groups.setdefault(r.arch, []).append(r)
    return groups


def missing_networks(networks: list[Network]) -> list[str]:
    """Networks of Figure 6's grid (20/32/44/56 x plain/ResNet) without any run.

    Only asked of studies that hold part of that grid, so a study of other depths or blocks is
    not told it lacks plain-20.
    """
    have = {n.arch for n in networks}
    grid = [f"{family}-{d}" for family in ("plain", "resnet") for d in GRID_DEPTHS]
    if not have & set(grid):
        return []
    return [arch for arch in grid if arch not in have]


def _count_statuses(runs: list[Run]) -> str:
    counts = Counter(r.status for r in runs)
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
