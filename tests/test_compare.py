"""compare: Figure 6, the results table and the verdict, from fake and from real run folders."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import pytest

from resexp import compare as cmp_module
from resexp.compare import compare, find_study, load_runs, welch_p
from resexp.errors import ResexpError

# Final (training, test) errors in %, shaped like He et al. 2015, Figure 6: plain nets train and
# test worse as they get deeper, ResNets better.
DEGRADATION = {
    ("plain", 20): (2.0, 9.8),
    ("plain", 32): (2.6, 10.1),
    ("plain", 44): (3.3, 11.4),
    ("plain", 56): (4.1, 13.0),
    ("resnet", 20): (1.5, 8.7),
    ("resnet", 32): (0.9, 7.6),
    ("resnet", 44): (0.6, 7.2),
    ("resnet", 56): (0.4, 7.0),
}
# Seed offsets: seed 0 below, seed 1 above the values above, so the mean is the value itself.
SPREAD = {0: -0.05, 1: +0.05}
STD_OF_TWO = math.sqrt(2) * 0.05  # sample std of (x - 0.05, x + 0.05)


def curve(train_final: float, test_final: float, iterations: int, every: int) -> list[dict]:
    """Errors falling from 90% towards the final values, with drops at 50% and 75% (the lr)."""
    rows = []
    for it in range(every, iterations + 1, every):
        t = it / iterations
        drop = 1.0 if t < 0.5 else 0.5 if t < 0.75 else 0.0
        decay = math.exp(-10 * t) * (1 - t)  # 0 at the end: the final values are exact
        train = train_final + (90 - train_final) * decay + 6 * drop
        test = test_final + (90 - test_final) * decay + 8 * drop
        rows.append(
            {
                "iteration": it,
                "train_error": train,
                "test_error": test,
                "train_loss": train / 40,
                "test_loss": test / 40,
                "lr": 0.1 * (1 if t < 0.5 else 0.1 if t < 0.75 else 0.01),
                "images_per_second": 10000.0,
                "wall_seconds": it / 100,
            }
        )
    return rows


def make_run(
    study: Path,
    arch: str,
    depth: int,
    seed: int,
    train_final: float,
    test_final: float,
    *,
    iterations: int = 6400,
    every: int = 400,
    status: str | None = "completed",
    stop_at: int | None = None,
) -> Path:
    """Write a run folder as training does: metrics.jsonl, config.yaml, summary.json (unless
    status is None: a run still in progress)."""
    residual = not arch.startswith("plain")
    run = study / f"{arch}-{depth}" / f"seed{seed}"
    run.mkdir(parents=True)
    rows = curve(train_final, test_final, iterations, every)
    if stop_at is not None:
        rows = [r for r in rows if r["iteration"] <= stop_at]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "config.yaml").write_text(
        f"name: {study.name}\ndepth: {depth}\nresidual: {str(residual).lower()}\nshortcut: A\n"
        f"block: basic\nseed: {seed}\nschedule:\n  iterations: {iterations}\n"
        "data:\n  source: synthetic\n"
    )
    if status is not None:
        last = rows[-1]
        summary = {
            "name": study.name,
            "arch": f"{arch}-{depth}",
            "depth": depth,
            "residual": residual,
            "shortcut": "A",
            "block": "basic",
            "seed": seed,
            "params": 1000 * depth,
            "iterations": last["iteration"],
            "planned_iterations": iterations,
            "batch_size": 128,
            "train_error": last["train_error"],
            "test_error": last["test_error"],
            "train_loss": last["train_loss"],
            "test_loss": last["test_loss"],
            "best_test_error": min(r["test_error"] for r in rows),
            "status": status,
            "data": "synthetic (fake test data)",
        }
        (run / "summary.json").write_text(json.dumps(summary))
    return run


def make_study(root: Path, finals: dict = DEGRADATION, seeds=(0, 1), name="degradation") -> Path:
    study = root / name
    for (arch, depth), (train, test) in finals.items():
        for seed in seeds:
            make_run(study, arch, depth, seed, train + SPREAD[seed], test + SPREAD[seed])
    return study


def files_under(folder: Path) -> set[Path]:
    return {p.relative_to(folder) for p in folder.rglob("*")}


def read_csv(path: Path) -> dict[str, dict]:
    with open(path) as f:
        return {row["arch"]: row for row in csv.DictReader(f)}


def check(result, key: str):
    return next(c for c in result.verdict.checks if c.key == key)


# ----------------------------------------------------------------------------------------------
# The degradation study: every output, and the verdict PASS


@pytest.fixture(scope="module")
def degradation(tmp_path_factory):
    study = make_study(tmp_path_factory.mktemp("outputs"))
    return study, compare(study)


def test_figure_is_written_and_decodes(degradation):
    from PIL import Image

    study, _ = degradation
    with Image.open(study / "figure6.png") as image:
        image.load()
        width, height = image.size
    assert 1200 <= width <= 2000 and 500 <= height <= 900  # 10 x 4.2 inches at 150 dpi
    pdf = (study / "figure6.pdf").read_bytes()
    assert pdf.startswith(b"%PDF") and len(pdf) > 5000


def test_figure_has_the_two_panels_of_figure_6(degradation):
    _, result = degradation
    fig = result.figure
    plain, residual = fig.axes[:2]
    assert len([ax for ax in fig.axes if ax.get_lines()]) == 2
    assert plain.get_ylim() == residual.get_ylim()  # shared y: the panels compare directly
    assert plain.get_ylim()[0] == 0 and 13 < plain.get_ylim()[1] <= 30
    assert "plain" in plain.get_title() and "residual" in residual.get_title()

    lines = {
        line.get_gid(): line
        for ax in (plain, residual)
        for line in ax.get_lines()
        if line.get_gid()
    }
    for arch in ("plain-20", "plain-56"):
        assert lines[f"{arch}/train"] in plain.get_lines()
    for arch in ("resnet-20", "resnet-56"):
        assert lines[f"{arch}/test"] in residual.get_lines()
    for depth in (20, 32, 44, 56):
        for arch in (f"plain-{depth}", f"resnet-{depth}"):
            assert lines[f"{arch}/train"].get_linestyle() == "--"  # training: thin dashed
            assert lines[f"{arch}/test"].get_linestyle() == "-"  # test: bold solid
            assert lines[f"{arch}/test"].get_linewidth() > lines[f"{arch}/train"].get_linewidth()
        # One colour per depth, the same on both panels.
        assert lines[f"plain-{depth}/test"].get_color() == lines[f"resnet-{depth}/test"].get_color()
    colors = {lines[f"plain-{d}/test"].get_color() for d in (20, 32, 44, 56)}
    assert len(colors) == 4

    legend = [t.get_text() for t in plain.get_legend().get_texts()]
    assert legend[:4] == ["plain-20", "plain-32", "plain-44", "plain-56"]
    assert "ResNet-56" in [t.get_text() for t in residual.get_legend().get_texts()]
    # Two seeds: the mean curve, with a min-max band.
    assert len(plain.collections) == 8  # 4 depths x (train, test)
    mean_final = lines["plain-56/test"].get_ydata()[-1]
    assert mean_final == pytest.approx(13.0)


def test_results_csv_has_one_row_per_network_with_references(degradation):
    study, _ = degradation
    rows = read_csv(study / "results.csv")
    assert set(rows) == {f"{a}-{d}" for a, d in DEGRADATION}
    for (arch, depth), (train, test) in DEGRADATION.items():
        row = rows[f"{arch}-{depth}"]
        assert float(row["train_error_mean"]) == pytest.approx(train, abs=1e-3)
        assert float(row["test_error_mean"]) == pytest.approx(test, abs=1e-3)
        assert float(row["test_error_std"]) == pytest.approx(STD_OF_TWO, abs=1e-3)
        assert row["n"] == "2" and row["seeds"] == "2"
        assert row["runs"] == "2 completed"
        assert row["iterations"] == "6400"
    assert rows["resnet-56"]["network"] == "ResNet-56"
    assert float(rows["resnet-56"]["reference_test_error"]) == 6.97
    assert rows["resnet-20"]["reference_source"] == "He et al. 2015, Table 6"
    assert float(rows["plain-20"]["reference_test_error"]) == 9.78
    assert "nabla0001" in rows["plain-56"]["reference_source"]
    assert "a-martyn" in rows["plain-32"]["reference_source"]
    assert float(rows["plain-56"]["test_error_minus_reference"]) == pytest.approx(0.05, abs=1e-3)


def test_results_markdown_holds_table_verdict_and_caveats(degradation):
    study, result = degradation
    text = (study / "results.md").read_text()
    assert "| ResNet-56 |" in text and "13.00 ± 0.07 (2)" in text
    assert "He et al. 2015, Table 6" in text
    assert result.verdict.headline in text
    assert "references are for 64k iterations on the original CIFAR-10" in text
    assert "Not the original CIFAR-10" in text  # the fake runs say they are synthetic


def test_verdict_passes_when_the_study_shows_degradation(degradation):
    _, result = degradation
    verdict = result.verdict
    assert verdict.degradation is True and verdict.fixed is True
    assert check(result, "degradation-plain").status == "PASS"
    assert "plain-56" in check(result, "degradation-plain").title
    assert "4.10%" in check(result, "degradation-plain").detail
    assert check(result, "monotonic-plain").status == "PASS"
    assert check(result, "depth-test-resnet").status == "PASS"
    assert check(result, "depth-train-resnet").status == "PASS"
    for depth in (20, 32, 44, 56):
        assert check(result, f"twin-resnet-{depth}").status == "PASS"
    assert verdict.headline.startswith("Figure 6 reproduced")
    assert result.missing == [] and result.incomplete == []


def test_verdict_renders_for_the_terminal(degradation):
    from rich.console import Console

    _, result = degradation
    console = Console(record=True, width=200)
    cmp_module.print_report(result, console)
    text = console.export_text()
    assert "PASS" in text and "ResNet-56" in text and "figure6.png" in text
    title = check(result, "degradation-plain").title  # each check's status beside its title
    assert any(title in line and " PASS " in line for line in text.splitlines())


# ----------------------------------------------------------------------------------------------
# Studies that do not show it, and partial ones


def test_verdict_fails_when_deeper_plain_nets_train_better(tmp_path):
    finals = dict(DEGRADATION)
    finals[("plain", 56)] = (1.0, 9.0)  # deeper plain net trains better: no degradation
    finals[("resnet", 56)] = (2.0, 9.5)  # and the deep ResNet tests worse than ResNet-20
    result = compare(make_study(tmp_path, finals))
    assert check(result, "degradation-plain").status == "FAIL"
    assert check(result, "monotonic-plain").status == "FAIL"
    assert check(result, "depth-test-resnet").status == "FAIL"
    assert check(result, "twin-resnet-56").status == "FAIL"  # 9.5 vs 9.0 test error
    assert check(result, "twin-resnet-20").status == "PASS"
    assert result.verdict.degradation is False and result.verdict.fixed is False
    assert result.verdict.headline.startswith("Figure 6 not reproduced")
    assert "FAIL" in (tmp_path / "degradation" / "results.md").read_text()


def test_partial_study_lists_missing_and_unfinished_runs(tmp_path):
    study = tmp_path / "partial"
    make_run(study, "plain", 20, 0, 2.0, 9.8)
    make_run(study, "plain", 44, 0, 3.0, 11.0)  # no 56: deepest vs shallowest is 44 vs 20
    make_run(study, "resnet", 20, 0, 1.5, 8.7)
    make_run(study, "resnet", 20, 1, 1.5, 8.7, status=None, stop_at=2000)  # still running
    make_run(study, "resnet", 56, 0, 0.5, 7.0, status=None, stop_at=3200)  # only one, running
    make_run(study, "plain", 32, 0, 80.0, 90.0, status="diverged")
    make_run(study, "resnet", 44, 0, 1.0, 8.0, status=None, stop_at=0)  # just started: no rows
    (study / "plain-20" / "seed0" / "metrics.jsonl").open("a").write('{"iteration": 68')  # torn

    result = compare(study)
    assert result.missing == ["plain-56", "resnet-32"]  # plain-32 and resnet-44 have runs
    states = {r.name: r.status for r in result.incomplete}
    assert states == {
        "resnet-20/seed1": "partial",
        "resnet-56/seed0": "partial",
        "plain-32/seed0": "diverged",
        "resnet-44/seed0": "partial",
    }
    nets = {n.arch: n for n in result.networks}
    assert len(nets["resnet-20"].used) == 1  # the completed seed; the running one waits
    assert nets["resnet-56"].preliminary and nets["resnet-56"].iterations == [3200]
    assert nets["plain-32"].used == [] and nets["plain-32"].test_error is None
    assert len(load_runs(study)[0].rows) == 16  # the torn line is skipped

    degradation = check(result, "degradation-plain")
    assert degradation.status == "PASS" and "plain-44" in degradation.title
    # ResNet-56 is half-way: its errors are not final, and the check says so.
    deeper = check(result, "depth-test-resnet")
    # ResNet-56 is half-way and one ResNet-20 seed is running: the finding is not tested, and
    # the check says why, with the iteration ResNet-56 reached (never compared as if final).
    assert deeper.status == "not tested" and "11.28%" in deeper.detail
    assert "no completed run" in deeper.detail and "3,200" in deeper.detail
    assert "1 of 2 seeds completed" in deeper.detail
    assert check(result, "twin-resnet-56").status == "not tested"
    assert check(result, "twin-resnet-20").status == "not tested"  # a seed still running
    assert result.verdict.fixed is None

    text = (study / "results.md").read_text()
    assert "plain-56: no runs" in text
    assert "resnet-56/seed0: partial" in text and "3,200 of 6,400" in text
    assert "plain-32/seed0: diverged" in text and "not counted" in text
    assert "resnet-44/seed0: partial" in text and "iteration 0 of 6,400" in text
    rows = read_csv(study / "results.csv")
    assert rows["resnet-56"]["preliminary"] == "True"
    assert rows["plain-32"]["n"] == "0" and rows["plain-32"]["runs"] == "1 diverged"
    assert rows["resnet-20"]["runs"] == "1 completed, 1 partial"

    # TensorBoard's HParams tab shows which sessions did not succeed.
    assert session_status(study / "plain-32" / "seed0") == "STATUS_FAILURE"
    assert session_status(study / "resnet-56" / "seed0") == "STATUS_RUNNING"
    assert session_status(study / "resnet-20" / "seed0") == "STATUS_SUCCESS"


def session_status(run: Path) -> str:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

    acc = EventAccumulator(str(run))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")["_hparams_/session_end_info"]
    status = plugin_data_pb2.HParamsPluginData.FromString(content).session_end_info.status
    return api_pb2.Status.Name(status)


def test_study_with_one_depth_gives_not_applicable(tmp_path):
    study = tmp_path / "one"
    make_run(study, "plain", 20, 0, 2.0, 9.8)
    make_run(study, "resnet", 20, 0, 1.5, 8.7)
    result = compare(study)
    assert check(result, "degradation-plain").status == "not tested"
    twin = check(result, "twin-resnet-20")
    assert twin.status == "PASS" and "untested" in twin.noise and "(1 seed)" in twin.detail
    assert result.verdict.degradation is None
    assert result.verdict.headline.startswith("Not enough")


def test_find_study_picks_the_latest_and_explains_when_none(tmp_path):
    import os

    old = make_study(tmp_path, {("plain", 20): (2.0, 9.8)}, seeds=(0,), name="old")
    new = make_study(tmp_path, {("plain", 20): (2.0, 9.8)}, seeds=(0,), name="new")
    for f in old.rglob("*.json*"):
        os.utime(f, (1e9, 1e9))
    assert find_study(tmp_path) == new
    with pytest.raises(ResexpError, match="resexp sweep"):
        find_study(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ResexpError, match="no study"):
        find_study(tmp_path / "empty")
    with pytest.raises(ResexpError, match="holds studies"):
        load_runs(tmp_path)
    with pytest.raises(ResexpError, match="run folder"):
        load_runs(new / "plain-20" / "seed0")


# ----------------------------------------------------------------------------------------------
# TensorBoard: layout and hparams in each run's own folder, read back by TensorBoard itself


def test_tensorboard_layout_and_hparams_are_readable(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.custom_scalar import layout_pb2
    from tensorboard.plugins.hparams import plugin_data_pb2

    study = make_study(tmp_path, {k: v for k, v in DEGRADATION.items() if k[1] in (20, 56)})
    before = {p for p in files_under(study) if (study / p).is_dir()}
    compare(study)
    compare(study)  # a rerun replaces its own files
    after = files_under(study)
    assert {p for p in after if (study / p).is_dir()} == before  # no new TensorBoard runs
    assert {p for p in after if p.parent == Path(".")} >= {
        Path(name) for name in ("figure6.png", "figure6.pdf", "results.csv", "results.md")
    }
    run = study / "plain-56" / "seed0"
    assert [p.name for p in run.glob("events.out.tfevents.*")] == [cmp_module.EVENTS_NAME]
    assert not list(study.glob("events.out.tfevents.*"))  # nothing at the study's root

    acc = EventAccumulator(str(run), size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    assert "custom_scalars__config__" in acc.PluginTagToContent("custom_scalars")
    layout = layout_pb2.Layout.FromString(
        acc.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0]
    )
    charts = {chart.title: list(chart.multiline.tag) for c in layout.category for chart in c.chart}
    depth56 = next(tags for title, tags in charts.items() if title.startswith("56 layers"))
    assert "plain-56" in depth56[0] and "resnet-56" in depth56[0] and "resnet-20" not in depth56[0]
    # The chart's regex selects this run's copy of its curves.
    tags = acc.Tags()["scalars"]
    import re

    assert {t for t in tags if re.match(depth56[0], t)} == {
        "figure6/plain-56/error_train",
        "figure6/plain-56/error_test",
    }
    assert len(acc.Scalars("figure6/plain-56/error_test")) == 16

    hparams = acc.PluginTagToContent("hparams")
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(hparams)
    start = plugin_data_pb2.HParamsPluginData.FromString(
        hparams["_hparams_/session_start_info"]
    ).session_start_info
    assert start.hparams["depth"].number_value == 56
    assert start.hparams["block"].string_value == "basic"
    assert start.hparams["seed"].number_value == 0
    assert {"residual", "shortcut"} <= set(start.hparams)
    final = acc.Scalars("hparams/final_train_error")
    assert len(final) == 1 and final[0].value == pytest.approx(4.05, abs=1e-4)
    assert acc.Scalars("hparams/final_test_error")[0].step == 6400


def test_tensorboard_files_go_early_in_the_sort_order(tmp_path):
    """A live TensorBoard reads event files in name order: ours must not come after training's."""
    study = make_study(tmp_path, {("plain", 20): (2.0, 9.8)}, seeds=(0,))
    run = study / "plain-20" / "seed0"
    training = run / "events.out.tfevents.1700000000.host.123.0"
    training.write_bytes(b"")
    compare(study)
    assert sorted(p.name for p in run.glob("events.out.tfevents.*"))[-1] == training.name


