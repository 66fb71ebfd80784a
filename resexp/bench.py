"""``resexp bench``: how fast resexp trains and evaluates, beside a conventional loop, same run.

What is measured is resexp's own training step as ``train.fit`` runs it (``train.train_step`` on
``data.TrainBatches``, the same optimizer, per-step ``set_lr`` and on-device counters), after
warm-up, for the configuration ``resexp train`` would run with the same overrides
(``config.BenchConfig``: the training schema plus a ``bench`` node). Beside it, in
the same process and on the same images, runs the loop most public reproductions of He et al.
2015, sec. 4.2 use (e.g. akamaster/pytorch_resnet_cifar10): a torchvision ``DataLoader`` over PIL
images with RandomCrop(32, 4) / RandomHorizontalFlip / ToTensor / Normalize, an eager fp32
model, and ``.item()`` bookkeeping every step. Both train the same network with the same SGD; the
speed-up is a ratio measured side by side. The timed steps alternate between the two in
``rounds`` blocks, so a change in the machine's load during the run touches both alike.

Numbers reported: training images/s and ms per step; the share of a step spent producing the
batch (augmentation and batching); evaluation images/s; peak memory (process RSS on the CPU,
``max_memory_allocated`` on CUDA); the time of the first step and evaluation (torch.compile's
compile time lands there); the training FLOP/s each loop achieves, as a share of the fp32 peak
measured on this device just before (``measured_peak_flops``); and the machine: torch, device,
CPU model, cores, threads, load.
"""

from __future__ import annotations

import math
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from resexp import runtime as runtime_module
from resexp.config import arch_name
from resexp.data import ImageData, load_data, mean_std
from resexp.errors import ConfigError
from resexp.models import build_model, count_parameters, macs_per_image
from resexp.runtime import Runtime, resolve
from resexp.train import Counters, evaluate, lr_at, make_batches, make_optimizer, set_lr, train_step

if TYPE_CHECKING:
    from rich.table import Table
    from torchvision.transforms import Compose

SYNTHETIC_TRAIN_IMAGES = 10_000  # enough for many distinct batches; generated in about a second
EVAL_IMAGES = 2000  # the test images the evaluation is timed on
BASELINE_MAX_WORKERS = 4  # akamaster/pytorch_resnet_cifar10's --workers default
PEAK_MATMUL_SIZE = 1024  # n of the n x n fp32 matmuls timed for the peak: 2.1 GFLOP each
PEAK_MATMUL_REPEATS = 5


def default_data() -> dict[str, Any]:
    """bench's data where the command line leaves it (``resexp.cli.bench_overrides``):
    generated images, so that timing needs no download; the test size for any source."""
    return {"data": "synthetic", "data.train_size": SYNTHETIC_TRAIN_IMAGES,
            "data.test_size": EVAL_IMAGES}  # fmt: skip


# ----------------------------------------------------------------------------------------------
# Setup: options, data, the machine


def _model(cfg: Any, data: ImageData) -> torch.nn.Module:
    """The network ``cfg`` names, for ``data``'s classes, seeded as both loops start."""
    torch.manual_seed(0)
    return build_model(cfg.depth, cfg.residual, cfg.shortcut, cfg.block, len(data.classes),
                       family=cfg.family, stem=cfg.stem)  # fmt: skip


