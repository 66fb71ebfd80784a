"""The training loop of He et al. 2015, section 4.2: ``fit(cfg) -> summary``.

SGD with momentum 0.9 and weight decay 1e-4 on mini-batches of 128, lr 0.1 divided by 10 at 32k and
48k iterations, stop at 64k; the whole test set evaluated about once an epoch. Training error is
the error on the training mini-batches since the last evaluation (the thin curves of Figure 6),
test error the error on the whole test set (the bold ones).

The data set lives on the training device as uint8 tensors and is augmented there a batch at a
time (see data.py). Metrics stay on the device between evaluations, so a step never waits for
the host. Every evaluation writes a checkpoint; re-running the same command resumes from it.
"""

from __future__ import annotations

import contextlib
import logging
import random
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from resexp.config import Config, ScheduleConfig, num_classes, validate
from resexp.data import ImageData, TrainBatches, eval_batches, first_missing, load_data, mean_std
from resexp.errors import ConfigError, ResexpError
from resexp.models import build_model, check_architecture, count_parameters
from resexp.rundir import RunDir
from resexp.runtime import Runtime, device_name, resolve
from resexp.tracking import Progress, Tracker, log_gradient_stats

log = logging.getLogger(__name__)

# Keys that may change between an interrupted run and its resumption without changing the
# experiment: where and how fast it runs, and how it reports.
HARMLESS_KEYS = {
    "device",
    "precision",
    "channels_last",
    "compile",
    "threads",
    "runs_per_gpu",
    "progress",
    "restart",
}


# ----------------------------------------------------------------------------------------------
# Seeds


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def random_states() -> dict:
    """Python's, NumPy's and torch's global random states (for an exact resume)."""
    states = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_random_states(states: dict) -> None:
    """Restore ``random_states()``'s output, on whatever devices this machine has.

    CUDA's states are per device: as many as both machines have are restored, whatever device
    count either saw (``set_rng_state_all`` refuses fewer visible devices); none where there is
    no CUDA, or none saved (a CPU checkpoint resumed on a GPU). Training draws its random
    numbers from the data's own generator, not these, so a count that differs changes nothing.
    """
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    saved = states.get("cuda") or []
    here = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for index, state in enumerate(saved[:here]):
        torch.cuda.set_rng_state(state, index)
    if saved and len(saved) != here:
        log.info("CUDA random states were saved for %d devices, %d here: %d restored",
                 len(saved), here, min(len(saved), here))  # fmt: skip


# ----------------------------------------------------------------------------------------------
# The schedule and one step


def lr_at(iteration: int, schedule: Any, warming_up: bool = False) -> float:
    """The learning rate at ``iteration``: divided by ``gamma`` at each milestone fraction."""
    if warming_up:
        return schedule.warmup.lr
    drops = sum(iteration >= round(m * schedule.iterations) for m in schedule.milestones)
    return schedule.lr * schedule.gamma**drops


def make_optimizer(model: torch.nn.Module, schedule: Any, fused: bool = False) -> torch.optim.SGD:
    """SGD with momentum and weight decay on every parameter (He et al. 2015, sec. 4.2).

    ``fused`` (used on CUDA) updates all parameters in one kernel and holds the learning rate in
    a tensor on the device, so changing it (``set_lr``) neither syncs nor recompiles a
    ``torch.compile``d step.
    """
    lr: float | torch.Tensor = schedule.lr
    if fused:
        lr = torch.tensor(schedule.lr, device=next(model.parameters()).device)
    return torch.optim.SGD(
        model.parameters(),
        lr=lr,
        momentum=schedule.momentum,
        weight_decay=schedule.weight_decay,
        fused=fused or None,
    )


