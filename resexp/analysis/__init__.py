"""Why residual networks work, measured on trained runs: one module per study.

    responses   std of each 3x3 layer's response         He et al. 2015, Fig. 7
    gradients   per-layer gradient norms, init and saved  He et al. 2015 sec. 4.1; Yang et al. 2019
    lesion      error with blocks removed at test time    Veit et al. 2016
    landscape   loss around the trained weights           Li et al. 2018
    shattering  gradient autocorrelation at init          Balduzzi et al. 2017

``analyze(name, target)`` finds the runs under ``target`` (a run folder or a study folder), runs
the analysis and writes into ``<target>/analysis/<name>/``: a PNG per figure, the numbers as CSV
and JSON, and the figures as TensorBoard images (``tensorboard/``). The JSON's ``checks`` list,
also logged, puts what the literature expects next to what was measured: "expected: ...;
measured: ...; agrees: yes/no". Of ``resexp train``'s keys, it takes ``TRAIN_KEYS``.
"""

from __future__ import annotations

import inspect
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from resexp.analysis import gradients, landscape, lesion, responses, shattering
from resexp.analysis.common import DataCache, Output, Settings, find_runs
from resexp.config import PROGRESS, Config, convert, did_you_mean, schema_keys, show
from resexp.errors import ConfigError, ResexpError

log = logging.getLogger("resexp.analysis")

# name -> function(runs, out, settings, **options)
ANALYSES: dict[str, Callable[..., None]] = {
    "responses": responses.analyze_responses,
    "gradients": gradients.analyze_gradients,
    "lesion": lesion.analyze_lesion,
    "landscape": landscape.analyze_landscape,
    "shattering": shattering.analyze_shattering,
}

# name -> {option: (default, help)}: the options each analysis takes besides the common ones,
# the OPTIONS of its function's module
OPTIONS: dict[str, dict[str, tuple[Any, str]]] = {
    name: sys.modules[function.__module__].OPTIONS for name, function in ANALYSES.items()
}

# Analyses that measure networks at initialization and can run without trained runs.
NEEDS_NO_RUNS = {"shattering"}

COMMON_OPTIONS: dict[str, tuple[Any, str]] = {
    "out_dir": (None, "where the results go (default: <target>/analysis/<name>/)"),
    "images": (2000, "test images used: a seeded, class-balanced sample (0: the whole set)"),
    "unfinished": (False, "also analyse runs that have not completed, named as such"),
    "batch_size": (500, "images per forward pass"),
    # resexp train's keys (TRAIN_KEYS), with train's defaults and meaning:
    "device": (Config.device, "auto (CUDA, else MPS, else the CPU), cpu, cuda, cuda:N or mps"),
    "threads": (Config.threads, "CPU threads (0: torch's default)"),
    "progress": (Config.progress, "auto (a bar on a terminal, lines otherwise), bar, lines, none"),
    "data": ("(each run's own)", "another source; data.KEY=VALUE: one setting of each run's"),
}
# resexp train's keys an analysis takes (and data.KEY), checked as train checks them: where and on
# what it runs. The others (precision, compile, ...) do not apply: analyses measure in fp32, eager.
TRAIN_KEYS = ("device", "threads", "progress", "data")


def is_train_key(key: str) -> bool:
    """Whether ``key`` (of ``key=value``) is one of ``resexp train``'s that analyses take."""
    return key in TRAIN_KEYS or key.startswith("data.")


def describe() -> list[dict[str, Any]]:
    """Each analysis: name, one-line summary, source, whether it needs runs, and its options."""
    entries = []
    for name, function in ANALYSES.items():
        module = sys.modules[function.__module__]
        entries.append(
            {
                "name": name,
                "summary": (inspect.getdoc(function) or name).splitlines()[0],
                "source": (inspect.getdoc(module) or name).splitlines()[0].rstrip(":,"),
                "needs_runs": name not in NEEDS_NO_RUNS,
                "options": [
                    {"name": k, "default": d, "help": h} for k, (d, h) in OPTIONS[name].items()
                ],
            }
        )
    return entries


def help_text() -> str:
    """The analyses and their options, for ``resexp analyze --help`` or ``--list``."""
    lines = ["Analyses (resexp analyze NAME TARGET [option=value ...]):", ""]
    for entry in describe():
        lines.append(f"  {entry['name']:<11} {entry['summary']}")
        for opt in entry["options"]:
            lines.append(f"      {opt['name']}={show(opt['default'])}  {opt['help']}")
    lines += ["", "Common options:"]
    lines += [f"  {k}={show(d)}  {h}" for k, (d, h) in COMMON_OPTIONS.items()]
    return "\n".join(lines)


