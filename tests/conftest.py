"""Shared fixtures: composing configs as the CLI does, running the CLI, the real CIFAR-10 copy."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The real CIFAR-10 images as a JPEG image-folder archive (train/<class>/*.jpg, test/<class>/*.jpg,
# quality 75), for the tests that train on real data: RESEXP_TEST_CIFAR10_JPEG names it; by
# default it is looked for beside the checkout. Those tests skip, saying so, when it is absent.
CIFAR10_JPEG = Path(
    os.environ.get(
        "RESEXP_TEST_CIFAR10_JPEG", REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.xz"
    )
)

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
        pytest.skip(
            f"no CIFAR-10 JPEG archive at {CIFAR10_JPEG}: set RESEXP_TEST_CIFAR10_JPEG to "
            "an image-folder archive of CIFAR-10 to run the real-data tests"
        )
    return CIFAR10_JPEG


@pytest.fixture(scope="session")
def cifar10_jpeg_cache(tmp_path_factory) -> Path:
    """One cache folder for the session, so the archive is unpacked and decoded only once."""
    return tmp_path_factory.mktemp("cifar10-jpeg-cache")