# ----------------------------------------------------------------------------------------------
# Real training output


@pytest.mark.slow
def test_compare_reads_real_training_output(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from resexp.cli import compose
    from resexp.train import fit

    for residual in ("false", "true"):
        fit(
            compose(
                [
                    f"output_root={tmp_path}",
                    f"data_dir={tmp_path}/data",
                    "data=synthetic",
                    "schedule=smoke",
                    "device=cpu",
                    "progress=none",
                    "name=s",
                    "depth=8",
                    f"residual={residual}",
                ]
            )
        )
    study = tmp_path / "s"
    assert find_study(tmp_path) == study
    result = compare(study)
    assert [n.arch for n in result.networks] == ["plain-8", "resnet-8"]
    plain, resnet = result.networks
    assert plain.params == resnet.params  # identity shortcuts add no parameters
    assert all(n.test_error and n.test_error.n == 1 for n in result.networks)
    assert check(result, "twin-resnet-8").status in ("PASS", "FAIL")
    assert check(result, "degradation-plain").status == "not tested"  # one depth only
    rows = read_csv(study / "results.csv")
    assert rows["plain-8"]["iterations"] == "60" and rows["plain-8"]["runs"] == "1 completed"
    assert "shorter than the paper's" in (study / "results.md").read_text().lower()
    assert len(result.figure.axes[0].get_lines()) == 2

    run = study / "resnet-8" / "seed0"
    acc = EventAccumulator(str(run))
    acc.Reload()
    assert {"error/train", "error/test", "figure6/resnet-8/error_test"} <= set(
        acc.Tags()["scalars"]
    )
    assert "_hparams_/session_start_info" in acc.PluginTagToContent("hparams")


# ----------------------------------------------------------------------------------------------
# The verdict and seed noise


def test_welch_p_matches_the_t_distribution():
    # [1, 2, 3] against [4, 5, 6]: t = -3.674 on 4 degrees of freedom, two-sided p = 0.0213.
    assert welch_p([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]) == pytest.approx(0.02131, abs=1e-4)
    assert welch_p([1.0, 2.0], [1.0, 2.0]) == pytest.approx(1.0)
    assert welch_p([1.0], [2.0, 3.0]) is None  # one seed: no test


def test_a_difference_inside_the_seed_spread_is_within_noise(tmp_path):
    study = tmp_path / "noisy"
    # plain-56 trains 0.1 points worse than plain-20 on average, with seeds 1 point apart.
    for seed, offset in enumerate((-1.0, 0.0, 1.0)):
        make_run(study, "plain", 20, seed, 5.0 + offset, 10.0 + offset / 10)
        make_run(study, "plain", 56, seed, 5.1 + offset, 12.0 + offset / 10)
        make_run(study, "resnet", 20, seed, 4.0 + offset / 10, 9.0 + offset / 10)
        make_run(study, "resnet", 56, seed, 3.0 + offset / 10, 8.0 + offset / 10)
    result = compare(study, tensorboard=False)
    degradation = check(result, "degradation-plain")
    assert degradation.status == "within noise"
    assert "Welch's t" in degradation.noise and "3 vs 3 seeds" in degradation.noise
    assert "(3 seeds)" in degradation.detail
    assert result.verdict.degradation is False  # not shown beyond the noise
    assert check(result, "degradation-test-plain").status == "PASS"  # 12 vs 10, tight seeds
    assert check(result, "depth-test-resnet").status == "PASS"
    assert "within noise" in (study / "results.md").read_text()


def test_one_seed_says_untested_and_a_failed_seed_leaves_a_finding_not_tested(tmp_path):
    study = tmp_path / "thin"
    finals = {("plain", 20): (2.0, 9.8), ("plain", 56): (4.1, 13.0),
              ("resnet", 20): (1.5, 8.7), ("resnet", 56): (0.4, 7.0)}  # fmt: skip
    for (arch, depth), (train, test) in finals.items():
        make_run(study, arch, depth, 0, train, test)
    result = compare(study, tensorboard=False)
    assert check(result, "degradation-plain").status == "PASS"
    assert "untested" in check(result, "degradation-plain").noise
    assert "not tested against seed noise" in result.verdict.headline

    make_run(study, "plain", 56, 1, 80.0, 90.0, status="failed")
    result = compare(study, tensorboard=False)
    degradation = check(result, "degradation-plain")
    assert degradation.status == "not tested"
    assert "plain-56: 1 of 2 seeds completed (1 failed)" in degradation.detail
    assert result.verdict.degradation is None
    assert result.verdict.headline.startswith("Not enough completed runs")


def test_the_headline_counts_the_checks_that_one_seed_leaves_untested(tmp_path):
    study = tmp_path / "mixed"  # three seeds at 20 and 56 layers, one at 32
    for seed in (0, 1, 2):
        make_run(study, "plain", 20, seed, 2.0 + seed / 10, 9.8)
        make_run(study, "plain", 56, seed, 4.1 + seed / 10, 13.0 + seed / 10)
        make_run(study, "resnet", 20, seed, 1.5 + seed / 10, 8.7 + seed / 10)
        make_run(study, "resnet", 56, seed, 0.4 + seed / 10, 7.0 + seed / 10)
    make_run(study, "plain", 32, 0, 3.0, 11.0)
    make_run(study, "resnet", 32, 0, 1.0, 8.0)
    result = compare(study, tensorboard=False)
    assert "untested" in check(result, "twin-resnet-32").noise
    assert "untested" not in check(result, "twin-resnet-56").noise
    headline = result.verdict.headline
    assert re.search(r"\(1 of \d+ checks have one seed a side: untested\)$", headline), headline
    assert "not tested against seed noise" not in headline


def test_a_missing_twin_is_not_tested_and_blocks_the_verdict(tmp_path):
    study = tmp_path / "no-twin"
    for seed in (0, 1):
        make_run(study, "plain", 20, seed, 2.0 + seed / 10, 9.8)
        make_run(study, "plain", 56, seed, 4.1 + seed / 10, 13.0)
        make_run(study, "resnet", 20, seed, 1.5 + seed / 10, 8.7)
        make_run(study, "resnet", 32, seed, 1.0 + seed / 10, 8.0)
    result = compare(study, tensorboard=False)
    twin = check(result, "twin-resnet-32")
    assert twin.status == "not tested" and "no plain-32 runs" in twin.detail
    assert result.verdict.fixed is None


def test_a_cifar_named_image_folder_gets_the_caveat_and_the_original_does_not(tmp_path):
    def study_on(name: str, identity: dict) -> Path:
        study = tmp_path / name
        for arch, depth in (("plain", 20), ("resnet", 20)):
            run = make_run(study, arch, depth, 0, 2.0, 9.0)
            summary = json.loads((run / "summary.json").read_text())
            summary["data"] = f"image folder {identity['root']}: 50000 train / 10000 test"
            if identity["source"] == "cifar10":
                summary["data"] = f"CIFAR-10 (torchvision) at {identity['root']}: 50000 train"
            summary["data_identity"] = identity
            (run / "summary.json").write_text(json.dumps(summary))
        return study

    jpeg = {"source": "folder", "root": "/data/cifar10-jpeg.tar.xz", "subset_or_split": False}
    text = results_md(compare(study_on("jpeg", jpeg), tensorboard=False))
    assert "Not the original CIFAR-10 (these runs: folder at /data/cifar10-jpeg.tar.xz)" in text
    original = {"source": "cifar10", "root": "/data/cifar10", "subset_or_split": False}
    assert "Not the original" not in results_md(
        compare(study_on("original", original), tensorboard=False)
    )
    subset = {**original, "subset_or_split": True}
    assert "Not the original" in results_md(compare(study_on("subset", subset), tensorboard=False))


def results_md(result) -> str:
    return (result.study / "results.md").read_text()
