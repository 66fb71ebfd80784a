"""The ``resexp`` command: Typer for the commands, Hydra for the configuration.

    resexp train depth=56 residual=false        one run (any Hydra override)
    resexp train -m depth=20,56 residual=true,false   Hydra's multirun
    resexp train --cfg job                       print the composed config

The configs ship inside the package (``pkg://resexp.configs``). Every command composes its
overrides once, with Hydra's compose API, checks the result (``check_config``: a typo, a wrong
type or a bad depth ends with a short message and exit status 2, before anything is written)
and runs on the config it checked: train, sweep, evaluate, data prepare, bench
(``config.BenchConfig``: train's schema and a ``bench`` node) and analyze (train's device,
threads, progress and data keys beside its own options). ``train`` with one of Hydra's own flags
(-m, --cfg, --info, ...) and ``sweep`` hand the command line to a Hydra application instead.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import typer

from resexp import config as config_module
from resexp.config import BLOCKS, FAMILIES, SHORTCUTS, STEMS, BenchConfig, Config
from resexp.errors import ConfigError, ResexpError

log = logging.getLogger("resexp")

CONFIG_MODULE = "resexp.configs"
EXTRA_ARGS = {
    "allow_extra_args": True,
    "ignore_unknown_options": True,
    "help_option_names": ["--help"],
}


def group_choices(group: str) -> list[str]:
    """The YAML files of a config group, e.g. data -> [cifar10, folder, synthetic]."""
    folder = resources.files(CONFIG_MODULE).joinpath(group)
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


TRAIN_HELP = """Train one plain or residual network (He et al. 2015, sec. 4.2) with Hydra overrides.

\b
  resexp train depth=56 residual=false
  resexp train data=folder data.root=cifar10-jpeg.tar.xz schedule=short
  resexp train -m depth=20,56 residual=true,false      (Hydra multirun)
  resexp train --cfg job                               (print the config)