def make_batches(
    data: ImageData, batch_size: int, normalize: str, seed: int, runtime: Runtime
) -> TrainBatches:
    """Mini-batches of ``data`` (on the device) in an order drawn from ``seed``, augmented as in
    He et al. 2015, sec. 4.2 (4-pixel padding, random crops, flips) and normalised with the
    training images' statistics, which ``.mean`` and ``.std`` keep for the test images."""
    mean, std = mean_std(data.train_x, normalize)
    generator = torch.Generator(device=runtime.device)
    generator.manual_seed(seed)
    return TrainBatches(data.train_x, data.train_y, batch_size, mean, std, generator,
                        memory_format=runtime.memory_format)  # fmt: skip


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate in place (a tensor lr keeps its identity and device)."""
    for group in optimizer.param_groups:
        if torch.is_tensor(group["lr"]):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    runtime: Runtime,
    scaler: torch.amp.GradScaler | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step; returns the batch's mean loss and its number of errors, on the device.

    ``scaler`` (fp16): the loss is scaled before backward and the step skipped when a gradient
    overflowed (PyTorch AMP docs, "Gradient Scaling"); disabled or None, a plain step.
    """
    with runtime.autocast():
        out = model(x)
        loss = F.cross_entropy(out, y)
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(optimizer)  # fused SGD takes the scale and overflow flag: no host sync
        scaler.update()
    return loss.detach().float(), (out.detach().argmax(1) != y).sum()


# ----------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def error_and_loss(
    model: torch.nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    should_stop: Callable[[], None] | None = None,
) -> tuple[float, float]:
    """Error (%) and mean cross-entropy of ``model``, in eval mode, over ``batches``.

    Always in fp32, whatever the training precision: the errors it returns are the ones a study
    reports, and bf16 logits (8 significant bits) tie and flip the argmax of a trained network
    on about 0.5% of CIFAR-10's test images, the size of Table 6's gap between ResNet-44 and
    ResNet-56. Training, evaluate and every analysis measure errors here.

    ``should_stop`` is called between batches and may raise to abandon the evaluation.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    errors = torch.zeros((), device=device, dtype=torch.long)
    loss = torch.zeros((), device=device)
    n = 0
    try:
        for xb, yb in batches:
            if should_stop is not None:
                should_stop()
            out = model(xb).float()  # fp32: no autocast here (see the docstring)
            errors += (out.argmax(1) != yb).sum()
            loss += F.cross_entropy(out, yb, reduction="sum")
            n += len(yb)
    finally:
        model.train(was_training)
    return 100.0 * errors.item() / n, loss.item() / n


def evaluate(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    batch_size: int,
    memory_format: torch.memory_format = torch.contiguous_format,
    should_stop: Callable[[], None] | None = None,
) -> tuple[float, float]:
    """``error_and_loss`` on a whole set, the single original view of each image, in fp32."""
    batches = eval_batches(x, y, batch_size, mean, std, memory_format=memory_format)
    return error_and_loss(model, batches, should_stop)


# ----------------------------------------------------------------------------------------------
# The run directory: fresh, resumed, or refused


def check_run_dir(cfg: DictConfig, run_dir: Path, state: dict | None = None) -> None:
    """Refuse a run directory that holds a run made with another config, naming the keys.

    Reads only: the CLI calls it before anything is written, ``fit`` again under the run's lock.
    ``restart=true`` accepts any directory (``prepare_run_dir`` moves the old run aside).
    """
    if cfg.restart:
        return
    if state is None:
        state = RunDir(run_dir).load_checkpoint()
    saved = state["config"] if state else RunDir(run_dir).read_config()
    if saved is None:
        return
    current = cast(dict, OmegaConf.to_container(cfg, resolve=True))  # DictConfig: a dict
    differing = config_differences(saved, current)
    if differing:
        raise ConfigError(
            f"{run_dir} holds a run made with another config (differs in: "
            f"{', '.join(differing)}). Choose another name= for a new experiment, or add "
            "restart=true to start this one over (the old directory is kept, renamed)."
        )


def prepare_run_dir(cfg: DictConfig, run_dir: Path) -> tuple[dict | None, Path | None]:
    """Check the run directory against ``cfg`` (``check_run_dir``); return the checkpoint to
    resume from (if any) and where ``restart=true`` moved the previous run (if it did): renamed
    whole, never deleted, so that the new run writes only into a new, empty directory."""
    state = RunDir(run_dir).load_checkpoint() if not cfg.restart else None
    check_run_dir(cfg, run_dir, state)
    if cfg.restart and run_dir.exists() and any(run_dir.iterdir()):
        kept = RunDir(run_dir).move_aside()
        return state, kept  # said once the new run's train.log exists, so that it is in it
    return state, None


def config_differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two configs, ignoring harmless keys.

    A key the old config lacks (saved by an older resexp) counts as its schema default, so a
    run made before a key existed resumes as long as the new config keeps that default.
    """
    differing = []
    for key in sorted(set(old) | set(new)):
        dotted = f"{prefix}{key}"
        if not prefix and key in HARMLESS_KEYS:
            continue
        a, b = old.get(key, _schema_default(dotted)), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            differing += config_differences(a, b, prefix=f"{dotted}.")
        elif a != b:
            differing.append(dotted)
    return differing


