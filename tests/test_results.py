"""The published studies under results/ stay readable: compare reproduces the verdict their
README states, and TensorBoard reads their curves and shared charts.

A study written by an older resexp must still compare: these tests run the current code on the
committed files, so a change of output format that breaks them breaks this test first.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from resexp.compare import compare, load_runs
from tests.conftest import REPO

STUDIES = sorted(p.parent for p in (REPO / "results").glob("*/results.csv"))


def stated_verdict(study: Path) -> tuple[str, dict[str, str]]:
    """The headline and each check's result as the study's README states them."""
    text = (study / "README.md").read_text()
    headline = re.search(r"^\*\*Verdict:\*\* (.+)$", text, re.MULTILINE)
    assert headline, f"{study}/README.md states no verdict line (**Verdict:** ...)"
    checks = dict(re.findall(r"^\| `([a-z0-9-]+)` \| ([A-Za-z .]+?) \|", text, re.MULTILINE))
    return headline.group(1).strip(), checks


def test_there_is_a_published_study():
    assert STUDIES, "results/ holds no study (results/<name>/results.csv)"


@pytest.mark.parametrize("study", STUDIES, ids=lambda p: p.name)
def test_compare_reproduces_the_stated_verdict(study, tmp_path):
    copy = shutil.copytree(study, tmp_path / study.name)  # compare writes beside the runs
    result = compare(copy, tensorboard=False)
    headline, checks = stated_verdict(study)
    assert result.verdict.headline == headline
    computed = {c.key: c.status for c in result.verdict.checks}
    assert checks and {k: computed.get(k) for k in checks} == checks
    assert all(r.status == "completed" for r in result.runs)


@pytest.mark.parametrize("study", STUDIES, ids=lambda p: p.name)
def test_tensorboard_reads_every_run_and_the_shared_charts(study):
    layouts = 0
    for run in load_runs(study):
        events = EventAccumulator(str(run.path))
        events.Reload()
        tags = set(events.Tags()["scalars"])
        assert {"error/train", "error/test", f"figure6/{run.arch}/error_test"} <= tags
        assert len(events.Scalars("error/test")) >= 12  # a readable curve: a dozen points
        assert len(events.Scalars("error/train")) > len(events.Scalars("error/test"))
        layouts += "custom_scalars__config__" in events.PluginTagToContent("custom_scalars")
    assert layouts, "no run carries the custom-scalars layout (run `resexp compare`)"


ANALYSES = sorted((REPO / "results").glob("*/analyses/*/*.json"))


@pytest.mark.parametrize("path", ANALYSES, ids=lambda p: f"{p.parents[2].name}-{p.stem}")
def test_published_analyses_are_of_completed_runs_on_balanced_samples(path):
    import json

    result = json.loads(path.read_text())
    assert result["checks"] and all("agrees" in c for c in result["checks"])
    assert all(r["status"] == "completed" for r in result["analysed_runs"])
    for sample in result["samples"]:
        counts = sample["per_class"]
        assert max(counts) - min(counts) <= 1, f"{path}: unbalanced sample {sample}"
