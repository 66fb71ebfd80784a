"""Shared fixtures: composing configs as the CLI does, running the CLI, the real CIFAR-10 copy."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The JPEG copy of CIFAR-10 that sits beside the project (see ../shared/data/README.md).
CIFAR10_JPEG = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.xz"

# A tiny, fast run: 512 generated images, 60 iterations of 32 on the CPU (seconds).
TINY = [
    "data=synthetic",
    "data.train_size=512",
    "data.test_size=256",
    "schedule=smoke",
    "device=cpu",
    "progress=lines",
]


@pytest.fixture
def compose_cfg(tmp_path):
    """compose_cfg(*overrides) -> the config `resexp train` would run, writing under tmp_path."""
    from resexp.cli import compose

    def _compose(*overrides: str):
        return compose(
            [f"output_root={tmp_path / 'outputs'}", f"data_dir={tmp_path / 'data'}", *overrides]
        )

    return _compose


def run_cli(*args: str, cwd: Path, timeout: float = 300, env: dict | None = None):
    """Run `resexp ARGS` in a fresh process, as a user would; return the CompletedProcess."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [sys.executable, "-m", "resexp.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


@pytest.fixture(scope="session")
def cifar10_jpeg() -> Path:
    if not CIFAR10_JPEG.exists():
        pytest.skip(f"the CIFAR-10 JPEG archive is not at {CIFAR10_JPEG} (../shared/data)")
    return CIFAR10_JPEG


@pytest.fixture(scope="session")
def cifar10_jpeg_cache(tmp_path_factory) -> Path:
    """One cache folder for the session, so the archive is unpacked and decoded only once."""
    return tmp_path_factory.mktemp("cifar10-jpeg-cache")