def _schema_default(dotted: str) -> Any:
    """The schema's default for a dotted key (None if it has none)."""
    node = OmegaConf.structured(Config)
    return OmegaConf.select(node, dotted, default=None, throw_on_missing=False)


# ----------------------------------------------------------------------------------------------
# Stopping cleanly: signals, one process per run, counters to carry across a resume

# Exit statuses of `resexp train` besides 0 (completed), 1 (crashed) and 2 (bad input):
EXIT_DIVERGED = 3  # the loss became NaN or infinite; summary.json says at which iteration
EXIT_INTERRUPTED = 75  # sysexits' EX_TEMPFAIL: stopped on request, checkpoint saved, run again


class StopRequested(Exception):
    """SIGTERM or SIGINT arrived: save a checkpoint and exit with EXIT_INTERRUPTED."""


class SignalGuard:
    """Turns SIGTERM and SIGINT into a request to stop at the next step (a checkpoint is saved).

    A second SIGINT (Ctrl-C twice) stops at once. Only the main thread can own signal handlers;
    elsewhere (a thread pool) the guard does nothing and the default behaviour stays.
    """

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> SignalGuard:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: no more waiting
        self.requested = signal.Signals(signum).name
        log.warning("%s received: saving a checkpoint, then stopping", self.requested)

    def check(self) -> None:
        if self.requested:
            raise StopRequested(self.requested)


