"""``resexp sweep``: the whole study through Hydra's multirun, resumable, with its own progress.

The grid comes from an ``experiment/`` preset (``experiment=degradation``: depth 20, 32, 44, 56 x
residual false, true) and the command line (``depth=20,56``, ``seeds=3``). Hydra's launcher runs
it: one run after another by default, several at once with ``hydra/launcher=joblib``, one SLURM
job each with ``hydra/launcher=submitit_slurm``. This module plans the grid ahead (to skip
finished runs, prepare the data once and count what is left), gives each parallel run a GPU of its
own (``gpu_pool``), watches the run directories while the launcher works, and reports what
completed, what was skipped and what failed.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from omegaconf import OmegaConf, open_dict

from resexp.config import num_classes
from resexp.data import load_data
from resexp.errors import ConfigError
from resexp.gpus import GpuPool, pool_folder
from resexp.models import build_model
from resexp.rundir import RunDir, read_metrics
from resexp.runtime import resolve
from resexp.tracking import format_seconds
from resexp.train import EXIT_INTERRUPTED, StopRequested, make_optimizer, train_step

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "degradation"
REFUSALS = "sweep-refusals.jsonl"  # in the study folder: runs a sweep's job refused to start


@dataclass
class PlannedRun:
    """One point of the grid: its resolved config and its directory."""

    run_dir: Path
    iterations: int
    data: dict
    done_before: bool = False  # completed before this sweep started: skipped
    cfg: Any = field(default=None, repr=False)  # the run's composed config
    seconds_per_iteration: float | None = None  # measured on this machine by estimate()


@dataclass
class Plan:
    runs: list[PlannedRun]
    args: list[str]  # the command line, as Hydra's sweeper gets it
    study_dir: Path
    launcher: str = "basic"
    n_jobs: int = 1  # runs at once (joblib's n_jobs; 1 for the basic launcher)
    estimate_seconds: float | None = None  # the sweep's wall time, as estimate() measured it
    outcomes: dict[Path, str] = field(default_factory=dict)
    started: float = field(default_factory=time.time)  # refusals before this are not this sweep's


# ----------------------------------------------------------------------------------------------
# Planning the grid


def translate_args(args: list[str]) -> list[str]:
    """``seeds=N`` -> ``seed=range(0,N)``; add the default experiment unless one is named."""
    out = []
    for a in args:
        if a.startswith("seeds="):
            n = a.split("=", 1)[1]
            if not n.isdigit() or int(n) < 1:
                raise ConfigError(
                    f"seeds= takes a positive number of seeds (seeds=3: 0, 1, 2), not {n!r}"
                )
            out.append(f"seed=range(0,{int(n)})")
        else:
            out.append(a)
    if not any(a.startswith(("experiment=", "+experiment=")) for a in out):
        out.insert(0, f"experiment={DEFAULT_EXPERIMENT}")
    return out


def plan_sweep(args: list[str], compose: Callable) -> Plan:
    """The runs of the grid ``args`` (already translated) describe, expanded by Hydra's own
    sweeper: a preset's ``hydra.sweeper.params`` first, then the command line, whose axes (or
    single values, e.g. ``depth=56``) replace the preset's."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    base = [o.input_line for o in parser.parse_overrides(args) if not o.is_sweep_override()]
    hydra_cfg = compose(base, return_hydra_config=True)
    preset = [f"{k}={v}" for k, v in (hydra_cfg.hydra.sweeper.get("params") or {}).items()]
    (jobs,) = BasicSweeper.split_arguments(parser.parse_overrides(preset + args), None)
    launcher = str(hydra_cfg.hydra.launcher.get("_target_", "basic")).split(".")[-1]

    runs = []
    for job in jobs:
        cfg = compose(job)
        run_dir = Path(cfg.run_dir)
        summary = RunDir(run_dir).read_summary()
        runs.append(
            PlannedRun(
                run_dir=run_dir,
                iterations=int(cfg.schedule.iterations),
                data=cast(dict, OmegaConf.to_container(cfg.data, resolve=True)),
                done_before=bool(summary and summary.get("status") == "completed"),
                cfg=cfg,
            )
        )
    study_dir = Path(hydra_cfg.output_root) / str(hydra_cfg.name)
    n_jobs = int(hydra_cfg.hydra.launcher.get("n_jobs") or 1) if launcher != "basic" else 1
    if n_jobs < 1:  # joblib's -1: one per core
        n_jobs = os.cpu_count() or 1
    pool = gpu_pool(hydra_cfg, launcher)
    if pool is not None and n_jobs > pool.gpus * pool.runs_per_gpu:  # the others wait for a GPU
        log.info("sweep: %d GPU(s) x runs_per_gpu=%d: %d runs at a time, not n_jobs=%d",
                 pool.gpus, pool.runs_per_gpu, pool.gpus * pool.runs_per_gpu, n_jobs)  # fmt: skip
        n_jobs = pool.gpus * pool.runs_per_gpu
    return Plan(runs, args, study_dir, launcher, max(n_jobs, 1))