def analyze(
    name: str,
    target: Path | str,
    *,
    out_dir: Path | str | None = None,
    device: str = Config.device,
    images: int | str | None = 2000,
    batch_size: int | str = 500,
    progress: str = Config.progress,
    unfinished: bool | str = False,
    threads: int = Config.threads,
    data: Callable[[dict], Any] | None = None,
    **options: Any,
) -> list[Path]:
    """Run analysis ``name`` on the runs under ``target``; return the paths it wrote.

    ``options`` are the analysis's own (see ``OPTIONS`` or ``describe()``); values may be given
    as strings (``"21"``, ``"true"``, ``"2,4,8"``) and are converted to the default's type.
    ``data``: a run's data config -> the one to read (``config.data_for_run``; default: its
    own). Raises ResexpError for an unknown analysis or option, or a target without runs.
    """
    import torch

    from resexp.runtime import Runtime, select_device

    if name not in ANALYSES:
        raise ResexpError(
            f"unknown analysis {name!r}; choose one of {', '.join(ANALYSES)} "
            "(`resexp analyze --list` describes them)"
        )
    kwargs = _check_options(name, options)
    n_images = convert("images", images or 0, like=0)
    n_batch = convert("batch_size", batch_size, like=1)
    if n_images < 0 or n_batch < 1:
        raise ConfigError("images must be >= 0 (0: all) and batch_size >= 1")
    if progress not in PROGRESS:
        raise ConfigError(f"progress must be one of {', '.join(PROGRESS)}, not {progress!r}")

    include_unfinished: bool = convert("unfinished", unfinished, like=False)
    target = Path(target)
    runs = (
        []
        if name in NEEDS_NO_RUNS and not target.exists()
        else find_runs(target, include_unfinished)
    )
    if not runs and name not in NEEDS_NO_RUNS:
        raise ResexpError(
            f"no completed runs under {target} (a run folder holds config.yaml, checkpoint.pt "
            "and a summary.json saying completed); give a run folder such as "
            "outputs/NAME/resnet-20/seed0 or a study folder such as outputs/NAME, train first "
            "with `resexp train`, or add unfinished=true to analyse runs that have not completed"
        )
    runtime = Runtime(select_device(device))  # its defaults: fp32, eager, contiguous
    out = Output(name, Path(out_dir) if out_dir else target / "analysis" / name, progress)
    settings = Settings(runtime, n_images or None, n_batch, DataCache(runtime.device, data))
    out.runs, out.samples = runs, settings.data.samples
    plural = "" if len(runs) == 1 else "s"
    log.info("analysis %s: %d run%s under %s -> %s", name, len(runs), plural, target, out.dir)
    threads_before = torch.get_num_threads()
    try:
        if threads > 0:
            torch.set_num_threads(threads)
        ANALYSES[name](runs, out, settings, **kwargs)
    finally:
        out.close()
        torch.set_num_threads(threads_before)  # a caller's own setting is theirs again
    agreed = [c for c in out.checks if c["agrees"] is not None]
    log.info(
        "analysis %s: %d of %d checks agree with the literature; wrote %s",
        name,
        sum(bool(c["agrees"]) for c in agreed),
        len(agreed),
        ", ".join(p.name for p in out.written),
    )
    return out.written


# ----------------------------------------------------------------------------------------------
# Options given as strings on the command line


def parse_options(args: list[str]) -> dict[str, str]:
    """``["steps_1d=51", "seed=1"]`` -> ``{"steps_1d": "51", "seed": "1"}`` for ``analyze``."""
    options = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or not key:
            raise ConfigError(f"expected option=value, got {arg!r} (`resexp analyze --list`)")
        options[key.strip().lstrip("-").replace("-", "_")] = value.strip()
    return options


def _check_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """The analysis's own options, typed; an unknown one refused as an unknown key of ``resexp
    train`` is (with a did-you-mean), a training key analyses do not take saying so."""
    valid = OPTIONS[name]
    for key in sorted(set(options) - set(valid)):
        if key in schema_keys():  # analyses measure each run's network in fp32, eager
            raise ConfigError(f"{key} is a key of resexp train that analyses do not take; they "
                              f"take {', '.join(TRAIN_KEYS)} and data.KEY")  # fmt: skip
        raise ConfigError(
            f"unknown option {key} for analysis {name}"
            + did_you_mean(key, [*valid, *COMMON_OPTIONS])
            + f"; its options: {', '.join(valid) or 'none'} (plus {', '.join(COMMON_OPTIONS)})"
        )
    return {k: convert(k, v, like=valid[k][0]) for k, v in options.items()}