@contextlib.contextmanager
def run_lock(run_dir: Path):
    """Hold an exclusive lock on a run; a second process on the same run is refused at once.

    The lock is an OS file lock beside the run directory (it survives ``restart=true`` renaming
    the directory), released by the OS when its process dies, so a crash never leaves it stuck.
    """
    from filelock import FileLock, Timeout

    new_folder = first_missing(run_dir.parent)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    lock_path = run_dir.parent / f".{run_dir.name}.lock"
    lock = FileLock(lock_path, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise ConfigError(
            f"another process is already training {run_dir}; wait for it to finish, "
            "or stop it (it saves a checkpoint on Ctrl-C or SIGTERM) and run this again"
        ) from None
    try:
        yield
    finally:
        if not run_dir.exists():  # refused before it started: leave nothing behind
            lock_path.unlink(missing_ok=True)
            if new_folder is not None:
                shutil.rmtree(new_folder, ignore_errors=True)
        lock.release()


class Counters:
    """Training error, loss and divergence since the last evaluation, kept on the device.

    Adding to them costs no host synchronisation; they are read at evaluations and warm-up
    checks. They are part of the checkpoint, so a run stopped between evaluations resumes exactly.
    """

    def __init__(self, device: torch.device) -> None:
        self.errors = torch.zeros((), device=device, dtype=torch.long)
        self.loss = torch.zeros((), device=device)
        self.seen = 0
        self.warm_errors = torch.zeros((), device=device, dtype=torch.long)
        self.warm_seen = 0
        # The first iteration whose loss was not finite (-1: none yet).
        self.bad_at = torch.full((), -1, device=device, dtype=torch.long)

    def add(self, iteration: int, loss: torch.Tensor, wrong: torch.Tensor, n: int) -> None:
        self.errors += wrong
        self.loss += loss * n
        self.seen += n
        self.warm_errors += wrong
        self.warm_seen += n
        first = (self.bad_at < 0) & ~torch.isfinite(loss)
        self.bad_at.copy_(torch.where(first, iteration, self.bad_at))

    def read_train(self) -> tuple[float, float]:
        """Training error (%) and mean loss since the last reset (one host sync)."""
        error = 100.0 * self.errors.item() / max(self.seen, 1)
        loss = self.loss.item() / max(self.seen, 1)
        return error, loss

    def reset_train(self) -> None:
        self.errors.zero_()
        self.loss.zero_()
        self.seen = 0

    def take_train(self) -> tuple[float, float]:
        """Training error (%) and mean loss since the last call; resets them."""
        error, loss = self.read_train()
        self.reset_train()
        return error, loss

    def take_warmup(self) -> float:
        error = 100.0 * self.warm_errors.item() / max(self.warm_seen, 1)
        self.warm_errors.zero_()
        self.warm_seen = 0
        return error

    def state_dict(self) -> dict:
        return {k: v.clone() if torch.is_tensor(v) else v for k, v in vars(self).items()}

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            current = getattr(self, key)
            if torch.is_tensor(current):
                current.copy_(value)
            else:
                setattr(self, key, value)


# ----------------------------------------------------------------------------------------------
# The loop


def fit(cfg: DictConfig) -> dict:
    """Train the network ``cfg`` describes; write its run directory; return its summary.

    Raises StopRequested after saving a checkpoint when SIGTERM/SIGINT arrives (the CLI exits
    with EXIT_INTERRUPTED); re-running the same config resumes, bit for bit on the CPU.
    """
    validate(cfg)
    run_dir = Path(cfg.run_dir)
    runtime = resolve(cfg, iterations=cfg.schedule.iterations)
    runtime.apply()

    # A bad architecture is refused before anything is written.
    check_architecture(cfg.depth, cfg.residual, cfg.shortcut, cfg.block, cfg.family, cfg.stem,
                       num_classes(cfg) or 10)  # fmt: skip

    # From here on, SIGTERM/SIGINT ask for a clean stop instead of killing the process.
    with SignalGuard() as guard, run_lock(run_dir):
        state, kept = prepare_run_dir(cfg, run_dir)
        previous = RunDir(run_dir).read_summary()
        if previous and previous.get("status") == "completed":
            log.info("%s is already completed (summary.json); nothing to do", run_dir)
            return previous
        data = load_data(cfg.data)
        seed_everything(cfg.seed)  # the initial weights depend on the seed alone
        model = build_model(cfg.depth, cfg.residual, cfg.shortcut, cfg.block, len(data.classes),
                            family=cfg.family, stem=cfg.stem)  # fmt: skip
        # Accepted: from here on the run writes into its own folder, and only there.
        run_dir.mkdir(parents=True, exist_ok=True)
        with log_to_file(RunDir(run_dir).log_file):
            log.info("%s", runtime.explain())  # the run's first line: what runs how, and why
            if kept is not None:
                log.info("restart=true: the previous run is kept in %s", kept)
            log.info("data: %s", data.description)
            RunDir(run_dir).write_config(cfg)
            guard.check()
            return _train(Training(cfg, run_dir, runtime, model, data, state), guard)


@contextlib.contextmanager
def log_to_file(path: Path):
    """Copy every log line to ``path`` (appended, with a time stamp) while the run lasts.

    Attached only once the run has been accepted, so a refused start writes no log anywhere.
    """
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(levelname)s] %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


