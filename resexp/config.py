"""Typed settings of a run: Hydra's structured configs, with the paper's values as defaults.

The YAML files under ``configs/`` choose among these (``data=``, ``schedule=``, ``experiment=``);
the dataclasses here fix the keys and their types, so a typo (``dept=20``) or a wrong type
(``depth=abc``) is refused when the config is composed, before anything runs.

Every number taken from He et al. 2015, section 4.2, says so beside it.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from resexp.errors import ConfigError

# The architecture's choices (models.check_architecture refuses anything else).
SHORTCUTS: tuple[str, ...] = ("A", "B")
BLOCKS: tuple[str, ...] = ("basic", "preact", "highway", "bottleneck")
FAMILIES: tuple[str, ...] = ("cifar", "imagenet")
STEMS: tuple[str, ...] = ("cifar", "imagenet")


@dataclass
class SyntheticConfig:
    """Generated images with a learnable class structure (for tests and smoke runs)."""

    num_classes: int = 10
    noise: float = 40.0  # std of the per-pixel noise, in uint8 grey levels
    seed: int = 0  # the data set itself, independent of the run's seed


@dataclass
class DataConfig:
    """Where the images come from and how they are prepared."""

    source: str = "cifar10"  # cifar10 | cifar100 | folder | synthetic
    root: str = MISSING  # cifar10/100: download dir; folder: ROOT/{train,test}/<class>/* or archive
    download: bool = True  # cifar10/100 only: fetch through torchvision when absent
    cache_dir: str = "${data_dir}/cache"  # decoded uint8 tensors, one file per data set
    train_size: int | None = None  # use a fixed random subset of the training images
    test_size: int | None = None  # likewise for the test images
    validation: bool = False  # paper's 45k/5k split: evaluate on 5k held out of train
    validation_size: int = 5000  # He et al. 2015, sec. 4.2
    normalize: str = "pixel_mean"  # pixel_mean (He et al. 2015, sec. 4.2) | channel_std
    # Augmentation pads the raw pixels with black (0) before the mean is subtracted, as
    # torchvision pipelines do (fb.resnet.torch pads the mean-subtracted image with zeros).
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class WarmupConfig:
    """ResNet-110's warm-up: lr 0.01 until training error < 80% (He et al. 2015, sec. 4.2)."""

    enabled: bool = False
    lr: float = 0.01  # He et al. 2015, sec. 4.2
    until_train_error: float = 80.0  # percent; "about 400 iterations" in the paper
    check_every: int = 50  # iterations between checks (each check reads the GPU once)
    max_iterations: int = 4000  # give up warming up after this many iterations


@dataclass
class ScheduleConfig:
    """SGD by iterations; lr drops at fixed fractions of the run."""

    iterations: int = 64_000  # He et al. 2015, sec. 4.2: stop at 64k
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])  # 32k, 48k of 64k
    gamma: float = 0.1  # lr divided by 10 at each milestone
    lr: float = 0.1  # He et al. 2015, sec. 4.2
    momentum: float = 0.9  # He et al. 2015, sec. 4.2
    weight_decay: float = 1e-4  # He et al. 2015, sec. 4.2
    batch_size: int = 128  # He et al. 2015, sec. 4.2
    eval_every: int = 391  # about one epoch of 50k images at batch 128
    # Training error and loss over the last log_every iterations, logged between evaluations (it
    # costs one read of two device counters): Figure 6's thin curves, far denser than the test
    # evaluations. 0 logs them at evaluations only.
    log_every: int = 100
    eval_batch_size: int = 1000
    warmup: WarmupConfig = field(default_factory=WarmupConfig)