\b
Main keys (all typed; `--cfg job` lists every one):
  depth=20|32|44|56|110|1202   any 6n+2 (9n+2 for block=bottleneck: 164, 1001)
  residual=true|false          identity shortcuts, or the plain twin
  shortcut={shortcuts:<20}A: zero-padding (paper's CIFAR choice), B: projection
  block={blocks}   the block variant
  family={families:<22}imagenet: ResNet-18/34/50/101/152 (depth=); stem={stems}
  data={data}
  schedule={schedule}
  schedule.iterations=N        shorter run; the lr drops move with it
  schedule.log_every=N         training error logged every N iterations
  seed=K  name=NAME  device=auto|cpu|cuda|mps  precision=auto|fp32|bf16|fp16
  compile=auto|true|false|reduce-overhead|max-autotune|...   torch.compile (auto: long runs)
  restart=true                 start over (the old run directory is moved aside whole)

Outputs go to outputs/NAME/<plain|resnet>-DEPTH/seedK/ (resumed if it exists).
"""

Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Show full tracebacks.")]

app = typer.Typer(
    help="resexp: plain vs residual networks on CIFAR-10 (He et al. 2015), measured.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)
data_app = typer.Typer(
    help="Data sets: download, decode and cache ahead of time.", no_args_is_help=True
)
app.add_typer(data_app, name="data")


# ----------------------------------------------------------------------------------------------
# Config composition and checks (before Hydra creates anything)


def compose(
    overrides: list[str], return_hydra_config: bool = False, schema: type[Config] = Config
) -> Any:
    """The config for ``overrides``, composed as ``resexp train`` would, with nothing written;
    ``schema``: a command's extension of the training schema (``BenchConfig``)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    config_module.register(schema)
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        return hydra_compose(
            config_name="config", overrides=overrides, return_hydra_config=return_hydra_config
        )


def check_config(
    overrides: list[str], schema: type[Config] = Config, configure_logging: bool = False
) -> Any:
    """Compose and validate; raise ResexpError with a short message on any bad input; return
    the composed config (composed once: every command runs on what was checked).
    ``configure_logging``: log as its ``hydra.job_logging`` and ``hydra.verbose`` say (train).
    """
    from hydra.core.utils import configure_log
    from omegaconf import open_dict

    cfg = _checked(lambda: compose(overrides, return_hydra_config=True, schema=schema), schema)
    if configure_logging:
        configure_log(cfg.hydra.job_logging, cfg.hydra.verbose)
    with open_dict(cfg):
        del cfg["hydra"]  # Hydra's own settings are not the experiment's
    return check(cfg)


def check(cfg: Any) -> Any:
    """Validate a composed config (interpolations resolved in place); return it."""
    from omegaconf import OmegaConf

    from resexp.models import check_architecture
    from resexp.runtime import resolve

    _checked(lambda: OmegaConf.resolve(cfg))
    config_module.validate(cfg)
    # A folder's class count is known once read; any count builds.
    check_architecture(cfg.depth, cfg.residual, cfg.shortcut, cfg.block, cfg.family, cfg.stem,
                       config_module.num_classes(cfg) or 10)  # fmt: skip
    if cfg.data.source == "folder" and OmegaConf.is_missing(cfg.data, "root"):
        raise ConfigError(
            "data=folder needs data.root=PATH (an image-folder tree or a .tar archive)"
        )
    if cfg.data.source == "folder" and not Path(cfg.data.root).expanduser().exists():
        raise ConfigError(
            f"data.root={cfg.data.root} does not exist; give an image-folder tree "
            "PATH/train/<class>/* + PATH/test/<class>/*, or a .tar(.gz|.xz) archive of one"
        )
    resolve(cfg, iterations=cfg.schedule.iterations)  # device, precision, layout, compile: as fit
    check_writable(Path(cfg.output_root))
    return cfg


def check_writable(folder: Path) -> None:
    """Refuse an output folder that cannot be created or written, before any run starts.

    It is tried, not inferred from permission bits (which say nothing for root, or for a
    read-only file system), in the nearest folder that exists: nothing is created here.
    """
    existing = folder.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    probe = existing / f".resexp-write-test-{os.getpid()}"
    try:
        if not existing.is_dir():
            raise NotADirectoryError(20, "not a folder", str(existing))
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ConfigError(
            f"cannot write outputs under {folder} ({e.strerror or e}). "
            "Choose another folder with output_root=PATH."
        ) from None


def _checked(plan: Callable[[], Any], schema: type[Config] = Config) -> Any:
    """Run ``plan()``, turning Hydra's composition errors into short ConfigErrors."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        return plan()
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(_hydra_message(e, schema)) from None


def _hydra_message(e: Exception, schema: type[Config] = Config) -> str:
    """Hydra's message, without its stack trace and without OmegaConf's object dump."""
    lines = []
    for err in (e, e.__cause__):
        for ln in str(err or "").splitlines():
            if ln.startswith("Config search path"):
                break
            if ln.strip() and "object_type=" not in ln and not ln.startswith("To append"):
                lines.append(ln.rstrip())
    text = "\n".join(lines) if lines else type(e).__name__
    if "Could not override" in text:
        key = text.split("'")[1] if text.count("'") >= 2 else ""
        hint = config_module.did_you_mean(key, [*config_module.schema_keys(schema), "experiment"])
        text = f"unknown key {key!r}{hint}" if hint else text
        text += "\n`resexp train --cfg job` lists every key; `resexp train --help` the main ones."
        text += "" if schema is Config else " `resexp bench --help`: the bench.* keys."
    return text


# ----------------------------------------------------------------------------------------------
# Running the Hydra application


def run_hydra(task, args: list[str]) -> None:
    """Run ``task(cfg)`` as a Hydra app with command-line ``args`` (-m, --cfg, ... and the
    overrides): Hydra composes the config itself."""
    import hydra

    config_module.register()
    sys.argv = ["resexp", *args]
    main = hydra.main(
        version_base="1.3", config_path=f"pkg://{CONFIG_MODULE}", config_name="config"
    )
    main(task)()


def train_task(cfg) -> dict:
    """One Hydra job: train, or report a user error in one line (no traceback)."""
    from resexp.train import EXIT_DIVERGED, EXIT_INTERRUPTED, StopRequested, fit

    config_module.register()  # a launcher's worker process resolves ${arch:...} too
    try:
        summary = fit(cfg)
    except StopRequested as e:
        log.warning(
            "stopped by %s; checkpoint saved. Run the same command again to resume.", e.args[0]
        )
        raise SystemExit(EXIT_INTERRUPTED) from None
    except KeyboardInterrupt:
        log.warning("interrupted at once; resume from the last checkpoint with the same command")
        raise SystemExit(130) from None
    except ResexpError as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        log.error("error: %s", e)
        raise SystemExit(e.exit_code) from None
    if summary.get("status") == "diverged":
        raise SystemExit(EXIT_DIVERGED)
    return summary


def _split_flags(args: list[str], command: str = "train") -> tuple[list[str], bool]:
    """Split a command line with Hydra's own parser (the one ``hydra.main`` uses) into the
    overrides and whether any of Hydra's flags (-m, --cfg job, ...) is there; a ``--key value``
    habit gets a hint to write ``key=value``."""
    from hydra._internal.utils import get_args_parser

    parser = get_args_parser()
    flags, unknown = parser.parse_known_intermixed_args(args)
    if unknown:
        key = unknown[0].lstrip("-").split("=")[0].replace("-", "_")
        raise ConfigError(
            f"{unknown[0]} is not an option here: settings are key=value overrides, e.g. "
            f"`resexp {command} {key}=VALUE` (`resexp {command} --help`)"
        )
    given = {k: v for k, v in vars(flags).items() if k != "overrides"}
    return flags.overrides, any(v != parser.get_default(k) for k, v in given.items())


def _fail(e: ResexpError, verbose: bool) -> None:
    if verbose:
        raise e
    typer.echo(f"error: {e}", err=True)
    raise typer.Exit(e.exit_code)


# ----------------------------------------------------------------------------------------------
# Commands


@app.command(
    context_settings=EXTRA_ARGS,
    short_help="Train one plain or residual network (any Hydra override).",
    help=TRAIN_HELP.format(
        data="|".join(group_choices("data")),
        schedule="|".join(group_choices("schedule")),
        blocks="|".join(BLOCKS),
        shortcuts="|".join(SHORTCUTS),
        families="|".join(FAMILIES),
        stems="|".join(STEMS),
    ),
)
def train(ctx: typer.Context, verbose: Verbose = False) -> None:
    from resexp.train import check_run_dir

    args = list(ctx.args)
    if verbose:
        os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        overrides, has_flags = _split_flags(args)
        if not has_flags:  # one run: composed and checked once, before anything is written
            cfg = check_config(overrides, configure_logging=True)
            check_run_dir(cfg, Path(cfg.run_dir))  # read-only: fit checks again under its lock
    except ResexpError as e:
        _fail(e, verbose)
    if has_flags:  # Hydra's multirun, --cfg job, --info ...: Hydra's own application
        run_hydra(train_task, args)
    else:
        train_task(cfg)


@data_app.command("prepare", context_settings=EXTRA_ARGS)
def data_prepare(ctx: typer.Context, verbose: Verbose = False) -> None:
    """Download, decode and cache a data set now (e.g. before a sweep, or on a login node).

    Takes the same data overrides as train: `resexp data prepare data=folder data.root=PATH`.
    """
    from resexp.data import load_data  # downloads, unpacks, decodes and caches

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        data = load_data(check_config(list(ctx.args)).data)
    except ResexpError as e:
        _fail(e, verbose)
    typer.echo(f"ready: {data.description}")


SWEEP_HELP = """Run the whole study (He et al. 2015, Figure 6) through Hydra's multirun; resumable.

\b
  resexp sweep                                  depth 20,32,44,56 x plain/residual
  resexp sweep schedule=short data=folder data.root=PATH
  resexp sweep depth=20,56 seeds=3              a smaller grid, seeds 0, 1, 2
  resexp sweep hydra/launcher=joblib hydra.launcher.n_jobs=4   several runs at once
  resexp sweep hydra/launcher=submitit_slurm    one SLURM job per run

Every `resexp train` override composes with it. Runs already completed are skipped, so
re-running after an interruption runs only what is missing. A failed run does not stop the
others; the sweep ends with a table and a non-zero exit if any failed. Outputs go to
outputs/degradation/ (name= changes it); then `resexp compare`.
"""


@app.command(
    context_settings=EXTRA_ARGS,
    short_help="Run the whole study (Figure 6's grid) through Hydra's multirun.",
    help=SWEEP_HELP,
)
def sweep(
    ctx: typer.Context,
    verbose: Verbose = False,
    interval: Annotated[float, typer.Option(help="Seconds between progress checks.")] = 10.0,
) -> None:
    from rich.console import Console

    from resexp import sweep as sweeps
    from resexp.compare import write_study_layout
    from resexp.rundir import CheckpointError
    from resexp.runtime import select_device
    from resexp.tracking import format_seconds
    from resexp.train import check_run_dir

    if verbose:
        os.environ["HYDRA_FULL_ERROR"] = "1"
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        _split_flags(list(ctx.args))  # `--depth 56` gets the key=value hint
        args = sweeps.translate_args(list(ctx.args))
        plan = _checked(lambda: sweeps.plan_sweep(args, compose))
        for run in plan.runs:  # every run, its folder included, before any is launched
            cfg = check(run.cfg)  # composed once, by the plan
            try:
                check_run_dir(cfg, Path(cfg.run_dir))
            except CheckpointError as e:  # that run fails in its job; the others still run
                log.warning("%s: %s", run.run_dir, e)
        skipped = [r for r in plan.runs if r.done_before]
        for run in skipped:
            log.info("skip %s: already completed", run.run_dir)
        log.info(
            "sweep %s: %d runs (%d to run, %d already completed), launcher %s",
            plan.study_dir,
            len(plan.runs),
            len(plan.runs) - len(skipped),
            len(skipped),
            plan.launcher,
        )
        test_images = sweeps.prepare_data_once(plan)
        if any(not r.done_before for r in plan.runs):
            log.info("sweep: timing a few steps of each network on this machine ...")
            estimate = sweeps.estimate(plan, test_images)
            console = Console()
            console.width = max(console.width, 100)
            console.print(sweeps.plan_table(plan))
            if estimate is None:
                log.info("sweep: the runs execute on other machines: no local estimate")
            else:
                log.info("sweep: estimated wall time on this machine: %s", format_seconds(estimate))
                device = plan.runs[0].cfg.device if plan.runs else "auto"
                on_cpu = select_device(str(device)).type == "cpu"
                if on_cpu and estimate > sweeps.LONG_CPU_SWEEP:
                    log.warning(
                        "sweep: that is long for a CPU. `resexp sweep experiment=laptop` is the "
                        "same study sized for a 2-core CPU (about 2 hours, 1,500 iterations); "
                        "Ctrl-C stops this one (resumable)."
                    )
    except ResexpError as e:
        _fail(e, verbose)

    planned = sorted({(r.run_dir.parent.name, int(r.cfg.depth), bool(r.cfg.residual))
                      for r in plan.runs}, key=lambda a: (a[2], a[1]))  # fmt: skip
    write_study_layout(plan.study_dir, planned)  # TensorBoard's shared charts, from the start
    monitor = sweeps.Monitor(plan, interval=interval)
    monitor.start()
    try:
        run_hydra(sweep_task, ["-m", *plan.args])
    finally:
        monitor.stop()
    table, problems = sweeps.report_table(plan)
    console = Console()
    console.width = max(console.width, 110)
    console.print(table)
    if problems:
        typer.echo(
            f"{len(problems)} of {len(plan.runs)} run(s) did not complete:\n" + "\n".join(problems),
            err=True,
        )
        raise typer.Exit(1)


def sweep_task(cfg) -> dict | None:
    """One Hydra job of a sweep: a failed run is recorded in its summary.json, not raised."""
    from resexp.sweep import run_job
    from resexp.train import fit

    config_module.register()  # a launcher's worker process resolves ${arch:...} too
    return run_job(cfg, fit)


@app.command("compare")
def compare_command(
    study: Annotated[
        Path | None, typer.Argument(help="A study directory (default: the latest under outputs/).")
    ] = None,
    root: Annotated[Path, typer.Option(help="Where to look for the latest study.")] = Path(
        "outputs"
    ),
    tensorboard: Annotated[
        bool, typer.Option(help="Write the TensorBoard layout and hparams.")
    ] = True,
) -> None:
    """Figure 6 side by side, results.csv/.md with the published numbers, and a verdict.

    Reads the runs' metrics.jsonl and summary.json; works on partial studies (says what is
    missing). Writes figure6.png/.pdf, results.csv, results.md next to the runs.
    """
    from resexp.compare import compare, find_study, print_report

    try:
        result = compare(study if study is not None else find_study(root), tensorboard=tensorboard)
    except ResexpError as e:
        _fail(e, False)
    print_report(result)


@app.command("analyze", context_settings=EXTRA_ARGS)
def analyze_command(
    ctx: typer.Context,
    name: Annotated[
        str | None,
        typer.Argument(help="responses | gradients | lesion | landscape | shattering"),
    ] = None,
    target: Annotated[
        Path | None, typer.Argument(help="A run or study directory (default: the latest study).")
    ] = None,
    list_analyses: Annotated[
        bool, typer.Option("--list", help="List the analyses and their options.")
    ] = False,
    verbose: Verbose = False,
) -> None:
    """Why residuals work, measured on your runs: responses (He et al. Fig. 7), gradients,
    lesion (Veit et al. 2016), landscape (Li et al. 2018), shattering (Balduzzi et al. 2017).

    \b
      resexp analyze responses outputs/degradation
      resexp analyze lesion outputs/degradation images=0 draws=5
      resexp analyze landscape outputs/degradation steps_2d=21
      resexp analyze shattering
      resexp analyze responses outputs/laptop data.root=cifar10-jpeg.tar.xz device=cpu
    Options are option=value (`resexp analyze --list` shows them all with their defaults);
    device=, threads=, progress=, data= and data.KEY= are `resexp train`'s, checked as there
    (each run's own data unless data= names another source, as `resexp evaluate`).
    Writes a PNG, a CSV and a JSON (with what the literature expects and whether it agrees)
    and TensorBoard images to TARGET/analysis/NAME/.
    """
    from functools import partial

    from resexp.analysis import ANALYSES, analyze, help_text, is_train_key, parse_options
    from resexp.compare import find_study

    if list_analyses or name is None:
        typer.echo(help_text())
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if name not in ANALYSES:
            raise ConfigError(f"unknown analysis {name!r}: choose one of {', '.join(ANALYSES)}")
        options = parse_options(list(ctx.args))
        overrides = [f"{k}={v}" for k, v in options.items() if is_train_key(k)]
        cfg = check_config(overrides)  # train's keys: the same defaults, checks and errors
        keys = config_module.explicit_keys(overrides)
        if target is None and name != "shattering":
            target = find_study(Path("outputs"))
        own = {k: v for k, v in options.items() if not is_train_key(k)}
        paths = analyze(name, target or Path("outputs"), device=cfg.device, threads=cfg.threads,
                        progress=cfg.progress, data=partial(config_module.data_for_run, cfg=cfg,
                        keys=keys), **own)  # fmt: skip
    except ResexpError as e:
        _fail(e, verbose)
    for path in paths:
        typer.echo(f"wrote {path}")


EVALUATE_HELP = """Test error, loss, per-class error and the confusion matrix of trained weights.

\b
  resexp evaluate outputs/degradation/resnet-20/seed0        a run, on its own data
  resexp evaluate outputs/degradation                        every run of a study
  resexp evaluate outputs/degradation depth=56               the study's depth-56 runs
  resexp evaluate resnet20-12fca82f.th                       akamaster/pytorch_resnet_cifar10
  resexp evaluate resnet56.th data=folder data.root=cifar10-jpeg.tar.xz device=cpu

PATH is a run folder, a study folder, or a checkpoint file: resexp's checkpoint.pt, or one of
akamaster/pytorch_resnet_cifar10's (their ResNet-20 ... 1202, option A, normalised as they
trained them; the output says so). Overrides are `resexp train`'s: data=..., data.root=...,
device=..., schedule.eval_batch_size=N. A run is evaluated on its own data unless data= names
another source. depth=, residual=, shortcut=, block= state what the weights must be: weights
that are something else are refused (exit 2); for a study they choose runs.