def _load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _peak_rss_mib(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # KiB on Linux


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def measured_peak_flops(device: torch.device) -> float:
    """Multiply-add throughput of ``device`` in fp32 (FLOP/s, an FMA counting 2), measured: the
    best of PEAK_MATMUL_REPEATS square matmuls (2 n^3 FLOPs each) with the threads in force.

    A measured peak, not the vendor's specification: what the BLAS reaches on this machine, now
    (a busy machine measures less). bf16 multiplies faster where the hardware has it, so a bf16
    run can exceed 100% of it."""
    n = PEAK_MATMUL_SIZE
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b  # warm-up: threads started, kernel chosen
    best = math.inf
    for _ in range(PEAK_MATMUL_REPEATS):
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def train_flops_per_image(model: torch.nn.Module) -> int:
    """Training FLOPs per image, the usual estimate: the forward pass's multiply-accumulates of
    the convs and the fc layer (``models.macs_per_image``) x 2 FLOPs each, x 3 for forward and
    backward (the backward pass costs about twice the forward: gradients of the inputs and of
    the weights). BN, ReLU and the additions are left out, so it errs low."""
    return 2 * 3 * macs_per_image(model)


@dataclass
class Block:
    """A timed run of consecutive training steps."""

    steps: int
    wall_s: float  # the steps' wall time, device work included
    data_s: float  # the part spent producing the batches (augmentation, batching, copies)
    step_s: list[float]  # each step's wall time; empty where the device runs asynchronously


def _split(total: int, parts: int) -> list[int]:
    """``total`` steps in ``parts`` blocks as even as possible, e.g. 10 in 3 -> [4, 3, 3]."""
    parts = min(parts, total)
    return [total // parts + (i < total % parts) for i in range(parts)]


# ----------------------------------------------------------------------------------------------
# resexp's loop: device-resident data, train.train_step, counters on the device


class _Ours:
    """resexp's training loop, cut into timed blocks of steps."""

    def __init__(self, cfg: Any, data: ImageData, runtime: Runtime) -> None:
        self.runtime = runtime
        self.device = device = runtime.device
        self.model = _model(cfg, data)
        self.step_model = runtime.prepare(self.model)
        self.data = data.to(device)
        self.schedule = s = cfg.schedule
        self.optimizer = make_optimizer(self.model, s, fused=device.type == "cuda")
        self.batches = make_batches(self.data, s.batch_size, cfg.data.normalize, cfg.seed, runtime)
        self.counters = Counters(device)
        self.iteration = 0
        self.model.train()

    def steps(self, n: int) -> Block:
        """Run ``n`` steps, timing them and the part spent producing batches."""
        cuda = self.device.type == "cuda"
        marks, step_s, data_time = [], [], 0.0
        _sync(self.device)
        start = time.perf_counter()
        for _ in range(n):
            step_start = time.perf_counter()
            set_lr(self.optimizer, lr_at(self.iteration, self.schedule))
            if cuda:  # events, not a sync per step: the steady state stays free of host syncs
                begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(True)
                begin.record()
                x, y = self.batches.next()
                end.record()
                marks.append((begin, end))
            else:
                t = time.perf_counter()
                x, y = self.batches.next()
                data_time += time.perf_counter() - t
            loss, wrong = train_step(self.step_model, self.optimizer, x, y, self.runtime)
            self.counters.add(self.iteration, loss, wrong, len(y))
            self.iteration += 1
            if not cuda:
                step_s.append(time.perf_counter() - step_start)
        _sync(self.device)
        elapsed = time.perf_counter() - start
        if cuda:
            data_time = sum(b.elapsed_time(e) for b, e in marks) / 1000
        return Block(n, elapsed, data_time, step_s)

    def evaluate(self) -> float:
        """One pass over the test images the way ``fit`` evaluates; returns its wall time (s)."""
        _sync(self.device)
        start = time.perf_counter()
        data, batches, runtime = self.data, self.batches, self.runtime
        evaluate(self.step_model, data.test_x, data.test_y, batches.mean, batches.std,
                 self.schedule.eval_batch_size, runtime.memory_format)  # fmt: skip
        _sync(self.device)
        return time.perf_counter() - start


# ----------------------------------------------------------------------------------------------
# The conventional loop: DataLoader, PIL transforms, eager fp32, .item() every step


class PILImages(torch.utils.data.Dataset):
    """uint8 images as torchvision's CIFAR10 dataset serves them: an (N, 32, 32, 3) array, each
    item turned into a PIL image and passed through ``transform``."""

    def __init__(self, x_uint8: torch.Tensor, y: torch.Tensor, transform: Callable) -> None:
        self.data = x_uint8.permute(0, 2, 3, 1).contiguous().cpu().numpy()  # (N, H, W, C)
        self.targets = y.cpu().tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        return self.transform(Image.fromarray(self.data[i])), self.targets[i]


def baseline_transforms(train_x: torch.Tensor, train: bool) -> Compose:
    """akamaster's pipeline, with this data set's per-channel mean and std."""
    from torchvision import transforms

    mean, std = mean_std(train_x.cpu(), "channel_std")
    normalize = transforms.Normalize(mean.flatten().tolist(), std.flatten().tolist())
    augment = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()]
    return transforms.Compose([*(augment if train else []), transforms.ToTensor(), normalize])


def baseline_workers() -> int:
    """DataLoader workers as common reproductions set them, capped at this machine's cores."""
    return max(1, min(BASELINE_MAX_WORKERS, os.cpu_count() or 1))


class _Baseline:
    """The conventional loop, cut into timed blocks of steps."""

    def __init__(self, cfg: Any, data: ImageData, device: torch.device) -> None:
        self.device = device
        self.batch_size = cfg.schedule.batch_size
        self.model = _model(cfg, data).to(device)
        self.optimizer = make_optimizer(self.model, cfg.schedule)  # resexp's SGD, not fused
        self.workers = baseline_workers()
        self.pin_memory = device.type == "cuda"
        self.train_transform = baseline_transforms(data.train_x, train=True)
        self.test_set = PILImages(
            data.test_x, data.test_y, baseline_transforms(data.train_x, train=False)
        )
        self.train_loader = torch.utils.data.DataLoader(
            PILImages(data.train_x, data.train_y, self.train_transform),
            batch_size=self.batch_size,
            shuffle=True,
            num_workers=self.workers,
            pin_memory=self.pin_memory,
            drop_last=True,  # every step the same batch size, as resexp's
        )
        self._iterator: Iterator | None = None
        self.losses: list[float] = []  # what an AverageMeter would be fed
        self.model.train()

    def _next(self) -> tuple[torch.Tensor, torch.Tensor]:
        while True:
            if self._iterator is None:
                self._iterator = iter(self.train_loader)  # a new epoch: workers start again
            try:
                return next(self._iterator)
            except StopIteration:
                self._iterator = None

    def steps(self, n: int) -> Block:
        """Run ``n`` steps, timing them and the wait for each batch (workers, copy)."""
        data_time, step_s = 0.0, []
        _sync(self.device)
        start = time.perf_counter()
        for _ in range(n):
            t = time.perf_counter()
            x, y = self._next()
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            _sync(self.device)
            data_time += time.perf_counter() - t
            out = self.model(x)
            loss = F.cross_entropy(out, y)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            correct = (out.argmax(1) == y).sum()
            self.losses.append(loss.item())  # a host sync every step
            self.losses.append(100.0 * correct.item() / len(y))
            step_s.append(time.perf_counter() - t)  # .item() synchronised already
        _sync(self.device)
        return Block(n, time.perf_counter() - start, data_time, step_s)

    def close(self) -> None:
        """Stop the workers (as the end of an epoch would), so their peak RSS can be read."""
        self._iterator = None

    @torch.no_grad()
    def evaluate(self) -> float:
        """One pass over the test images with a fresh DataLoader, as each epoch's validation."""
        loader = torch.utils.data.DataLoader(
            self.test_set,
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.workers,
            pin_memory=self.pin_memory,
        )
        self.model.eval()
        _sync(self.device)
        start = time.perf_counter()
        for x, y in loader:
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            out = self.model(x)
            self.losses.append(F.cross_entropy(out, y).item())
            self.losses.append((out.argmax(1) == y).sum().item())
        _sync(self.device)
        elapsed = time.perf_counter() - start
        self.model.train()
        return elapsed


# ----------------------------------------------------------------------------------------------
# The measurement


def bench(cfg: Any) -> dict[str, Any]:
    """Measure resexp's training step, evaluation and memory, and the conventional loop beside it,
    for ``cfg`` (a checked ``BenchConfig``: ``resexp.cli.bench_config``), as a JSON-ready dict.

    ``bench.iterations`` timed steps per loop, in ``bench.rounds`` alternating blocks, follow
    ``bench.warmup`` untimed ones. The runtime resolves as ``train.fit`` resolves it for ``cfg``
    (``compile=auto``: for the schedule's length, the paper's 64k iterations by default); the
    baseline evaluates at the training batch size.
    """
    s = cfg.schedule
    runtime = resolve(cfg, iterations=s.iterations)
    images = load_data(cfg.data)
    if s.batch_size > len(images.train_y):
        raise ConfigError(
            f"schedule.batch_size={s.batch_size}: more than the {len(images.train_y)} images"
        )

    threads_before = torch.get_num_threads()
    try:
        runtime.apply()  # as train.fit: both loops run with its threads; restored at the end
        return _measure(cfg, images, runtime)
    finally:
        torch.set_num_threads(threads_before)


def _measure(cfg: Any, images: ImageData, runtime: Runtime) -> dict[str, Any]:
    b, s = cfg.bench, cfg.schedule
    compile = (runtime.compile_mode or "default") if runtime.compile else "none"  # what is timed
    options = {**{k: cfg[k] for k in ("depth", "residual", "device", "precision", "threads")},
               **b, "batch_size": s.batch_size, "eval_batch_size": s.eval_batch_size,
               "compile": "auto" if cfg.compile == "auto" else compile,
               "channels_last": str(cfg.channels_last).lower(), "data": cfg.data.source,
               "eval_images": cfg.data.test_size, "data_root": cfg.data.get("root")}  # fmt: skip
    blocks = _split(b.iterations, b.rounds)
    dev = runtime.device
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    load_before = _load_average()
    started = datetime.now(timezone.utc)
    peak = measured_peak_flops(dev)

    # resexp: warm-up (compilation included), a warm-up evaluation, then the first timed block.
    ours = _Ours(cfg, images, runtime)
    first_step_s = ours.steps(1).wall_s
    ours.steps(b.warmup - 1)
    first_eval_s = ours.evaluate()
    ours_times = [ours.steps(blocks[0])]
    ours_rss = _peak_rss_mib()
    ours_cuda = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None

    base = None
    base_times: list[Block] = []
    if b.baseline:
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        base = _Baseline(cfg, images, dev)
        base_first_step_s = base.steps(1).wall_s
        base.steps(b.warmup - 1)
        base_times.append(base.steps(blocks[0]))

    # The remaining blocks alternate, so that both loops see the same load.
    for n in blocks[1:]:
        ours_times.append(ours.steps(n))
        if base is not None:
            base_times.append(base.steps(n))
    ours_eval_s = ours.evaluate()

    flops = train_flops_per_image(ours.model)
    ours_loop = {
        "precision": runtime.precision,
        "channels_last": runtime.channels_last,
        "compile": compile,
        **_rates(ours_times, s.batch_size, flops, peak),
        "eval_images_per_s": len(images.test_y) / ours_eval_s,
        "eval_batch_size": s.eval_batch_size,
        "first_step_s": first_step_s,
        "first_eval_s": first_eval_s,
        "peak_rss_mib": ours_rss,
        "peak_cuda_mib": ours_cuda,
    }
    base_loop = None
    if base is not None:
        base_eval_s = base.evaluate()
        base.close()
        base_cuda = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None
        base_loop = {
            "precision": "fp32",
            "channels_last": False,
            "compile": "none",
            "workers": base.workers,
            "pin_memory": base.pin_memory,
            "transforms": [type(t).__name__ for t in base.train_transform.transforms],
            **_rates(base_times, s.batch_size, flops, peak),
            "eval_images_per_s": len(images.test_y) / base_eval_s,
            "eval_batch_size": s.batch_size,
            "first_step_s": base_first_step_s,
            # The process's peak includes resexp's (measured first); the workers' is separate.
            "peak_rss_mib": _peak_rss_mib(),
            "workers_peak_rss_mib": _peak_rss_mib(resource.RUSAGE_CHILDREN),
            "peak_cuda_mib": base_cuda,
        }
    return {
        "options": options,
        "machine": {
            "date": started.isoformat(timespec="seconds"),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "device": str(dev),
            "device_name": runtime_module.device_name(dev),
            "cpu_model": runtime_module.device_name(torch.device("cpu")),
            "cores": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "load_average_before": load_before,
            "load_average_after": _load_average(),
            "fp32_peak_flops_per_s": peak,
            "fp32_peak_how": f"best of {PEAK_MATMUL_REPEATS} fp32 {PEAK_MATMUL_SIZE}x"
            f"{PEAK_MATMUL_SIZE} matmuls, measured (not a specification)",
        },
        "model": {
            "arch": arch_name(cfg.residual, cfg.block, cfg.depth, cfg.family, cfg.stem),
            "params": count_parameters(ours.model),
            "data": images.description,
        },
        "resexp": ours_loop,
        "baseline": base_loop,
        "speedup": ours_loop["images_per_s"] / base_loop["images_per_s"] if base_loop else None,
        "eval_speedup": (
            ours_loop["eval_images_per_s"] / base_loop["eval_images_per_s"] if base_loop else None
        ),
    }


def _rates(blocks: list[Block], batch_size: int, flops: int, peak: float) -> dict[str, Any]:
    """Throughput over all timed blocks, its spread across blocks, the data path's share, and
    the training FLOP/s (``flops`` per image) as a share of the measured ``peak``."""
    steps = sum(b.steps for b in blocks)
    wall = sum(b.wall_s for b in blocks)
    data = sum(b.data_s for b in blocks)
    step_s = [t for b in blocks for t in b.step_s]
    images_per_s = steps * batch_size / wall
    return {
        "steps": steps,
        "images_per_s": images_per_s,
        "ms_per_step": 1000 * wall / steps,
        # The median resists a busy machine's stalls; None where steps run asynchronously (CUDA).
        "ms_per_step_median": 1000 * statistics.median(step_s) if step_s else None,
        "data_ms_per_step": 1000 * data / steps,
        "data_share": data / wall,
        "images_per_s_by_round": [b.steps * batch_size / b.wall_s for b in blocks],
        "train_flops_per_image": flops,
        "train_flops_per_s": images_per_s * flops,
        "peak_share": images_per_s * flops / peak,
    }


# ----------------------------------------------------------------------------------------------
# Reporting


def format_table(result: dict[str, Any]) -> Table:
    """The result as a rich Table: resexp, the conventional loop, and their ratio."""
    from rich.table import Table

    ours, base = result["resexp"], result["baseline"]
    machine, model = result["machine"], result["model"]
    load = machine["load_average_before"]
    setup = (
        f"{ours['precision']}, {'channels_last' if ours['channels_last'] else 'NCHW'}, "
        f"compile={ours['compile']}"
    )
    table = Table(
        title=(
            f"{model['arch']}, batch {result['options']['batch_size']}, {machine['device']} "
            f"({machine['device_name']}), {machine['threads']} threads, "
            f"load {' '.join(f'{v:.2f}' for v in load) if load else 'n/a'}"
        ),
        caption=(
            f"resexp: {setup}. Baseline: DataLoader with {base['workers']} workers, PIL "
            "transforms, eager fp32, .item() per step."
            if base
            else f"resexp: {setup}."
        )
        + f" fp32 peak {machine['fp32_peak_flops_per_s'] / 1e9:.0f} GFLOP/s: "
        f"{machine['fp32_peak_how']}; training FLOPs: 6 x forward MACs per image.",
    )
    table.add_column("")
    table.add_column("resexp", justify="right")
    if base:
        table.add_column("baseline", justify="right")
        table.add_column("ratio", justify="right")

    def row(label: str, key: str, fmt: str, ratio: bool = False, scale: float = 1) -> None:
        values = [ours.get(key), base.get(key)] if base else [ours.get(key)]
        cells = [label, *("n/a" if v is None else fmt.format(v * scale) for v in values)]
        if base:
            a, b = values
            cells.append(f"{a / b:.2f}x" if ratio and a and b else "")
        table.add_row(*cells)

    row("train images/s", "images_per_s", "{:.0f}", ratio=True)
    row("ms per step", "ms_per_step", "{:.1f}")
    row("ms per step, median", "ms_per_step_median", "{:.1f}")
    row("data share of a step", "data_share", "{:.1%}")
    row("train GFLOP/s", "train_flops_per_s", "{:.3g}", scale=1e-9)
    row("share of fp32 peak", "peak_share", "{:.1%}")
    row("eval images/s", "eval_images_per_s", "{:.0f}", ratio=True)
    row("first step (s)", "first_step_s", "{:.2f}")
    row("peak RSS (MiB)", "peak_rss_mib", "{:.0f}")
    if ours.get("peak_cuda_mib") is not None:
        row("peak CUDA memory (MiB)", "peak_cuda_mib", "{:.0f}")
    return table