@dataclass
class Config:
    """One training run: the network, the data, the schedule, where it goes."""

    name: str = "default"  # experiment name: outputs/<name>/<arch>-<depth>/seed<k>/
    depth: int = 20  # 6n+2: 20, 32, 44, 56, 110, 1202 (He et al. 2015, Table 6)
    residual: bool = True  # the experiment's one variable: identity shortcuts or none
    shortcut: str = "A"  # A: zero-padding identity (paper's CIFAR choice) | B: 1x1 projection
    block: str = "basic"  # basic (He et al. 2015) | preact (He et al. 2016) | highway | bottleneck
    # (He et al. 2016: pre-activation 1x1-3x3-1x1, depth 9n+2: 164, 1001). family=imagenet: the
    # depth fixes the block (basic for 18/34, bottleneck for 50+); leave it at basic or name it.
    family: str = "cifar"  # cifar (He et al. 2015, sec. 4.2) | imagenet (Table 1: depth 18-152)
    stem: str = "cifar"  # family=imagenet: cifar (3x3 conv) | imagenet (7x7/2 conv, 3x3/2 max-pool)
    seed: int = 0
    device: str = "auto"  # auto (cuda, mps, cpu) | cpu | cuda | cuda:N | mps
    precision: str = "auto"  # auto (native on the device: runtime.py) | fp32 | bf16 | fp16
    channels_last: str = "auto"  # auto (on CUDA and CPU, not MPS) | true | false
    compile: str = "auto"  # auto (long runs: runtime.py) | true | false | a torch.compile mode
    threads: int = 0  # CPU threads for torch; 0 leaves torch's default
    runs_per_gpu: int = 1  # a sweep under joblib: runs at once on each GPU (resexp/gpus.py)
    log_gradients_every: int = 0  # >0: per-layer grad norms + weight histograms to TensorBoard
    output_root: str = "outputs"
    data_dir: str = "${oc.env:RESEXP_DATA_DIR,data}"
    run_dir: str = (
        "${output_root}/${name}/${arch:${residual},${block},${depth},${family},${stem}}/seed${seed}"
    )
    restart: bool = False  # start over even if the run directory holds a run (kept, renamed)
    progress: str = "auto"  # auto (a bar on a terminal, lines otherwise) | bar | lines | none
    data: DataConfig = field(default_factory=DataConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)


@dataclass
class BenchSettings:
    """What only ``resexp bench`` sets: how long it times, and what it times beside resexp."""

    iterations: int = 50  # timed steps per loop
    warmup: int = 10  # untimed steps first (torch.compile's compilation lands there)
    rounds: int = 5  # timed blocks, alternating between resexp's loop and the baseline
    baseline: bool = True  # also time the conventional DataLoader + PIL + eager fp32 loop
    json: str | None = None  # the result's path (default: <output_root>/bench/<arch>-<device>.json)


@dataclass
class BenchConfig(Config):
    """``resexp bench``'s schema: a training run's (every key means what it means for ``resexp
    train``: the step timed is the one ``train.fit`` would run) and one ``bench`` node.

    A node of its own schema, not a key of ``Config`` nor a config group: a group would have to
    add a key the training schema refuses, and a ``bench`` key in ``Config`` would be accepted
    (and ignored) by ``resexp train`` and written into every run's config.yaml.
    """

    bench: BenchSettings = field(default_factory=BenchSettings)


def arch_name(
    residual: bool, block: str, depth: int, family: str = "cifar", stem: str = "cifar"
) -> str:
    """The run's folder and TensorBoard name: plain-56, resnet-56, preact-56, highway-56,
    bottleneck-164, plain-bottleneck-164; the ImageNet family as torchvision names it, resnet50
    and plain50 (resnet50-imagenet-stem with the 7x7 stem)."""
    if family == "imagenet":
        name = f"{'resnet' if residual else 'plain'}{depth}"
        return f"{name}-imagenet-stem" if stem == "imagenet" else name
    if block == "basic":
        return f"{'resnet' if residual else 'plain'}-{depth}"
    return f"{block}-{depth}" if residual else f"plain-{block}-{depth}"