class Training:
    """A run in progress: what the loop works with and advances, and what a checkpoint keeps.

    Set up fresh, or exactly as the checkpoint ``state`` left it (weights, optimizer, data order,
    counters, random states, metrics), so that a resumed run continues bit for bit.
    """

    def __init__(
        self,
        cfg: DictConfig,
        run_dir: Path,
        runtime: Runtime,
        model: torch.nn.Module,
        data: ImageData,
        state: dict | None,
    ) -> None:
        sched, device = cfg.schedule, runtime.device
        self.cfg, self.run_dir, self.runtime, self.model = cfg, run_dir, runtime, model
        self.step_model = runtime.prepare(model)  # model itself, or its compiled wrapper
        if runtime.compile:
            log.info("torch.compile: the first step and first evaluation compile (a minute or two)")
        self.data = data = data.to(device)
        self.optimizer = make_optimizer(model, sched, fused=device.type == "cuda")
        self.scaler = runtime.grad_scaler()
        self.batches = make_batches(data, sched.batch_size, cfg.data.normalize, cfg.seed, runtime)
        self.counters = Counters(device)
        # The schedule as plain Python values: the loop reads it every step, without OmegaConf
        # (merged onto the schema, so a config that lost its type still becomes a dataclass).
        typed = OmegaConf.merge(OmegaConf.structured(ScheduleConfig), sched)
        self.schedule = cast(ScheduleConfig, OmegaConf.to_object(typed))
        self.iteration, history, self.wall_before, self.eval_pending = 0, [], 0.0, False
        self.warming_up = bool(sched.warmup.enabled)
        self.lr = lr_at(0, sched, self.warming_up)  # the latest step's, reported at evaluations
        inexact: list[str] = []  # why this run can no longer match an uninterrupted one
        if state is not None:
            model.load_state_dict(state["model"])
            load_optimizer_state(self.optimizer, state["optimizer"])
            inexact += load_batches_state(self.batches, state["batches"], cfg.seed,
                                          state["iteration"])  # fmt: skip
            if self.scaler.is_enabled() and state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
            self.counters.load_state_dict(state["counters"])
            set_random_states(state["random"])
            self.iteration, history = state["iteration"], state["metrics"]
            self.wall_before, self.warming_up = state["wall_seconds"], state["warming_up"]
            self.eval_pending, self.lr = state["eval_pending"], state["lr"]
            log.info("resuming %s from iteration %d (checkpoint.pt)", run_dir, self.iteration)
        # How each stretch of the run executed: a resumed run may change device, precision or
        # compile; summary.json lists every segment, not only the last.
        segment = {
            "from_iteration": self.iteration,
            "device": str(device),
            "device_name": device_name(device),
            "precision": runtime.precision,
            "channels_last": runtime.channels_last,
            "compiled": runtime.compile_label,
            "threads": torch.get_num_threads(),
            "torch_version": str(torch.__version__),  # a plain str: checkpoints load weights-only
        }
        previous = (state or {}).get("segments") or []
        if previous:
            inexact = changed_settings(previous[-1], segment) + inexact
            segment["bit_exact_resume"] = not inexact
            segment["inexact_because"] = inexact
            if inexact:
                log.warning("resumed with changes: the result can no longer be bit-identical to "
                            "an uninterrupted run (%s)", "; ".join(inexact))  # fmt: skip
        self.segments = [*previous, segment]
        self.label = RunDir(run_dir).label
        log.info("%s: %d layers, %s, %d parameters, %d iterations of %d on %s", self.label,
                 cfg.depth, "residual" if cfg.residual else "plain", count_parameters(model),
                 sched.iterations, sched.batch_size, runtime.describe())  # fmt: skip
        hparams = {key: cfg[key] for key in ("depth", "residual", "block", "shortcut", "seed")}
        hparams["arch"] = run_dir.parent.name
        self.tracker = Tracker(run_dir, history, hparams)
        self.progress = Progress(self.label, sched.iterations, self.iteration, cfg.progress)
        self.t0 = self.tick = time.perf_counter()  # t0: this segment's start (wall())
        self.train_time, self.images = 0.0, 0  # since the last evaluation, for images per second

    def wall(self) -> float:
        """Seconds since the run first started, earlier segments included."""
        return self.wall_before + time.perf_counter() - self.t0

    def log(self, row: dict) -> None:
        """One metrics row: metrics.jsonl, TensorBoard and the progress display."""
        self.tracker.log_row(row)
        self.progress.report(row)