Writes evaluation.json and confusion.png to RUN/evaluation/, STUDY/evaluation/ (a summary) or
FILE-evaluation/ beside a file, or to --out.
"""


@app.command(
    "evaluate",
    context_settings=EXTRA_ARGS,
    short_help="Test error, per-class error and confusion matrix of a run, study or checkpoint.",
    help=EVALUATE_HELP,
)
def evaluate_command(
    ctx: typer.Context,
    path: Annotated[
        Path, typer.Argument(help="A run folder, a study folder, or a checkpoint file.")
    ],
    out: Annotated[
        Path | None, typer.Option(help="Folder for evaluation.json and confusion.png.")
    ] = None,
    verbose: Verbose = False,
) -> None:
    from resexp.evaluate import evaluate_path, print_report

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    overrides = list(ctx.args)
    try:
        _split_flags(overrides)  # `--depth 56` gets the key=value hint
        results = evaluate_path(path, check_config(overrides), overrides, out=out)
    except ResexpError as e:
        _fail(e, verbose)
    print_report(results)


BENCH_HELP = """Time resexp's training step beside a conventional DataLoader/PIL/eager-fp32 loop.

\b
  resexp bench depth=56 precision=fp32 channels_last=false compile=false
  resexp bench data=folder data.root=cifar10-jpeg.tar.xz bench.iterations=100