def num_classes(cfg: Any) -> int | None:
    """The number of classes the data config names (None for an image folder: known once read)."""
    source = str(cfg.data.source)
    if source == "synthetic":
        return int(cfg.data.synthetic.num_classes)
    return {"cifar10": 10, "cifar100": 100}.get(source)


def register(schema: type[Config] = Config) -> None:
    """Make ``schema`` (``Config``, or a command's extension of it) and the ``arch`` resolver
    known to Hydra as config.yaml's schema (idempotent)."""
    if not OmegaConf.has_resolver("arch"):
        OmegaConf.register_new_resolver("arch", arch_name)
    ConfigStore.instance().store(name="resexp_schema", node=schema)


def schema_keys(schema: type[Config] = Config) -> list[str]:
    """Every dotted key of ``schema`` (``depth``, ``data``, ``data.root``, ...)."""

    def dotted(node: dict, prefix: str = "") -> list[str]:
        keys = []
        for k, v in node.items():
            keys += [prefix + k, *(dotted(v, f"{prefix}{k}.") if isinstance(v, dict) else [])]
        return keys

    return dotted(cast(dict, OmegaConf.to_container(OmegaConf.structured(schema))))  # a dict


def did_you_mean(key: str, known: Sequence[str]) -> str:
    """``": did you mean depth?"`` with the ``known`` keys a misspelt ``key`` probably meant,
    or "" when none is close."""
    import difflib

    close = difflib.get_close_matches(key, list(known), n=2, cutoff=0.7)
    return f": did you mean {' or '.join(close)}?" if close else ""


def explicit_keys(overrides: Sequence[str]) -> list[str]:
    """The keys the command line sets (``depth=20`` -> ``depth``; ``+a.b=1`` -> ``a.b``)."""
    return [o.split("=", 1)[0].lstrip("+~") for o in overrides if "=" in o]


def data_for_run(own: Any, cfg: Any, keys: Sequence[str]) -> Any:
    """The data a job on a trained run reads: the run's own (``own``, the ``data`` of its saved
    config; paths as resolved when it trained) unless the command line (its ``keys``) says
    ``data=`` another source; ``data.KEY=VALUE`` changes one setting of it. ``cfg``: the
    composed config; its data where the run's is unknown (``own`` None)."""
    if own is None or "data" in keys:
        return cfg.data
    data = OmegaConf.create(dict(own))
    for key in keys:
        if key.startswith("data."):
            OmegaConf.update(data, key[5:], OmegaConf.select(cfg, key), merge=False)
    return data


# ----------------------------------------------------------------------------------------------
# Valid ranges: checked before anything is written (the types are checked by Hydra on compose)

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")  # one safe path component: no /, .., spaces
PROGRESS = ("auto", "bar", "lines", "none")
NORMALIZE = ("pixel_mean", "channel_std")