def _train(run: Training, guard: SignalGuard) -> dict:
    """Run the loop to its end, or to a stop request (saving a checkpoint first); write
    summary.json unless the run crashed; return it."""
    status, diverged_at = "completed", None
    run.model.train()
    try:
        diverged_at = _loop(run, guard)
        status = "completed" if diverged_at is None else "diverged"
    except StopRequested:
        # Between two steps, or inside an evaluation: the counters and the data order are
        # exactly where they were, so the checkpoint resumes bit for bit.
        _checkpoint(run, pending=run.eval_pending)
        status = "interrupted"
        raise
    finally:
        run.progress.close()
        ended = status != "completed" or run.iteration >= run.cfg.schedule.iterations
        run.tracker.close(status if ended else None)  # not ended: a crash
        if ended:
            _write_summary(run, status, diverged_at)
    summary = RunDir(run.run_dir).read_summary()
    assert summary is not None  # written above: the run ended without an exception
    return summary


def changed_settings(before: dict, now: dict) -> list[str]:
    """The settings that decide a step's arithmetic and differ between two segments of a run
    (the number of threads only on the CPU, where reductions are split among them)."""
    keys = ["device_name", "precision", "channels_last", "compiled", "torch_version"]
    if now["device"] == "cpu" == before.get("device"):
        keys.append("threads")
    changes = [
        f"{key} {before.get(key)} -> {now[key]}"
        for key in keys
        if before.get(key) != now[key]
        # older runs did not record a CPU's model: None there means unknown, not another CPU
        and not (key == "device_name" and before.get(key) is None and now["device"] == "cpu")
    ]
    kind = str(before.get("device", "")).split(":")[0]
    if kind != now["device"].split(":")[0]:
        changes.insert(0, f"device {before.get('device')} -> {now['device']}")
    return changes


# Optimizer options that say how a step is computed on a device, not what it computes: they are
# taken from the optimizer built for this device, never from a checkpoint written on another.
DEVICE_OPTIONS = ("fused", "foreach", "capturable", "differentiable")


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """Load ``saved`` (an optimizer's state_dict, from any device) into ``optimizer``.

    The learning rate keeps this optimizer's type (a device tensor for fused SGD, else a float)
    and the device options stay this device's; momentum buffers take the memory layout of their
    parameters (channels_last or not), which a fused step requires of them.
    """
    groups = []
    for now, old in zip(optimizer.param_groups, saved["param_groups"], strict=True):
        group = {**old, **{key: now[key] for key in DEVICE_OPTIONS if key in now}}
        lr = float(old["lr"])
        group["lr"] = now["lr"].clone().fill_(lr) if torch.is_tensor(now["lr"]) else lr
        groups.append(group)
    optimizer.load_state_dict({**saved, "param_groups": groups})
    for p, state in optimizer.state.items():
        for key, value in list(state.items()):
            if torch.is_tensor(value) and value.shape == p.shape and value.stride() != p.stride():
                state[key] = torch.empty_like(p).copy_(value)  # p's strides (preserve_format)


def load_batches_state(batches: TrainBatches, saved: dict, seed: int, iteration: int) -> list[str]:
    """Load the data order and augmentation state; return why it is not exact, if it is not.

    A random generator's state is device-specific (the CPU's Mersenne Twister is 5056 bytes,
    CUDA's Philox a seed and an offset): one saved on another kind of device cannot be loaded,
    so the generator is re-seeded from the run's seed and iteration, and the rest of the epoch's
    order (the permutation) is kept.
    """
    here, state = batches.generator.device.type, batches.generator.get_state()
    saved_on = saved.get("generator_device")  # older checkpoints do not say: the shape tells
    if saved_on in (None, here) and saved["generator"].shape == state.shape:
        batches.load_state_dict(saved)
        return []
    batches.load_state_dict({**saved, "generator": state})
    batches.generator.manual_seed((seed * 2**32 + iteration) % 2**63)
    return [f"the augmentation generator was saved on {saved_on or 'another device'}: re-seeded"]


