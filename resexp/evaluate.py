"""What is this network's test error? Trained weights in; error, loss, per-class error and the
confusion matrix out (a table, ``evaluation.json`` and ``confusion.png``).

Weights come from a resexp run (its latest checkpoint), every run of a study, a resexp
``checkpoint.pt``, or a checkpoint of akamaster/pytorch_resnet_cifar10, the most used published
CIFAR-10 ResNets (ResNet-20/32/44/56/110/1202 with option A shortcuts, He et al. 2015, sec. 4.2),
so a run can be compared with them on the same images.

Their networks are resexp's ``CifarResNet`` up to two conventions (their ``resnet.py``):
the names (``linear`` for resexp's ``fc``; ``module.`` in front of every key, as they save a
``DataParallel`` model, ``trainer.py``), and where option A's zero channels go. resexp appends
them (``F.pad(x, (0, 0, 0, 0, 0, extra))``); they pad ``planes // 4`` on each side:

    F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes//4, planes//4), "constant", 0)

so the identity of stage 1's 16 channels sits in channels 8..23 of stage 2, and stage 2's 32 in
channels 16..47 of stage 3. The residual stream of stages 2 and 3 is thus the same set of channels
in another order, and ``from_akamaster`` permutes the weights that write or read it (each block's
conv2 and bn2 outputs, each conv1 input, the classifier's input) so that resexp's padding lines up.
A permutation changes no value, only where it is stored: the imported network computes what
theirs does (tests/test_evaluate.py compares logits), and resexp's model stays as the paper
describes it, so lesion, response and gradient analyses run on imported weights unchanged.

Their inputs are normalised as in their ``trainer.py``: ``ToTensor()`` (x / 255) then
``Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])``, per channel, not resexp's
per-pixel mean; each evaluation states which normalisation it used. Logits are always fp32.
"""

from __future__ import annotations

import itertools
import logging
import pickle
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import Tensor

from resexp.config import data_for_run, explicit_keys
from resexp.data import eval_batches, load_data, mean_std
from resexp.errors import ConfigError, ResexpError, one_line
from resexp.models import WIDTHS, CifarResNet, ResNet, build_model, count_parameters
from resexp.rundir import RunDir, write_json
from resexp.runtime import Runtime, float64_device, resolve

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
RESULT_JSON = "evaluation.json"
CONFUSION_PNG = "confusion.png"
OUT_FOLDER = "evaluation"  # <run>/evaluation/, <study>/evaluation/

# The keys of the config that name an architecture: given on the command line, they are claims
# about the weights (refused when false) for one network, and a filter for a study.
ARCH_KEYS = ("depth", "residual", "shortcut", "block", "family", "stem")

AKAMASTER = "akamaster/pytorch_resnet_cifar10"
# Their trainer.py: transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
# after ToTensor(), i.e. on x / 255 (ImageNet's channel statistics, not CIFAR-10's).
AKAMASTER_MEAN = (0.485, 0.456, 0.406)
AKAMASTER_STD = (0.229, 0.224, 0.225)
# Their README, "Test err(this impl.)", for the weights in their pretrained_models/.
AKAMASTER_ERRORS = {20: 8.27, 32: 7.37, 44: 6.90, 56: 6.61, 110: 6.32}
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                   "truck")  # fmt: skip


# ----------------------------------------------------------------------------------------------
# akamaster/pytorch_resnet_cifar10's checkpoints


def stream_orders() -> list[Tensor]:
    """For each stage, the akamaster channel that holds resexp's channel j of the residual stream.

    Stage 1: the same channels. Each later stage: their option A puts the previous stage's
    channels after ``planes // 4`` zeros, so resexp's first channels (the identity, in the order
    the previous stage had) are theirs at ``planes // 4 + previous order``; the zero-padded rest
    follow in their own order.
    """
    orders = [torch.arange(WIDTHS[0])]
    for previous, planes in itertools.pairwise(WIDTHS):
        front = planes // 4  # their F.pad(..., (0, 0, 0, 0, planes//4, planes//4))
        padded = [c for c in range(planes) if not front <= c < front + previous]
        orders.append(torch.cat([front + orders[-1], torch.tensor(padded)]))
    return orders


