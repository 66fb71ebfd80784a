"""Typed settings of a run: Hydra's structured configs, with the paper's values as defaults.

The YAML files under ``configs/`` choose among these (``data=``, ``schedule=``, ``experiment=``);
the dataclasses here fix the keys and their types, so a typo (``dept=20``) or a wrong type
(``depth=abc``) is refused when the config is composed, before anything runs.

Every number taken from He et al. 2015, section 4.2, says so beside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class SyntheticConfig:
    """Generated images with a learnable class structure (for tests and smoke runs)."""

    num_classes: int = 10
    noise: float = 40.0  # std of the per-pixel noise, in uint8 grey levels
    seed: int = 0  # the data set itself, independent of the run's seed


@dataclass
class DataConfig:
    """Where the images come from and how they are prepared."""

    source: str = "cifar10"  # cifar10 | folder | synthetic
    root: str = MISSING  # cifar10: download dir; folder: ROOT/{train,test}/<class>/* or an archive
    download: bool = True  # cifar10 only: fetch through torchvision when absent
    cache_dir: str = "${data_dir}/cache"  # decoded uint8 tensors, one file per data set
    train_size: int | None = None  # use a fixed random subset of the training images
    test_size: int | None = None  # likewise for the test images
    validation: bool = False  # paper's 45k/5k split: evaluate on 5k held out of train
    validation_size: int = 5000  # He et al. 2015, sec. 4.2
    normalize: str = "pixel_mean"  # pixel_mean (He et al. 2015, sec. 4.2) | channel_std
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
    block: str = "basic"  # basic (He et al. 2015) | preact (He et al. 2016) | highway
    seed: int = 0
    device: str = "auto"  # auto (cuda, mps, cpu) | cpu | cuda | cuda:N | mps
    precision: str = "auto"  # auto (bf16 on CUDA and CPUs with native bf16) | fp32 | bf16
    channels_last: str = "auto"  # auto (on CUDA and CPU, not MPS) | true | false
    compile: str = "auto"  # auto (CPU runs of 2000+ iterations, with a C++ compiler) | true | false
    threads: int = 0  # CPU threads for torch; 0 leaves torch's default
    log_gradients_every: int = 0  # >0: per-layer grad norms + weight histograms to TensorBoard
    output_root: str = "outputs"
    data_dir: str = "${oc.env:RESEXP_DATA_DIR,data}"
    run_dir: str = "${output_root}/${name}/${arch:${residual},${block},${depth}}/seed${seed}"
    restart: bool = False  # start over even if the run directory holds a run (kept, renamed)
    progress: str = "auto"  # auto (a bar on a terminal, lines otherwise) | bar | lines | none
    data: DataConfig = field(default_factory=DataConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)


def arch_name(residual: bool, block: str, depth: int) -> str:
    """The run's folder and TensorBoard name: plain-56, resnet-56, preact-56, highway-56."""
    if block == "basic":
        return f"{'resnet' if residual else 'plain'}-{depth}"
    return f"{block}-{depth}" if residual else f"plain-{block}-{depth}"


def register() -> None:
    """Make the schema and the ``arch`` resolver known to Hydra (idempotent)."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("arch"):
        OmegaConf.register_new_resolver("arch", arch_name)
    ConfigStore.instance().store(name="resexp_schema", node=Config)