`resexp train`'s overrides mean what they mean there (the step timed is the one train would run),
on generated images unless data= names others (data.test_size=2000: the evaluation timing's).
bench's own: bench.iterations=50 (timed steps per loop), bench.warmup=10, bench.rounds=5 (blocks
alternating between the loops), bench.baseline=true, bench.json=PATH (default: outputs/bench/).
compile=MODE times one of torch.compile's modes (reduce-overhead, max-autotune, ...), as train.
"""

# resexp bench's options before it took overrides (`--batch-size 64`, `--no-baseline`), still
# understood: each names its key in the schema (schedule.batch_size, bench.baseline), but these.
LEGACY_RENAMED = {"eval_images": "data.test_size", "data_root": "data.root"}


def bench_overrides(args: list[str]) -> list[str]:
    """``args`` as overrides: the old ``--depth 20`` form translated (its ``--compile none`` as
    ``compile=false``), then bench's data defaults where ``args`` leave them."""
    from resexp.bench import default_data

    keys = config_module.schema_keys(BenchConfig)
    overrides, rest = [], list(args)
    while rest:
        option, sep, value = rest.pop(0).partition("=")
        name = option[2:].replace("-", "_").removeprefix("no_") if option[:2] == "--" else "?"
        key = LEGACY_RENAMED.get(name) or next(
            (k for k in (name, f"bench.{name}", f"schedule.{name}") if k in keys), None
        )
        if key and not sep:  # --no-baseline, --residual, --depth 56
            valued = bool(rest) and "=" not in rest[0] and not rest[0].startswith("--")
            value = "false" if option[:5] == "--no-" else rest.pop(0) if valued else "true"
            option, sep = key, "="
        elif key:
            option = key
        if option == "compile" and value == "none":
            overrides.append("compile=false")
        else:
            overrides.append(f"{option}{sep}{value}")
    given = dict(o.lstrip("+~").split("=", 1) for o in overrides if "=" in o)
    synthetic = given.get("data", "synthetic") == "synthetic"  # only its size is bench's own
    defaults = [f"{k}={v}" for k, v in default_data().items()
                if k not in given and (synthetic or k == "data.test_size")]  # fmt: skip
    return defaults + overrides