# ----------------------------------------------------------------------------------------------
# How long it will take, measured on this machine before anything starts


def time_steps(cfg: Any, steps: int = 3) -> float:
    """Seconds per training step of ``cfg``'s network, measured here: a few SGD steps on random
    images with the run's own device, precision, memory format and threads (no compile, so
    a compiled run will be somewhat faster)."""
    runtime = resolve(cfg)  # not compiled
    device = runtime.device
    threads = torch.get_num_threads()
    runtime.apply()
    try:
        classes = num_classes(cfg) or 10
        net = build_model(cfg.depth, cfg.residual, cfg.shortcut, cfg.block, classes,
                          family=cfg.family, stem=cfg.stem)  # fmt: skip
        model = runtime.prepare(net).train()
        optimizer = make_optimizer(model, cfg.schedule, fused=device.type == "cuda")
        n = cfg.schedule.batch_size
        x = torch.randn(n, 3, 32, 32, device=device).to(memory_format=runtime.memory_format)
        y = torch.randint(0, classes, (n,), device=device)
        train_step(model, optimizer, x, y, runtime)  # warm-up: allocations, cuDNN's choice
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(steps):
            loss, _ = train_step(model, optimizer, x, y, runtime)
        loss.item()  # waits for the device
        return (time.perf_counter() - start) / steps
    finally:
        torch.set_num_threads(threads)


def estimate(plan: Plan, test_images: dict[str, int]) -> float | None:
    """Measure each distinct network left to run (``time_steps``) and return the sweep's
    estimated wall time in seconds (None when the runs execute elsewhere, on SLURM nodes).

    A run's time: iterations x (step time + its share of the test evaluations, each about a
    third of a step per image batch, as a forward pass is). Runs at once share the machine:
    the total is divided by the launcher's parallel jobs.
    """
    if plan.launcher.lower().startswith("submitit") and "local" not in plan.launcher.lower():
        return None
    measured: dict[tuple, float] = {}
    total = 0.0
    for run in plan.runs:
        if run.done_before:
            continue
        c = run.cfg
        key = (c.depth, c.block, c.family, c.stem, c.shortcut, c.schedule.batch_size, c.device,
               c.precision, str(c.channels_last), c.threads)  # fmt: skip
        if key not in measured:
            measured[key] = time_steps(c)
        step = measured[key]
        images = test_images.get(json.dumps(run.data, sort_keys=True), 10_000)
        evaluation = step / 3 * images / c.schedule.batch_size
        run.seconds_per_iteration = step + evaluation / c.schedule.eval_every
        total += run.seconds_per_iteration * run.iterations
    if torch.cuda.is_initialized():  # the memory the timing cached goes back to the runs
        torch.cuda.empty_cache()
    plan.estimate_seconds = total / plan.n_jobs
    return plan.estimate_seconds


LONG_CPU_SWEEP = 3 * 3600  # seconds: past this on a CPU, the plan points to experiment=laptop


def plan_table(plan: Plan):
    """The runs of the plan with their measured time per run, as a rich Table."""
    from rich.table import Table

    table = Table(title=f"plan: {plan.study_dir} ({plan.n_jobs} at a time, {plan.launcher})")
    for column in ("run", "iterations", "s / iteration", "estimated time"):
        table.add_column(column, justify="left" if column == "run" else "right")
    for run in plan.runs:
        spi = run.seconds_per_iteration
        estimated = format_seconds(spi * run.iterations) if spi else "?"
        table.add_row(
            RunDir(run.run_dir).label,
            f"{run.iterations:,}",
            f"{spi:.3f}" if spi else "",
            "completed before" if run.done_before else estimated,
        )
    return table


