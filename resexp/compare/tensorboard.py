"""A study in TensorBoard: Figure 6 (He et al. 2015) as custom-scalar charts, and each run's
hparams, written through TensorBoard's own writer (torch's SummaryWriter)."""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from resexp.compare.runs import Network, Run
from resexp.rundir import atomic_write
from resexp.tracking import file_writer, session_end

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

# Early in the sort order on purpose: TensorBoard reads a run's event files in name order and
# assumes older files never change, so a newer-named file here would stop a live TensorBoard
# from following a run that is still training.
EVENTS_NAME = "events.out.tfevents.0000000000.resexp-compare"  # in each run's folder
EVENTS_GLOB = "events.out.tfevents.*.resexp-compare"
LAYOUT_EVENTS = "events.out.tfevents.0000000000.resexp-layout"  # in the study folder
HPARAMS = ("depth", "residual", "seed", "block", "shortcut", "arch", "status")  # Run properties
Planned = tuple[str, int, bool]  # a network: arch, depth, residual


def tensorboard_layout(networks: list[Planned]) -> dict:
    """A custom-scalars layout (torch's dict form): the two panels, then one chart per depth.

    The layout's charts select tags, not runs, so each run carries a copy of its curves under
    ``figure6/<arch>/error_{train,test}`` (written live by the run, and by compare for runs
    that predate that): a chart then shows exactly the runs of its networks.
    """

    def tags(archs: list[str]) -> list[str]:
        names = "|".join(re.escape(a).replace("\\-", "-") for a in archs)  # keep plain-56 readable
        return [rf"^figure6/({names})/error_(train|test)$"]

    panels = {}
    for residual, kind in ((False, "plain"), (True, "residual")):
        archs = [arch for arch, _, is_residual in networks if is_residual == residual]
        if archs:
            panels[f"{kind} nets: training and test error %"] = ["Multiline", tags(archs)]
    by_depth = {
        f"{d} layers: plain vs residual, error %": [
            "Multiline",
            tags([arch for arch, depth, _ in networks if depth == d]),
        ]
        for d in sorted({depth for _, depth, _ in networks})
    }
    return {
        "Figure 6 (He et al. 2015)": panels,
        "plain vs residual, by depth": by_depth,
        "all runs": {
            "error/train and error/test %": ["Multiline", [r"^error/(train|test)$"]],
            "loss/train and loss/test": ["Multiline", [r"^loss/(train|test)$"]],
        },
    }


def write_study_layout(study: Path, networks: list[Planned]) -> Path:
    """Write the custom-scalars layout into the study folder itself, so that TensorBoard shows
    the plain-versus-residual charts from a sweep's first minute (before any compare)."""
    with _events_file(study / LAYOUT_EVENTS) as writer:
        writer.add_custom_scalars(tensorboard_layout(networks))
    return study / LAYOUT_EVENTS


def write_tensorboard(runs: list[Run], networks: list[Network]) -> list[Path]:
    """Write each run's compare events file (layout, hparams, curve copies); return the paths.

    Each file replaces the one an earlier compare wrote, so reruns leave one file per run, and
    nothing is written outside the run folders (no extra TensorBoard runs).
    """
    from torch.utils.tensorboard.summary import hparams

    layout = tensorboard_layout([(n.arch, n.depth, n.residual) for n in networks])
    values = {r.path: {key: getattr(r, key) for key in HPARAMS} for r in runs}
    domains = {key: sorted({v[key] for v in values.values()}) for key in HPARAMS if key != "seed"}
    for run in runs:
        final = run.final or {}
        metrics = {"hparams/final_train_error": final.get("train_error"),
                   "hparams/final_test_error": final.get("test_error")}  # fmt: skip
        experiment, start, end = hparams(values[run.path], metrics, domains)
        live = bool(run.summary.get("tensorboard_figure6_tags"))  # written by the run
        for old in run.path.glob(EVENTS_GLOB):
            old.unlink()
        with _events_file(run.path / EVENTS_NAME) as writer:
            writer.add_custom_scalars(layout)
            for summary in (experiment, start, session_end(end, run.status)):
                file_writer(writer).add_summary(summary)
            if not live:  # a run that predates the live figure6/ tags: copies of its curves
                for kind, rows in (("train", run.train_curve), ("test", run.curve)):
                    for row in rows:
                        tag = f"figure6/{run.arch}/error_{kind}"
                        writer.add_scalar(tag, row[f"{kind}_error"], int(row["iteration"]))
            if final:
                for tag, value in metrics.items():
                    writer.add_scalar(tag, value, int(final.get("iteration", 0)))
    return [run.path / EVENTS_NAME for run in runs]


@contextmanager
def _events_file(path: Path) -> Iterator[SummaryWriter]:
    """A SummaryWriter whose events file ends up at ``path``, whole: TensorBoard's writer names
    its files by clock and host, so it writes into a temporary folder, then ``atomic_write``."""
    from torch.utils.tensorboard import SummaryWriter

    with tempfile.TemporaryDirectory(prefix="resexp-tensorboard-") as tmp:
        writer = SummaryWriter(tmp)
        try:
            yield writer
        finally:
            writer.close()
        (written,) = Path(tmp).glob("events.out.tfevents.*")
        data = written.read_bytes()
    atomic_write(path, lambda f: f.write(data), binary=True)