def bench_config(args: list[str]) -> Any:
    """The checked config of ``resexp bench ARGS`` (``BenchConfig``)."""
    overrides, hydra_flags = _split_flags(bench_overrides(args), "bench")
    if hydra_flags:
        raise ConfigError("resexp bench takes key=value overrides only (no -m, --cfg, ...)")
    return check_config(overrides, BenchConfig)


@app.command(
    "bench",
    context_settings=EXTRA_ARGS,
    short_help="Time training and evaluation beside a conventional DataLoader loop.",
    help=BENCH_HELP,
)
def bench_command(ctx: typer.Context, verbose: Verbose = False) -> None:
    import json

    from rich.console import Console

    from resexp.bench import bench, format_table
    from resexp.rundir import write_json

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        cfg = bench_config(list(ctx.args))
        result = bench(cfg)
    except ResexpError as e:
        _fail(e, verbose)
    Console().print(format_table(result))
    name = f"{result['model']['arch']}-{result['machine']['device']}".replace(":", "")
    path = Path(cfg.bench.json or Path(cfg.output_root) / "bench" / f"{name}.json")
    write_json(path, json.loads(json.dumps(result, default=str)))
    typer.echo(f"wrote {path}")


def main() -> None:
    """Entry point of the ``resexp`` console script."""
    app()


if __name__ == "__main__":
    main()
