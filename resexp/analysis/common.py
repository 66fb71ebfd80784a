"""What every analysis shares: finding runs, rebuilding their networks and data, writing results.

A run here is a ``resexp.compare.runs.Run`` whose folder holds a config.yaml and a checkpoint (a
network that can be rebuilt); a study directory holds several. ``Output`` writes an analysis's
PNGs, CSV, JSON and TensorBoard images into one folder and records every path it wrote;
``Output.check`` states what the literature expects next to what was measured, so a reader sees
at once whether they agree.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from resexp.compare.runs import Run
from resexp.errors import ResexpError
from resexp.models import ResNet
from resexp.rundir import RunDir, run_dirs, write_json
from resexp.runtime import Runtime
from resexp.tracking import Progress

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

    from resexp.data import ImageData

log = logging.getLogger("resexp.analysis")


# ----------------------------------------------------------------------------------------------
# Runs


def load_trained(run: Run, runtime: Runtime) -> tuple[ResNet, int]:
    """The run's network with its latest readable checkpoint, in eval mode, and that iteration."""
    state = run.dir.load_checkpoint()
    if state is None:
        raise ResexpError(f"{run.path} has no checkpoint; train it first")
    model = run.build()
    model.load_state_dict(state["model"])
    prepared = runtime.prepare(model)
    assert prepared is model  # the analyses' runtime never compiles (Settings.runtime)
    return model.eval(), int(state["iteration"])


def find_runs(target: Path, unfinished: bool = False) -> list[Run]:
    """The runs at ``target``: the run itself, or every run folder below a study folder.

    Only completed runs (summary.json says so), unless ``unfinished``: an interrupted, diverged
    or still-running run's checkpoint is not a trained network, and its twin may have trained
    longer; with ``unfinished`` such runs come in, labelled with their state and iteration.
    Folders kept by ``restart=true`` (``seed0.old-*``) are not runs (``resexp.rundir.run_dirs``).
    """
    target = Path(target)
    if not target.exists():
        raise ResexpError(f"{target} does not exist; give a run or study folder under outputs/")
    if RunDir(target).is_trained():
        folders = [RunDir(target)]
    else:
        folders = []
        for folder in run_dirs(target):
            if folder.is_trained():
                folders.append(folder)
            elif folder.config_file.is_file():
                log.info("skipping %s: no checkpoint yet", folder.path)
    runs = []
    for folder in folders:
        run = Run.read(folder.path)
        if "depth" not in run.config:
            log.warning("skipping %s: no readable config.yaml", folder.path)
            continue
        if run.status != "completed" and not unfinished:
            log.info("skipping %s: %s, not completed (unfinished=true includes it)", folder,
                     run.label.split(" (", 1)[-1].rstrip(")"))  # fmt: skip
            continue
        runs.append(run)
    return sorted(runs, key=lambda r: (r.block, r.depth, r.residual, r.seed, str(r.path)))


# ----------------------------------------------------------------------------------------------
# Data


SAMPLE_SEED = 0  # every analysis of every network of a study looks at the same images


def balanced_sample(y: Tensor, images: int | None) -> Tensor:
    """Indices of a seeded, class-balanced sample of ``images`` of the labels ``y``, shuffled.

    Each class gets ``images // classes`` images, and the remainder one more each in a seeded
    order of classes (a class with too few images gives what it has). None or 0, or more than
    there are: all of them, shuffled. Never "the first N": an image folder is read class by
    class, so the first 2,000 CIFAR-10 test images would be airplanes and automobiles only.
    """
    g = torch.Generator().manual_seed(SAMPLE_SEED)
    labels = y.cpu()
    if not images or images >= len(labels):
        return torch.randperm(len(labels), generator=g)
    classes = int(labels.max()) + 1
    want = [images // classes] * classes
    for c in torch.randperm(classes, generator=g)[: images % classes].tolist():
        want[c] += 1
    chosen = []
    for c in range(classes):
        members = (labels == c).nonzero().flatten()
        chosen.append(members[torch.randperm(len(members), generator=g)[: want[c]]])
    index = torch.cat(chosen)
    return index[torch.randperm(len(index), generator=g)]


@dataclass
class RunData:
    """A run's images (uint8, on the analysis device) and its normalisation constants."""

    images: ImageData
    mean: Tensor
    std: Tensor
    samples: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)  # drawn so far

    def normalized(self, split: str, images: int | None) -> tuple[Tensor, Tensor]:
        """A seeded, class-balanced sample of ``images`` images of ``split`` (see
        ``balanced_sample``; None or 0: all of them), recorded in ``samples``; as float32,
        normalised as in training, without augmentation."""
        d = self.images
        x, y = (d.train_x, d.train_y) if split == "train" else (d.test_x, d.test_y)
        index = balanced_sample(y, images).to(y.device)
        x, y = x[index], y[index]
        per_class = torch.bincount(y.cpu(), minlength=int(d.test_y.max()) + 1).tolist()
        self.samples[(split, len(y))] = {
            "split": split,
            "images": len(y),
            "seed": SAMPLE_SEED,
            "per_class": per_class,
            "how": "seeded, class-balanced sample (resexp.analysis.common.balanced_sample)",
        }
        return (x.float() - self.mean) / self.std, y


