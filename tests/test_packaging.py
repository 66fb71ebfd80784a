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


def test_ci_runs_readme_quick_start_install_and_test_command_word_for_word():
    readme = (REPO / "README.md").read_text()
    ci = subprocess.run(
        ["bash", "-c", "grep -m1 '^    python3 -m venv \\.venv' README.md | sed -e 's/^    //' "
         "-e 's/ && resexp .*$//'"], cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert ci == 'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[dev]"'
    assert f"    {ci} && resexp sweep" in readme  # the quick start installs, then runs the study
    assert "\n    python -m pytest -q\n" in readme
    script = (REPO / ".ci" / "run").read_text()
    assert 'eval "$install"' in script and 'eval "$tests"' in script
    assert "pip install" not in script.replace("pip install -e", "")  # nothing installed beyond


def test_dev_extra_brings_what_the_tests_need():
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    deps = " ".join(project["dependencies"] + project["optional-dependencies"]["dev"])
    for needed in ("pytest", "ruff", "mypy", "hydra-joblib-launcher", "hydra-submitit-launcher"):
        assert needed in deps