_AKAMASTER_KEY = re.compile(r"layer([1-3])\.(\d+)\.(conv1|conv2|bn1|bn2)\.(\w+)")


def _their_key(key: str) -> str:
    """Their key without ``module.`` (a DataParallel model's) and ``compressible_`` (a later
    revision of their resnet.py names conv1, conv2 and linear so)."""
    return key.removeprefix("module.").replace("compressible_", "")


def akamaster_keys(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """One of their state dicts with each key as ``_their_key`` leaves it."""
    return {_their_key(k): v for k, v in state_dict.items()}


def akamaster_depth(state_dict: Mapping[str, Any], where: str) -> int:
    """6n+2 from the blocks per stage of one of their state dicts (``akamaster_keys`` applied)."""
    found = [m for k in state_dict if (m := _AKAMASTER_KEY.fullmatch(k))]
    counts = [len({int(m.group(2)) for m in found if m.group(1) == stage}) for stage in "123"]
    if not counts[0] or len(set(counts)) != 1:
        raise ResexpError(
            f"{where} is not one of {AKAMASTER}'s ResNets: they have three stages of n blocks "
            f"each (layer1.0 .. layer3.{{n-1}}), this one has {counts[0]}, {counts[1]} and "
            f"{counts[2]}"
        )
    return 6 * counts[0] + 2


def from_akamaster(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """One of their state dicts (keys as ``akamaster_keys`` leaves them), for ``CifarResNet``
    with option A: renamed, and stages 2 and 3 permuted so that resexp's padding lines up."""
    orders = stream_orders()
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith("linear."):  # global average pooling keeps stage 3's channel order
            key = "fc." + key.removeprefix("linear.")
            value = value[:, orders[2]] if key == "fc.weight" else value
        elif m := _AKAMASTER_KEY.fullmatch(key):
            stage, block, layer, name = int(m.group(1)) - 1, int(m.group(2)), m.group(3), m.group(4)
            if layer == "conv1":  # reads the stream; a stage's first block reads the last stage's
                value = value[:, orders[stage - 1 if block == 0 and stage else stage]]
            elif layer in ("conv2", "bn2") and name != "num_batches_tracked":  # writes it
                value = value[orders[stage]]
        out[key] = value.clone()
    return out


# ----------------------------------------------------------------------------------------------
# Reading weights: what they are, checked against what the user says they are


@dataclass
class Weights:
    """A trained network, where it came from, and how its inputs must be normalised."""

    model: ResNet  # on the CPU, in eval mode
    kind: str  # "resexp" | "akamaster"
    label: str  # resnet-20/seed0, or the file's name
    path: Path  # the checkpoint read
    out_dir: Path  # where its results go unless --out says otherwise
    arch: dict[str, Any]  # depth, residual, shortcut, block (and the params)
    data: dict | None = None  # a resexp run's own data config (evaluated on it by default)
    iteration: int | None = None
    reference: dict[str, Any] = field(default_factory=dict)  # the error it was reported with


def check_claims(actual: Mapping[str, Any], claims: Mapping[str, Any], what: str) -> None:
    """Refuse weights that are not what the command line says they are, naming each difference.

    Residual weights into a plain net have exactly the same shapes (option A), so only the
    recorded architecture can tell them apart: the claim is refused, never loaded silently.
    """
    problems = []
    for key, value in claims.items():
        if key not in actual or actual[key] == value:
            continue
        if key == "residual":
            have = "residual" if actual[key] else "plain"
            want = "residual" if value else "plain"
            problems.append(
                f"{what} holds {have} weights, not {want} ones (residual={str(value).lower()}): "
                f"a {want} net has the same parameter shapes but computes something else"
            )
        else:
            problems.append(f"{what} has {key}={actual[key]}, not {key}={value}")
    if problems:
        raise ConfigError(
            "; ".join(problems) + ". Drop those overrides: the weights say what they are."
        )


def read_checkpoint(path: Path) -> Any:
    """A checkpoint file's contents, unpickled with ``weights_only`` (no code from the file
    runs); NumPy arrays are allowed, as resexp's own checkpoints hold NumPy's random state."""
    if not path.is_file():
        raise ResexpError(
            f"{path} is not a file: give a run folder, a study folder or a checkpoint"
        )
    multiarray = (np._core if hasattr(np, "_core") else np.core).multiarray  # NumPy 2 or 1
    # What resexp's checkpoints hold besides tensors: NumPy's random state, torch's version.
    allowed = [multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32)),
               torch.torch_version.TorchVersion]  # fmt: skip
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds on a file that is not one of its own
        if not isinstance(e, pickle.UnpicklingError) or "Weights only load failed" not in str(e):
            raise ResexpError(f"{path} is not a PyTorch checkpoint ({one_line(e)})") from None
    try:  # a checkpoint, refused by weights_only: name what it holds
        found = ", ".join(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # a file in the pre-1.6 format cannot be listed
        found = "see torch.serialization.get_unsafe_globals_in_checkpoint"
    raise ResexpError(
        f"{path} holds Python objects other than tensors and numbers ({found}), which resexp "
        "does not unpickle (that could run code from the file); save its state_dict alone"
    )


def weights_from_file(path: Path, claims: Mapping[str, Any]) -> Weights:
    """A resexp checkpoint (it holds its config) or one of akamaster's (``state_dict``, or the
    state dict itself); anything else is refused, saying what was expected."""
    state = read_checkpoint(path)
    out_dir = path.parent / f"{path.stem}-{OUT_FOLDER}"
    if isinstance(state, dict) and "model" in state and isinstance(state.get("config"), dict):
        return _resexp_weights(state, path, path.name, out_dir, claims)
    tensors = state.get("state_dict", state) if isinstance(state, dict) else None
    if isinstance(tensors, dict) and any(
        isinstance(k, str) and _their_key(k) in ("conv1.weight", "linear.weight") for k in tensors
    ):
        return _akamaster_weights(state, tensors, path, out_dir, claims)
    found = (
        ", ".join(list(map(str, state))[:6]) if isinstance(state, dict) else type(state).__name__
    )
    raise ResexpError(
        f"{path} is not a checkpoint resexp can read (it holds: {found}). Expected a resexp "
        f"checkpoint.pt (keys model and config) or one of {AKAMASTER}'s (a dict with "
        "'state_dict', keys module.conv1.weight ... module.linear.bias)"
    )


def weights_from_run(run: Any, claims: Mapping[str, Any]) -> Weights:
    """The latest readable checkpoint of a resexp run (``resexp.compare.runs.Run``)."""
    state = run.dir.load_checkpoint()
    if state is None:
        raise ResexpError(f"{run.path} has no checkpoint yet; train it first")
    state.setdefault("config", run.config)
    return _resexp_weights(state, run.dir.checkpoint_file, run.label, run.path / OUT_FOLDER, claims)


def _resexp_weights(
    state: dict, path: Path, label: str, out_dir: Path, claims: Mapping[str, Any]
) -> Weights:
    config = state["config"]
    arch = {key: config[key] for key in ARCH_KEYS if key in config}
    check_claims(arch, claims, str(path))
    extra = {key: arch[key] for key in ("family", "stem") if key in arch}
    try:
        model = build_model(
            arch["depth"], arch["residual"], arch["shortcut"], arch["block"], **extra
        )
        model.load_state_dict(state["model"])
    except (KeyError, ValueError, RuntimeError) as e:
        raise ResexpError(
            f"{path}: its weights do not fit the network its config describes ({one_line(e)})"
        ) from None
    summary = RunDir(path.parent).read_summary() or {}
    iteration, reference = state.get("iteration"), {}
    if summary.get("test_error") is not None and summary.get("evaluated_at") == iteration:
        reference = {
            "test_error": summary["test_error"],
            "at_iteration": iteration,
            "source": "the run's summary.json (its last evaluation during training)",
        }
    return Weights(
        model=model.eval(),
        kind="resexp",
        label=label,
        path=path,
        out_dir=out_dir,
        arch={**arch, "params": count_parameters(model)},
        data=dict(config["data"]) if isinstance(config.get("data"), dict) else None,
        iteration=iteration,
        reference=reference,
    )


def _akamaster_weights(
    state: dict, tensors: dict, path: Path, out_dir: Path, claims: Mapping[str, Any]
) -> Weights:
    tensors = akamaster_keys(tensors)
    where = f"{path} ({AKAMASTER} format)"
    if any(".shortcut." in k for k in tensors):
        raise ConfigError(
            f"{where} has option B shortcuts (1x1 projections: "
            f"{next(k for k in tensors if '.shortcut.' in k)}); its published weights and "
            "resexp's import use option A (zero padding, no parameters)"
        )
    depth = akamaster_depth(tensors, where)
    actual = {"depth": depth, "residual": True, "shortcut": "A", "block": "basic",
              "family": "cifar", "stem": "cifar"}  # fmt: skip
    if claims.get("residual") is False:
        raise ConfigError(
            f"{where} holds residual weights ({AKAMASTER} trained residual networks only), not "
            "plain ones (residual=false): a plain net has the same parameter shapes but computes "
            "something else. Drop residual=false."
        )
    check_claims(actual, claims, where)
    model = CifarResNet(depth, residual=True, shortcut="A", block="basic")
    expected = model.state_dict()
    for key, value in expected.items():  # files from PyTorch < 0.4.1 have no BN step counters
        if key.endswith("num_batches_tracked"):
            tensors.setdefault(key, torch.zeros_like(value))
    ours = {("linear." + k[3:] if k.startswith("fc.") else k) for k in expected}
    missing, unexpected = sorted(ours - set(tensors)), sorted(set(tensors) - ours)
    if missing or unexpected:
        raise ResexpError(
            f"{where} does not hold a ResNet-{depth} as their resnet.py builds it: "
            + "; ".join(
                f"{what}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
                for what, keys in (("missing", missing), ("unexpected", unexpected))
                if keys
            )
        )
    mapped = from_akamaster({k: v.float() if v.is_floating_point() else v
                             for k, v in tensors.items()})  # fmt: skip
    wrong = [f"{k} {tuple(v.shape)} (expected {tuple(expected[k].shape)})"
             for k, v in mapped.items() if v.shape != expected[k].shape]  # fmt: skip
    if wrong:
        raise ResexpError(f"{where}: tensors of the wrong shape: {', '.join(wrong[:3])}")
    model.load_state_dict(mapped)
    reference: dict[str, Any] = {}
    best = state.get("best_prec1")
    if best is not None:
        reference["best_prec1"] = float(best)
        reference["test_error_from_best_prec1"] = round(100.0 - float(best), 4)
    if depth in AKAMASTER_ERRORS:
        reference["published_test_error"] = AKAMASTER_ERRORS[depth]
        reference["source"] = f"{AKAMASTER} README, for the weights in its pretrained_models/"
    return Weights(
        model=model.eval(),
        kind="akamaster",
        label=path.name,
        path=path,
        out_dir=out_dir,
        arch={**actual, "params": count_parameters(model)},
        reference=reference,
    )


# ----------------------------------------------------------------------------------------------
# The evaluation


@torch.no_grad()
def confusion_and_loss(
    model: torch.nn.Module, batches: Iterable[tuple[Tensor, Tensor]], num_classes: int
) -> tuple[Tensor, float]:
    """The confusion matrix (rows: true class, columns: the network's output with the highest
    logit) and the mean cross-entropy over ``batches`` (``data.eval_batches``: the single
    original view of each image), in fp32 (as ``resexp.train.error_and_loss``, whose error this
    matrix's off-diagonal sum gives)."""
    model.eval()
    fc = model.fc  # a resexp network's (or its compiled wrapper's) classifier
    assert isinstance(fc, torch.nn.Linear)
    outputs, device = fc.out_features, fc.weight.device
    confusion = torch.zeros(num_classes * outputs, dtype=torch.long, device=device)
    wide = float64_device(device)  # MPS has no float64
    loss = torch.zeros((), dtype=torch.float64, device=wide)
    for xb, yb in batches:
        logits = model(xb).float()  # (B, outputs); fp32 weights, no autocast
        loss += F.cross_entropy(logits, yb, reduction="sum").to(wide).double()
        confusion += torch.bincount(yb * outputs + logits.argmax(1), minlength=len(confusion))
    return confusion.view(num_classes, outputs).cpu(), loss.item() / int(confusion.sum())


@dataclass
class Evaluation:
    """One network on one set of images: everything ``evaluation.json`` holds."""

    weights: Weights
    data: Any  # resexp.data.ImageData
    split: str  # "test" | "validation"
    normalization: dict[str, Any]
    device: str
    confusion: Tensor  # (classes, outputs) int64
    loss: float
    notes: list[str]
    out_dir: Path

    @property
    def images(self) -> int:
        return int(self.confusion.sum())

    @property
    def error(self) -> float:
        """Error (%): the images whose highest logit is not their class."""
        return 100.0 * (1 - int(self.confusion.diagonal().sum()) / self.images)

    def per_class(self) -> list[dict[str, Any]]:
        """Each class: its images, its error (%) and the output it is most often taken for."""
        rows = []
        names = self.output_names()
        for c, counts in enumerate(self.confusion.tolist()):
            n = sum(counts)
            wrong = [(k, v) for k, v in enumerate(counts) if k != c and v]
            worst = max(wrong, key=lambda kv: kv[1], default=None)
            rows.append({
                "class": self.data.classes[c],
                "images": n,
                "error": 100.0 * (n - counts[c]) / n if n else None,
                "most_confused_with": names[worst[0]] if worst else None,
                "confused_images": worst[1] if worst else 0,
            })  # fmt: skip
        return rows

    def output_names(self) -> list[str]:
        """The network's outputs, named by the data's classes where the data has them."""
        outputs = self.confusion.shape[1]
        return [*self.data.classes, *(f"output{k}" for k in range(len(self.data.classes), outputs))]

    def to_json(self) -> dict[str, Any]:
        w = self.weights
        return {
            "format_version": FORMAT_VERSION,
            "weights": {
                "label": w.label,
                "kind": w.kind,
                "path": str(w.path.absolute()),
                "iteration": w.iteration,
                **w.arch,
            },
            "data": {
                "description": self.data.description,
                "split": self.split,
                "images": self.images,
                "classes": self.data.classes,
                "identity": self.data.identity,
            },
            "normalization": self.normalization,
            "device": self.device,
            "precision": "fp32",
            "test_error": self.error,
            "test_loss": self.loss,
            "per_class": self.per_class(),
            "confusion": {
                "rows": "true class (data.classes)",
                "columns": "predicted: the output with the highest logit",
                "columns_named": self.output_names(),
                "matrix": self.confusion.tolist(),
            },
            "reference": w.reference,
            "notes": self.notes,
        }


def normalization_for(weights: Weights, data: Any, data_cfg: Any) -> tuple[Tensor, Tensor, dict]:
    """The constants the network was trained with, in uint8 units, and their description."""
    if weights.kind == "akamaster":
        mean = torch.tensor(AKAMASTER_MEAN).view(3, 1, 1) * 255  # ToTensor() divides by 255
        std = torch.tensor(AKAMASTER_STD).view(3, 1, 1) * 255
        return mean, std, {
            "kind": "channel_fixed",
            "mean": list(AKAMASTER_MEAN),
            "std": list(AKAMASTER_STD),
            "scale": "x / 255, then (x - mean) / std per channel",
            "source": f"{AKAMASTER} trainer.py, transforms.Normalize, as they were trained",
        }  # fmt: skip
    mode = str(data_cfg.normalize)
    mean, std = mean_std(data.train_x, mode)
    what = {
        "pixel_mean": "per-pixel mean of the training images subtracted (He et al. 2015, sec. 4.2)",
        "channel_std": "per-channel mean and std of the training images",
    }[mode]
    return mean, std, {
        "kind": mode,
        "description": what,
        "computed_on": "the training split of the data evaluated, as resexp's training does "
        "(on a run's own data: its training constants)",
    }  # fmt: skip


def evaluate_weights(
    weights: Weights, data: Any, data_cfg: Any, runtime: Runtime, batch_size: int, out_dir: Path
) -> Evaluation:
    """Evaluate one network on ``data``'s test (or validation) images, in fp32 (no autocast)."""
    outputs = weights.model.fc.out_features
    if len(data.classes) > outputs:
        raise ResexpError(
            f"{weights.label} has {outputs} outputs, the data has {len(data.classes)} classes "
            f"({data.description}): choose data with at most {outputs} classes"
        )
    mean, std, normalization = normalization_for(weights, data, data_cfg)
    device = runtime.device
    x, y = data.test_x.to(device), data.test_y.to(device)
    batches = eval_batches(x, y, batch_size, mean, std, memory_format=runtime.memory_format)
    confusion, loss = confusion_and_loss(runtime.prepare(weights.model), batches, len(data.classes))
    weights.model.cpu()
    notes = []
    if weights.kind == "akamaster" and tuple(data.classes) != CIFAR10_CLASSES[: len(data.classes)]:
        notes.append(
            "these weights were trained on CIFAR-10, whose classes are "
            f"{', '.join(CIFAR10_CLASSES)} in that order; this data's are "
            f"{', '.join(data.classes[:10])}: its labels may mean something else to the network"
        )
    if weights.kind == "akamaster" and data.identity.get("source") != "cifar10":
        notes.append(
            "not the original CIFAR-10 (data=cifar10): the published errors do not apply as such"
        )
    if weights.kind == "resexp" and weights.data is not None:
        own = {k: weights.data.get(k) for k in ("source", "root", "train_size", "test_size")}
        if any(own[k] != data_cfg.get(k) for k in own):
            notes.append("not the data this run was trained and tested on; normalised with the "
                         "training split of this data")  # fmt: skip
    return Evaluation(
        weights=weights,
        data=data,
        split="validation" if data_cfg.get("validation") else "test",
        normalization=normalization,
        device=str(device),
        confusion=confusion,
        loss=loss,
        notes=notes,
        out_dir=out_dir,
    )


# ----------------------------------------------------------------------------------------------
# From a path to results


def evaluate_path(
    path: Path, cfg: Any, overrides: Sequence[str], out: Path | None = None
) -> list[Evaluation]:
    """Evaluate a run folder, every run of a study, or a checkpoint file, with the composed
    config ``cfg`` (the device, the data, the evaluation batch) and the command line's
    ``overrides`` (architecture keys there are claims about the weights, or a study's filter).
    Writes each evaluation's JSON and PNG; returns them, in order."""
    path = Path(path)
    if not path.exists():
        raise ResexpError(f"{path} does not exist: give a run folder, a study folder or a file")
    keys = explicit_keys(overrides)
    claims = {k: cfg[k] for k in ARCH_KEYS if k in keys and k in cfg}
    if path.is_file():
        found = [weights_from_file(path, claims)]
        study = None
    else:
        found, study = _weights_in_folder(path, claims)
    runtime = resolve(cfg)  # evaluation only: never compiled

    loaded: dict[str, tuple[Any, Any]] = {}
    results = []
    for weights in found:
        data_cfg = data_for_run(weights.data, cfg, keys)  # its own unless data=
        key = OmegaConf.to_yaml(data_cfg, resolve=True, sort_keys=True)  # each data set once
        if key not in loaded:
            loaded[key] = (load_data(data_cfg), data_cfg)
        data, data_cfg = loaded[key]
        if out is None:
            out_dir = weights.out_dir
        elif study is None:
            out_dir = out
        else:
            out_dir = out / weights.path.parent.relative_to(study)
        batch = cfg.schedule.eval_batch_size
        result = evaluate_weights(weights, data, data_cfg, runtime, batch, out_dir)
        write_evaluation(result)
        results.append(result)
    if study is not None:
        write_study_summary(results, out if out is not None else study / OUT_FOLDER, study)
    return results


def _weights_in_folder(path: Path, claims: Mapping[str, Any]) -> tuple[list[Weights], Path | None]:
    """One run's weights, or those of every run of a study matching the claims."""
    from resexp.analysis.common import find_runs  # here: resexp.analysis imports every analysis

    runs = find_runs(path, unfinished=True)
    if RunDir(path).is_trained():
        return [weights_from_run(runs[0], claims)], None
    if not runs:
        raise ResexpError(
            f"no runs with a checkpoint under {path}: expected a run folder (config.yaml and "
            "checkpoint.pt) or a study of them, e.g. outputs/degradation"
        )
    chosen = [r for r in runs if all(r.config.get(k) == v for k, v in claims.items())]
    if not chosen:
        have = ", ".join(sorted({r.arch for r in runs}))
        wanted = " ".join(f"{k}={v}" for k, v in claims.items())
        raise ResexpError(f"no run of {path} has {wanted}; it holds {have}")
    return [weights_from_run(r, {}) for r in chosen], path


# ----------------------------------------------------------------------------------------------
# Writing: evaluation.json, confusion.png, the terminal table


def write_evaluation(result: Evaluation) -> None:
    """``evaluation.json`` and ``confusion.png`` in the result's folder, created if need be."""
    write_json(result.out_dir / RESULT_JSON, result.to_json())
    plot_confusion(result).savefig(result.out_dir / CONFUSION_PNG, dpi=120)


def write_study_summary(results: list[Evaluation], out_dir: Path, study: Path) -> None:
    """One line per run of a study, with where its full evaluation lies."""
    write_json(out_dir / RESULT_JSON, {
        "format_version": FORMAT_VERSION,
        "study": str(study.absolute()),
        "runs": [{
            "label": r.weights.label,
            **{k: r.weights.arch.get(k) for k in ("depth", "residual", "shortcut", "block")},
            "iteration": r.weights.iteration,
            "test_error": r.error,
            "test_loss": r.loss,
            "recorded_test_error": r.weights.reference.get("test_error"),
            "data": r.data.description,
            "evaluation": str((r.out_dir / RESULT_JSON).absolute()),
        } for r in results],
    })  # fmt: skip


def plot_confusion(result: Evaluation):
    """The confusion matrix as a heat map of each true class's shares, with the counts."""
    from matplotlib.figure import Figure

    counts = result.confusion.numpy()
    rows = counts.sum(1, keepdims=True).clip(min=1)
    classes, outputs = counts.shape
    size = max(4.0, 0.55 * outputs + 2)
    fig = Figure(figsize=(size + 1, size), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(100 * counts / rows, cmap="Blues", vmin=0, vmax=100)
    fig.colorbar(image, ax=ax, label="% of the true class", shrink=0.8)
    if outputs <= 20:
        for i in range(classes):
            for j in range(outputs):
                if counts[i, j]:
                    dark = counts[i, j] / rows[i, 0] > 0.5
                    ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if dark else "black")  # fmt: skip
        ax.set_xticks(range(outputs), result.output_names(), rotation=45, ha="right")
        ax.set_yticks(range(classes), result.data.classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true class")
    arch = result.weights.arch
    name = f"{'ResNet' if arch.get('residual') else 'plain'}-{arch.get('depth')}"
    ax.set_title(
        f"{result.weights.label} ({name}): {result.split} error {result.error:.2f}%\n"
        f"{result.data.description}",
        fontsize=8,
    )
    return fig


def print_report(results: list[Evaluation]) -> None:
    """One table per network (a study: one line per run), and where the files went."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if len(results) > 1:
        table = Table(title="Evaluation", title_justify="left")
        for column in ("run", "iteration", "error %", "loss", "recorded %", "data"):
            table.add_column(column, justify="right" if column != "run" else "left")
        for r in results:
            recorded = r.weights.reference.get("test_error")
            table.add_row(
                r.weights.label,
                f"{r.weights.iteration:,}" if r.weights.iteration is not None else "",
                f"{r.error:.2f}",
                f"{r.loss:.4f}",
                f"{recorded:.2f}" if recorded is not None else "",
                r.data.identity.get("source", ""),
            )
        console.print(table)
    for r in results:
        if len(results) == 1:
            _print_one(r, console)
        console.print(f"wrote {r.out_dir / RESULT_JSON}, {r.out_dir / CONFUSION_PNG}")


def _print_one(r: Evaluation, console: Any) -> None:
    from rich.table import Table

    w = r.weights
    console.print(
        f"[bold]{w.label}[/bold] ({w.kind}, depth {w.arch.get('depth')}, "
        f"{'residual' if w.arch.get('residual') else 'plain'}, shortcut "
        f"{w.arch.get('shortcut')}, {w.arch.get('params'):,} parameters"
        + (f", iteration {w.iteration:,}" if w.iteration is not None else "")
        + ")",
        highlight=False,
    )
    console.print(f"data: {r.data.description}", highlight=False)
    console.print(f"normalisation: {normalization_line(r.normalization)}", highlight=False)
    table = Table(title_justify="left")
    for column in ("class", "images", "error %", "most often taken for"):
        table.add_column(column, justify="right" if column in ("images", "error %") else "left")
    for row in r.per_class():
        error = row["error"]
        taken = (f"{row['most_confused_with']} ({row['confused_images']})"
                 if row["most_confused_with"] else "")  # fmt: skip
        table.add_row(row["class"], str(row["images"]),
                      "" if error is None else f"{error:.2f}", taken)  # fmt: skip
    table.add_section()
    table.add_row("all", str(r.images), f"{r.error:.2f}", f"loss {r.loss:.4f} (fp32, {r.device})")
    console.print(table)
    if w.reference:
        console.print(f"reference: {reference_line(w.reference)}", highlight=False)
    for note in r.notes:
        console.print(f"[yellow]note:[/yellow] {note}", highlight=False)


def normalization_line(n: dict[str, Any]) -> str:
    """The normalisation an evaluation used, in one line."""
    if n["kind"] == "channel_fixed":
        return f"x / 255, then per channel mean {n['mean']}, std {n['std']} ({n['source']})"
    return f"{n['description']}, computed on the training split of this data ({n['kind']})"


def reference_line(reference: dict[str, Any]) -> str:
    """The error the weights were reported with, to read beside the one just measured."""
    parts = []
    if "published_test_error" in reference:
        parts.append(f"{reference['published_test_error']:.2f}% published ({AKAMASTER} README)")
    if "best_prec1" in reference:
        parts.append(f"{reference['test_error_from_best_prec1']:.2f}% from the file's best_prec1")
    if parts:
        return "; ".join(parts)
    return (f"{reference['test_error']:.2f}% recorded at iteration {reference['at_iteration']:,} "
            "(summary.json)")  # fmt: skip