def _loop(run: Training, guard: SignalGuard) -> int | None:
    """He et al. 2015, sec. 4.2: SGD steps at lr 0.1, divided by 10 at 50% and 75% of the run
    (32k and 48k of 64k iterations; ResNet-110 warms up at 0.01 first); the whole test set
    evaluated every ``eval_every`` iterations and at the end, each evaluation checkpointed.

    Returns None once every iteration ran, or the iteration where the loss stopped being finite.
    Raises StopRequested (SIGTERM/SIGINT) between steps or inside an evaluation.
    """
    sched, gradients_every = run.schedule, run.cfg.log_gradients_every  # plain values, not cfg
    while True:
        if run.eval_pending:  # the end of an evaluation interval, of the run, or a resumed one
            if (diverged_at := _evaluate(run, guard)) is not None:
                return diverged_at
            _checkpoint(run, pending=False)
            run.train_time, run.images, run.tick = 0.0, 0, time.perf_counter()
        if run.iteration >= sched.iterations:
            return None
        guard.check()

        lr = lr_at(run.iteration, sched, run.warming_up)  # warm-up, then the milestones
        if lr != run.lr or run.iteration == 0:  # a fused SGD's lr lives on the device
            set_lr(run.optimizer, lr)
            run.lr = lr
        x, y = run.batches.next()
        loss, wrong = train_step(run.step_model, run.optimizer, x, y, run.runtime, run.scaler)
        run.counters.add(run.iteration, loss, wrong, len(y))  # on the device: no host sync
        run.iteration += 1
        run.images += len(y)
        if gradients_every and run.iteration % gradients_every == 0:
            log_gradient_stats(run.tracker.writer, run.model, run.iteration)  # reads the host once
        if run.warming_up and run.iteration % sched.warmup.check_every == 0:
            _check_warmup(run)
        run.progress.advance(run.iteration)
        run.eval_pending = (
            run.iteration % sched.eval_every == 0 or run.iteration == sched.iterations
        )
        if sched.log_every and run.iteration % sched.log_every == 0 and not run.eval_pending:
            _log_training_error(run)


def _evaluate(run: Training, guard: SignalGuard) -> int | None:
    """Log the error on the whole test set beside the training error since the last evaluation;
    or, if the loss stopped being finite since, say so and return that iteration."""
    run.train_time += time.perf_counter() - run.tick
    bad_at = int(run.counters.bad_at.item())
    if bad_at >= 0:
        log.error(
            "%s: the training loss is not finite at iteration %d; stopping (status diverged). "
            "The last good checkpoint is kept.",
            run.label,
            bad_at + 1,
        )
        return bad_at + 1
    # Read, not reset: a stop inside the test pass checkpoints the interval's counters intact.
    train_error, train_loss = run.counters.read_train()
    rt, data = run.runtime, run.data
    test_error, test_loss = evaluate(run.step_model, data.test_x, data.test_y, run.batches.mean,
                                     run.batches.std, run.cfg.schedule.eval_batch_size,
                                     rt.memory_format, should_stop=guard.check)  # fmt: skip
    run.log({"iteration": run.iteration, "train_error": train_error, "train_loss": train_loss,
             "test_error": test_error, "test_loss": test_loss, "lr": run.lr,
             "images_per_second": run.images / max(run.train_time, 1e-9) if run.images else None,
             "wall_seconds": run.wall()})  # fmt: skip
    run.counters.reset_train()
    run.eval_pending = False
    return None


def _log_training_error(run: Training) -> None:
    """A training-error row between evaluations: Figure 6's thin curves, densely."""
    train_error, train_loss = run.counters.take_train()
    run.log({"iteration": run.iteration, "train_error": train_error, "train_loss": train_loss,
             "lr": run.lr, "wall_seconds": run.wall()})  # fmt: skip


