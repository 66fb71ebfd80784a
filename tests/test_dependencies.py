"""pyproject.toml's torch floor is the newest release among the APIs resexp calls (its comment
cites where each came from), and torchvision's floor is the release built for it."""

from __future__ import annotations

import functools
import importlib

import pytest
import torch
from packaging.requirements import Requirement
from packaging.version import Version

from tests.conftest import REPO

# The API, the file that calls it and how (a string of its call), and the torch release that
# added that use (pyproject.toml's comment cites the sources). The floor may go down only once
# the API that sets it is gone from the code.
TORCH_APIS = [
    ("torch.serialization.safe_globals", "resexp/evaluate.py", "safe_globals(", "2.5"),
    ("torch.optim.SGD", "resexp/train.py", "fused=fused", "2.3"),  # with a tensor lr, on CUDA
    ("torch.compile", "resexp/runtime.py", "max-autotune-no-cudagraphs", "2.1"),
    ("torch.func.functional_call", "resexp/models.py", "functional_call(", "2.0"),
]
# torch.compile on newer Pythons needs newer torch: the floor pyproject.toml sets there.
PYTHON_FLOORS = {"3.12": "2.4", "3.13": "2.6"}


@functools.cache
def _requirements() -> list[Requirement]:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [Requirement(line) for line in project["dependencies"]]


def _floor(name: str, python: str) -> Version:
    """The lowest ``name`` version pyproject.toml allows on Python ``python``."""
    env = {"python_version": python, "python_full_version": f"{python}.0"}
    floors = [
        Version(spec.version)
        for r in _requirements()
        if r.name == name and (r.marker is None or r.marker.evaluate(env))
        for spec in r.specifier
        if spec.operator == ">="
    ]
    assert floors, f"pyproject.toml sets no floor for {name} on Python {python}"
    return max(floors)


def test_the_torch_floor_is_the_newest_api_release():
    assert _floor("torch", "3.10") == max(Version(v) for *_, v in TORCH_APIS)


@pytest.mark.parametrize(("python", "floor"), PYTHON_FLOORS.items())
def test_newer_pythons_get_a_torch_whose_compile_runs_on_them(python, floor):
    assert _floor("torch", python) == max(Version(floor), _floor("torch", "3.10"))


@pytest.mark.parametrize("python", ["3.10", *PYTHON_FLOORS])
def test_the_torchvision_floor_is_built_for_the_torch_floor(python):
    torch_floor = _floor("torch", python)
    assert torch_floor.major == 2  # torchvision 0.(N+15) pairs with torch 2.N
    assert _floor("torchvision", python) == Version(f"0.{torch_floor.minor + 15}")


@pytest.mark.parametrize(("api", "user", "call", "release"), TORCH_APIS)
def test_each_api_behind_the_floor_is_used_and_exists(api, user, call, release):
    assert call in (REPO / user).read_text(), f"{user} no longer calls {api} so: {call}"
    module, name = api.rsplit(".", 1)
    assert hasattr(importlib.import_module(module), name)
    assert Version(torch.__version__.split("+")[0]) >= Version(release)