class DataCache:
    """Loads each distinct data config once per analysis (a study's runs share one)."""

    def __init__(self, device: torch.device, data_for: Callable[[dict], Any] | None = None):
        self.device = device
        self.data_for = data_for  # a run's data config -> the one to read (default: its own)
        self._loaded: dict[str, RunData] = {}
        self.samples: dict[tuple[str, int], dict[str, Any]] = {}  # every sample drawn, any data

    def __call__(self, run: Run) -> RunData:
        from omegaconf import OmegaConf

        from resexp.data import load_data, mean_std

        key = json.dumps(run.config["data"], sort_keys=True)
        if key not in self._loaded:
            cfg = self.data_for(run.config["data"]) if self.data_for else run.config["data"]
            data = load_data(OmegaConf.create(cfg)).to(self.device)
            mean, std = mean_std(data.train_x, cfg.get("normalize", "pixel_mean"))
            self._loaded[key] = RunData(data, mean, std, self.samples)
        return self._loaded[key]


@dataclass
class Settings:
    """The settings every analysis takes: where it runs and how many images it looks at."""

    runtime: Runtime  # fp32, eager, contiguous: measurements, not speed
    images: int | None  # test images: a balanced sample (RunData.normalized); None or 0: all
    batch_size: int
    data: DataCache