def _check_warmup(run: Training) -> None:
    """ResNet-110's warm-up (He et al. 2015, sec. 4.2): lr 0.01 until the training error is
    below ``until_train_error`` (80%), then the schedule's lr; at most ``max_iterations``."""
    warmup = run.cfg.schedule.warmup
    warm_error = run.counters.take_warmup()
    if warm_error < warmup.until_train_error or run.iteration >= warmup.max_iterations:
        run.warming_up = False
        log.info("warm-up over at iteration %d (training error %.1f%%): lr %g", run.iteration,
                 warm_error, run.cfg.schedule.lr)  # fmt: skip


def _checkpoint(run: Training, pending: bool) -> None:
    """Save everything an exact resume needs: weights, optimizer, data order, counters, RNGs."""
    try:
        RunDir(run.run_dir).save_checkpoint(
            {
                "iteration": run.iteration,
                "eval_pending": pending,
                "model": run.model.state_dict(),
                "optimizer": run.optimizer.state_dict(),
                "scaler": run.scaler.state_dict(),  # {} unless fp16
                "batches": {
                    **run.batches.state_dict(),
                    "generator_device": run.batches.generator.device.type,
                },
                "counters": run.counters.state_dict(),
                "random": random_states(),
                "metrics": run.tracker.rows,
                "warming_up": run.warming_up,
                "lr": run.lr,
                "wall_seconds": run.wall(),
                "config": OmegaConf.to_container(run.cfg, resolve=True),
                "segments": run.segments,
            },
        )
    except OSError as e:
        raise ResexpError(
            f"could not write a checkpoint in {run.run_dir} ({e.strerror or e}); the previous "
            "checkpoint is intact. Free some disk space and run the same command to resume."
        ) from None


def _write_summary(run: Training, status: str, diverged_at: int | None) -> None:
    """summary.json: the run's final numbers and how it ran (every segment), logged in one line."""
    cfg, run_dir, rows, rt = run.cfg, run.run_dir, run.tracker.rows, run.runtime
    wall, iteration = run.wall(), run.iteration
    evaluations = [r for r in rows if "test_error" in r]
    last = evaluations[-1] if evaluations else {}
    speeds = [r["images_per_second"] for r in rows if r.get("images_per_second")]
    summary = {
        "name": cfg.name,
        "arch": run_dir.parent.name,
        "depth": cfg.depth,
        "residual": cfg.residual,
        "shortcut": cfg.shortcut,
        "block": cfg.block,
        "seed": cfg.seed,
        "params": count_parameters(run.model),
        "iterations": iteration,
        "planned_iterations": cfg.schedule.iterations,
        "batch_size": cfg.schedule.batch_size,
        "train_error": last.get("train_error"),
        "test_error": last.get("test_error"),
        "train_loss": last.get("train_loss"),
        "test_loss": last.get("test_loss"),
        "evaluated_at": last.get("iteration"),
        "best_test_error": min((r["test_error"] for r in evaluations), default=None),
        "status": status,
        "diverged_at_iteration": diverged_at,
        "wall_seconds": wall,
        "images_per_second": float(np.median(speeds)) if speeds else None,
        "device": str(rt.device),
        "device_name": device_name(rt.device),
        "precision": str(rt.dtype).replace("torch.", "") if rt.dtype else "fp32",
        "channels_last": rt.memory_format == torch.channels_last,
        "compiled": bool(run.segments[-1]["compiled"]),
        "bit_exact_resume": all(s.get("bit_exact_resume", True) for s in run.segments),
        "torch_version": torch.__version__,
        "data": run.data.description,
        "tensorboard_figure6_tags": True,  # the run wrote figure6/<arch>/... itself
        "data_identity": run.data.identity,
        "segments": run.segments,
    }
    RunDir(run_dir).write_summary(summary)
    errors = "no evaluation yet"
    if evaluations:
        errors = (
            f"train error {summary['train_error']:.2f}%, test error "
            f"{summary['test_error']:.2f}% at the last evaluation (iteration {last['iteration']})"
        )
    log.info("%s %s at iteration %d: %s (%.0f s) -> %s", run.label, status, iteration, errors, wall,
             run_dir)  # fmt: skip