def prepare_data_once(plan: Plan) -> dict[str, int]:
    """Download/decode/cache each distinct data set of the sweep before any run starts; return
    the number of test images of each (keyed by its data config as JSON)."""
    sizes = {}
    for run in plan.runs:
        key = json.dumps(run.data, sort_keys=True)
        if run.done_before or key in sizes:
            continue
        data = load_data(OmegaConf.create(run.data))
        sizes[key] = len(data.test_y)
        log.info("sweep: data ready: %s", data.description)
    return sizes


# ----------------------------------------------------------------------------------------------
# Watching the runs while the launcher works


class Monitor(threading.Thread):
    """Prints the sweep's progress from the run directories: done/total, in flight, time left.

    It reads the files the runs write (metrics.jsonl, summary.json), so it works the same for
    runs in this process, in joblib workers or on SLURM nodes with a shared file system.
    """

    def __init__(self, plan: Plan, interval: float = 10.0):
        super().__init__(daemon=True)
        self.plan, self.interval = plan, interval
        self.todo = [r for r in plan.runs if not r.done_before]
        # Work in measured seconds where estimate() ran, else in iterations.
        self.total_iterations = sum(r.iterations * (r.seconds_per_iteration or 1.0)
                                    for r in self.todo)  # fmt: skip
        self.start_time = time.perf_counter()
        self._stop_event = threading.Event()
        self._last, self._last_time = "", 0.0

    def snapshot(self) -> tuple[int, int, list[str], float]:
        """(finished runs, total runs to do, runs in flight, work done so far: iterations,
        weighted by their measured seconds where the plan has them)."""
        finished, in_flight, iterations = 0, [], 0.0
        for run in self.todo:
            folder = RunDir(run.run_dir)
            summary, rows = folder.read_summary(), folder.read_metrics()
            it = rows[-1]["iteration"] if rows else 0
            weight = run.seconds_per_iteration or 1.0  # deeper nets: more seconds per iteration
            if summary and summary.get("status") in ("completed", "diverged", "failed"):
                finished += 1
                iterations += run.iterations * weight
            elif rows or folder.log_file.exists():
                in_flight.append(f"{folder.label} ({it}/{run.iterations})")
                iterations += it * weight
        return finished, len(self.todo), in_flight, iterations

    def line(self) -> str:
        finished, total, in_flight, iterations = self.snapshot()
        elapsed = time.perf_counter() - self.start_time
        eta = "?"
        if iterations > 0 and self.total_iterations:
            eta = format_seconds(elapsed / iterations * (self.total_iterations - iterations))
        elif self.plan.estimate_seconds:  # nothing logged yet: the measured plan's estimate
            eta = format_seconds(self.plan.estimate_seconds - elapsed)
        running = ", ".join(in_flight) if in_flight else "-"
        return f"sweep: {finished}/{total} runs done, running: {running}, time left ~{eta}"

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            self.report()

    def report(self, every: float = 60.0) -> None:
        """Log a line when a run starts or ends, and at least every ``every`` seconds."""
        text = self.line()
        state = text.rsplit(", time left", 1)[0]
        now = time.perf_counter()
        if state != self._last or now - self._last_time >= every:
            log.info(text)
            self._last, self._last_time = state, now

    def stop(self) -> None:
        self._stop_event.set()


# ----------------------------------------------------------------------------------------------
# One job of the sweep, and the end-of-sweep report


def gpu_pool(cfg: Any, launcher: str) -> GpuPool | None:
    """The study's GPU pool when ``cfg``'s run shares this machine's GPUs with other runs of the
    sweep: under the joblib launcher, with ``device=auto`` or ``cuda``, on a machine with CUDA.
    None otherwise: on the CPU or MPS, with an explicit ``cuda:N``, with one run at a time (the
    basic launcher), or under submitit, whose jobs get their GPUs from it (``gpus_per_node``)."""
    if "joblib" not in launcher.lower() or str(cfg.device) not in ("auto", "cuda"):
        return None
    if not torch.cuda.is_available():
        return None
    study = Path(cfg.output_root) / str(cfg.name)
    return GpuPool(pool_folder(study), torch.cuda.device_count(), int(cfg.runs_per_gpu))


