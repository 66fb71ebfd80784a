"""The configs must be found from a checkout and from a built wheel (a known Hydra pitfall:
a config directory outside the package is silently left out of the wheel)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import pytest

from tests.conftest import REPO

GROUPS = {"data": {"cifar10", "folder", "synthetic"}, "schedule": {"paper", "short", "smoke"}}


def test_configs_found_from_the_checkout():
    from resexp.cli import compose, group_choices

    for group, names in GROUPS.items():
        assert set(group_choices(group)) >= names
    assert compose(["schedule=smoke"]).schedule.iterations == 60


@pytest.mark.slow
def test_configs_found_from_a_built_wheel(tmp_path):
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if build.returncode != 0 and "No module named" in build.stderr:
        pytest.skip(f"cannot build a wheel here: {build.stderr.strip().splitlines()[-1]}")
    assert build.returncode == 0, build.stderr
    (wheel,) = tmp_path.glob("resexp-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for group, choices in GROUPS.items():
        for choice in choices:
            assert f"resexp/configs/{group}/{choice}.yaml" in names
    assert "resexp/configs/config.yaml" in names

    # Import the package from the unpacked wheel, from a folder that has no configs/ in it.
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (
        "import resexp, resexp.cli as c; "
        f"assert resexp.__file__.startswith({str(site)!r}), resexp.__file__; "
        "print(c.compose(['data=synthetic', 'schedule=smoke']).schedule.iterations)"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "60"
    # And the Hydra application itself (what `resexp train` runs) finds them too.
    run = subprocess.run(
        [sys.executable, "-m", "resexp.cli", "train", "--cfg", "job", "depth=56"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert "depth: 56" in run.stdout