def validate(cfg: Any) -> None:
    """Refuse any value outside its valid range, naming the key and what it accepts.

    Covers every key of the schema that a type alone does not bound. The architecture (depth,
    block, shortcut), the device and the precision options are checked where they are resolved
    (models.check_architecture and resexp.runtime), from the same CLI check.
    """
    problems: list[str] = []

    def need(ok: bool, key: str, what: str) -> None:
        if not ok:
            value = OmegaConf.select(cfg, key, default=None)
            problems.append(f"{key}={show(value)}: {what}")

    need(
        bool(NAME.fullmatch(str(cfg.name))),
        "name",
        "must be one folder name: letters, digits and . _ + - (not first); no / or spaces",
    )
    need(cfg.seed >= 0, "seed", "must be 0 or more")
    need(cfg.threads >= 0, "threads", "must be 0 (torch's default) or more")
    need(cfg.runs_per_gpu >= 1, "runs_per_gpu", "must be 1 or more")
    need(cfg.log_gradients_every >= 0, "log_gradients_every", "must be 0 (off) or more")
    need(str(cfg.progress) in PROGRESS, "progress", f"must be one of {', '.join(PROGRESS)}")

    s = cfg.schedule
    need(s.iterations > 0, "schedule.iterations", "must be positive")
    need(s.lr > 0, "schedule.lr", "must be positive (the paper: 0.1)")
    need(0 <= s.momentum < 1, "schedule.momentum", "must be in [0, 1) (the paper: 0.9)")
    need(s.weight_decay >= 0, "schedule.weight_decay", "must be 0 or more (the paper: 1e-4)")
    need(0 < s.gamma <= 1, "schedule.gamma", "must be in (0, 1] (the paper: 0.1)")
    need(s.batch_size > 0, "schedule.batch_size", "must be positive (the paper: 128)")
    need(s.eval_every > 0, "schedule.eval_every", "must be positive")
    need(s.eval_batch_size > 0, "schedule.eval_batch_size", "must be positive")
    need(s.log_every >= 0, "schedule.log_every", "must be 0 (at evaluations only) or more")
    milestones = list(s.milestones)
    need(
        all(0 < m < 1 for m in milestones)
        and all(a < b for a, b in itertools.pairwise(milestones)),
        "schedule.milestones",
        "must be increasing fractions of the run, each in (0, 1): the paper's drops at 32k and "
        "48k of 64k iterations are [0.5,0.75]",
    )
    w = s.warmup
    need(w.lr > 0, "schedule.warmup.lr", "must be positive (the paper: 0.01)")
    need(0 < w.until_train_error <= 100, "schedule.warmup.until_train_error",
         "must be a percentage in (0, 100] (the paper: 80)")  # fmt: skip
    need(w.check_every > 0, "schedule.warmup.check_every", "must be positive")
    need(w.max_iterations > 0, "schedule.warmup.max_iterations", "must be positive")

    d = cfg.data
    for key in ("train_size", "test_size"):
        need(d[key] is None or d[key] > 0, f"data.{key}", "must be positive, or null for all")
    need(d.validation_size > 0, "data.validation_size", "must be positive (the paper: 5000)")
    need(str(d.normalize) in NORMALIZE, "data.normalize", f"must be one of {', '.join(NORMALIZE)}")
    need(d.synthetic.num_classes >= 2, "data.synthetic.num_classes", "must be 2 or more")
    need(d.synthetic.noise >= 0, "data.synthetic.noise", "must be 0 or more")
    need(d.synthetic.seed >= 0, "data.synthetic.seed", "must be 0 or more")

    if "bench" in cfg:  # resexp bench's schema
        for key in ("iterations", "warmup", "rounds"):
            need(cfg.bench[key] >= 1, f"bench.{key}", "must be 1 or more")
    if problems:
        raise ConfigError("; ".join(problems))


def show(value: Any) -> str:
    """``value`` as the command line writes it: ``[0.5,0.75]`` for a list, ``2,4,8`` for an
    analysis's tuple, ``true`` for a bool."""
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value)
    if isinstance(value, list):
        return "[" + ",".join(str(v) for v in value) + "]"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value).lower() if isinstance(value, bool) else str(value)


def convert(key: str, value: Any, like: Any) -> Any:
    """An analysis option's ``value`` (a string, or typed) as the type of ``like``: ``true``,
    ``yes`` or ``1`` for a bool, ``2,4,8`` for a tuple of ints; ConfigError if it does not
    convert. (``resexp train``'s keys are typed by Hydra, from the schema above.)"""
    expected = f"a value like {show(like)}"
    try:
        if isinstance(like, bool):
            if not isinstance(value, str):
                return bool(value)
            lowered = value.strip().lower()
            if lowered not in ("true", "false", "yes", "no", "1", "0"):
                raise ValueError
            return lowered in ("true", "yes", "1")
        if isinstance(like, int):
            expected = "an integer"
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if isinstance(like, float):
            return float(value)
        if isinstance(like, tuple):
            return tuple(int(v) for v in (value.split(",") if isinstance(value, str) else value))
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"option {key}={value!r}: expected {expected}") from None