def run_job(cfg, fit: Callable, launcher: str | None = None) -> dict | None:
    """Train one run of a sweep; a failure is written to its summary.json, not raised.

    A stop request (Ctrl-C, SIGTERM, a SLURM preemption) saves the run's checkpoint and ends
    the whole sweep with EXIT_INTERRUPTED; the same command resumes it.

    Under the joblib launcher on CUDA (``gpu_pool``), the run holds a slot of a GPU for as long
    as it trains, at most ``runs_per_gpu`` runs on each GPU; it waits while all are taken.
    ``launcher``: Hydra's launcher class (default: the one running this job).
    """
    pool = gpu_pool(cfg, _launcher() if launcher is None else launcher)
    if pool is None:
        return _fit_job(cfg, fit)
    # A reused worker process already has a CUDA context on its last run's GPU: try that first.
    current = torch.cuda.current_device() if torch.cuda.is_initialized() else None
    with pool.claim(prefer=current) as gpu:
        # Pinned before the run creates a CUDA context on it: the run's memory goes to this GPU,
        # and whatever names plain "cuda" (the current device) means this GPU too, not GPU 0.
        torch.cuda.set_device(gpu)
        with open_dict(cfg):
            cfg.device = f"cuda:{gpu}"
        try:
            return _fit_job(cfg, fit)
        finally:
            torch.cuda.empty_cache()  # this worker's next run may get another GPU


def _launcher() -> str:
    """The class of Hydra's launcher running this job ("" outside a Hydra job)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return ""
    return str(HydraConfig.get().launcher.get("_target_", ""))


def _fit_job(cfg, fit: Callable) -> dict | None:
    """``fit(cfg)``, with its failures recorded (run_job)."""
    run_dir = Path(cfg.run_dir)
    try:
        return fit(cfg)
    except StopRequested as e:  # Ctrl-C or SIGTERM stops the sweep, after this run's checkpoint
        log.warning("sweep stopped by %s; run the same command again to resume", e.args[0])
        raise SystemExit(EXIT_INTERRUPTED) from None
    except ConfigError as e:  # refused before it started: its folder is not this job's to write
        log.error("%s refused: %s", run_dir, e)
        study = Path(cfg.output_root) / str(cfg.name)
        study.mkdir(parents=True, exist_ok=True)
        with open(study / REFUSALS, "a") as f:
            f.write(json.dumps({"run_dir": str(run_dir), "time": time.time(), "error": str(e)}))
            f.write("\n")
        return None
    except Exception as e:  # one failed run must not stop the others
        log.error("%s failed: %s", run_dir, e)
        folder = RunDir(run_dir)
        previous = folder.read_summary() or {}
        if previous.get("status") != "completed":
            folder.write_summary({**previous, "status": "failed", "error": str(e)[:2000]})
        return None


def outcomes(plan: Plan) -> list[tuple[PlannedRun, str, dict]]:
    """Each planned run with its outcome: skipped (completed before this sweep), completed,
    diverged, interrupted, failed, refused (with the reason) or missing (never started)."""
    refused: dict[str, str] = {}
    for row in read_metrics(plan.study_dir / REFUSALS):  # JSON lines, torn ones skipped
        if row.get("time", 0) >= plan.started:
            refused[row["run_dir"]] = row.get("error", "")
    result = []
    for run in plan.runs:
        summary = RunDir(run.run_dir).read_summary() or {}
        if run.done_before:
            outcome = "skipped"
        elif str(run.run_dir) in refused:
            outcome, summary = "refused", {"error": refused[str(run.run_dir)]}
        else:
            outcome = summary.get("status", "missing")
        result.append((run, outcome, summary))
    return result


def report_table(plan: Plan):
    """A rich Table of the sweep's runs, and a line for each run that did not complete."""
    from rich.table import Table

    table = Table(title=f"sweep {plan.study_dir}")
    for column in ("run", "outcome", "train error %", "test error %", "iterations", "wall"):
        table.add_column(column)
    problems = []
    for run, outcome, s in outcomes(plan):
        if outcome not in ("skipped", "completed", "diverged"):  # diverged: a result, reported
            problems.append(
                f"  {run.run_dir}: {outcome}" + (f": {s['error']}" if s.get("error") else "")
            )
        table.add_row(
            RunDir(run.run_dir).label,
            outcome + (f": {s['error'][:60]}" if s.get("error") else ""),
            _pct(s.get("train_error")),
            _pct(s.get("test_error")),
            str(s.get("iterations", "")),
            format_seconds(s["wall_seconds"]) if s.get("wall_seconds") else "",
        )
    return table, problems


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"