def batches(x: Tensor, y: Tensor, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """``x``, ``y`` in consecutive batches (the last one partial)."""
    for start in range(0, len(x), batch_size):
        yield x[start : start + batch_size], y[start : start + batch_size]


# ----------------------------------------------------------------------------------------------
# Output: PNG, CSV, JSON, TensorBoard, and the checks against the literature


def yes_no(agrees: bool | None) -> str:
    return "n/a" if agrees is None else ("yes" if agrees else "no")


class Output:
    """The folder an analysis writes into, and the list of what it wrote."""

    def __init__(self, name: str, out_dir: Path, progress: str = "auto"):
        self.name = name
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.progress = progress
        self.written: list[Path] = []
        self.checks: list[dict[str, Any]] = []
        self.runs: list[Run] = []  # the runs analysed: each check names their iterations
        self.samples: dict[tuple[str, int], dict[str, Any]] = {}  # the images they looked at
        self._writer: SummaryWriter | None = None

    @property
    def writer(self) -> SummaryWriter:
        """A SummaryWriter on ``<out_dir>/tensorboard/`` (old event files there are replaced)."""
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            tb = self.dir / "tensorboard"
            for old in tb.glob("events.out.tfevents.*"):
                old.unlink()  # a re-run replaces the images instead of stacking duplicates
            self._writer = SummaryWriter(log_dir=str(tb))
        return self._writer

    def steps(self, label: str, total: int) -> Progress:
        return Progress(f"{self.name} {label}", total, mode=self.progress)

    def _record(self, path: Path) -> Path:
        if path not in self.written:
            self.written.append(path)
        return path

    def figure(self, fig: Any, stem: str) -> Path:
        """Save a matplotlib figure as ``<stem>.png`` and, read back, as a TensorBoard image."""
        from matplotlib.image import imread

        path = self.dir / f"{stem}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")  # drawn once, for both
        image = imread(path)[..., :3]  # (H, W, RGB) floats in [0, 1]
        self.writer.add_image(f"{self.name}/{stem}", image, dataformats="HWC")
        return self._record(path)

    def csv(self, stem: str, rows: Sequence[dict[str, Any]]) -> Path:
        """Write ``rows`` (dicts with the same keys) as ``<stem>.csv``."""
        path = self.dir / f"{stem}.csv"
        fields = list(rows[0]) if rows else []
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            for row in rows:
                w.writerow({k: _csv_value(v) for k, v in row.items()})
        return self._record(path)

    def json(self, stem: str, obj: Any) -> Path:
        """Write ``obj`` as ``<stem>.json``; a dict gains ``checks`` (see ``check``), ``samples``
        (the images it looked at) and ``analysed_runs`` (each run's status and iteration)."""
        if isinstance(obj, dict):
            obj = {
                **obj,
                "checks": self.checks,
                "samples": list(self.samples.values()),
                "analysed_runs": [
                    {"run": r.label, "status": r.status, "iteration": r.iteration}
                    for r in self.runs
                ],
            }
        path = self.dir / f"{stem}.json"
        write_json(path, _finite(obj))
        return self._record(path)

    def check(
        self, claim: str, expected: str, measured: str, agrees: bool | None, source: str
    ) -> None:
        """Record and log one comparison with the literature (agrees None: cannot be judged)."""
        unfinished = [r.label for r in self.runs if r.status != "completed"]
        if unfinished:  # never compared as if trained: say which runs had not finished
            measured += f" [not completed: {'; '.join(unfinished)}]"
        self.checks.append(
            {
                "claim": claim,
                "source": source,
                "expected": expected,
                "measured": measured,
                "agrees": agrees,
                "iterations": {r.label: r.iteration for r in self.runs},
            }
        )
        log.info(
            "%s: %s\n  expected: %s; measured: %s; agrees: %s",
            self.name,
            claim,
            expected,
            measured,
            yes_no(agrees),
        )

    def close(self) -> None:
        """Write the checks to TensorBoard as text, flush and close the event file."""
        if self.checks:
            text = "\n\n".join(
                f"**{c['claim']}** ({c['source']})  \nexpected: {c['expected']}  \n"
                f"measured: {c['measured']}  \nagrees: {yes_no(c['agrees'])}"
                for c in self.checks
            )
            self.writer.add_text(f"{self.name}/checks", text)
        if self._writer is not None:
            self._writer.close()
            self.written.extend(sorted((self.dir / "tensorboard").glob("events.out.tfevents.*")))


def _csv_value(v: Any) -> Any:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return v


def _finite(obj: Any) -> Any:
    """JSON has no NaN or infinity: write them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


# ----------------------------------------------------------------------------------------------
# Plot styles: one colour per depth, plain dashed, residual solid (He et al. 2015, Figs. 6-7)


def integer_ticks(ax) -> None:
    """Only whole numbers on the x-axis (layer, block, k)."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def line_style(residual: bool) -> str:
    return "-" if residual else "--"


def run_style(run: Run, colors: dict[int, Any], lw: float = 1.3) -> dict[str, Any]:
    """A run's line: the colour of its depth (``colors``), plain dashed, residual solid."""
    return {"color": colors[run.depth], "linestyle": line_style(run.residual), "lw": lw}


def new_figure(rows: int = 1, cols: int = 1, size: tuple[float, float] = (5.0, 3.6)):
    """A matplotlib Figure (no pyplot state, no GUI backend) and its axes grid."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] * cols, size[1] * rows), layout="constrained")
    return fig, fig.subplots(rows, cols, squeeze=False)


def pairs_by_depth(values: dict[Run, float]) -> dict[int, tuple[float, float]]:
    """Per depth with both kinds (basic blocks): (mean over plain runs, mean over residual runs)."""
    by: dict[int, dict[bool, list[float]]] = {}
    for run, v in values.items():
        if run.block == "basic" and math.isfinite(v):
            by.setdefault(run.depth, {}).setdefault(run.residual, []).append(v)
    return {
        d: (sum(k[False]) / len(k[False]), sum(k[True]) / len(k[True]))
        for d, k in sorted(by.items())
        if False in k and True in k
    }
