"""Image data sets as uint8 tensors, and their augmentation and batching on the device.

Sources: CIFAR-10 and CIFAR-100 in torchvision's python format (downloaded when absent), an
image-folder tree ``ROOT/{train,test}/<class>/*.png|jpg`` or a tar archive of one, and generated
images with a learnable class structure for smoke runs. Decoded images are cached as one
``torch.save`` file.

Preprocessing and augmentation follow He et al. 2015, "Deep Residual Learning for Image
Recognition", sec. 4.2: the per-pixel mean of the training images is subtracted; a training image
is padded by 4 pixels on each side and a random 32x32 crop is taken from it or its horizontal flip;
a test image is used as its single original 32x32 view.

The data path follows KellerJordan/cifar10-airbench: the whole set lives on the device as one uint8
tensor, and each batch is cropped, flipped and normalised there, with no DataLoader and no worker
processes; a step never waits on the host.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import shutil
import tarfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from filelock import FileLock, Timeout
from torch import Tensor

from resexp.errors import DataError, one_line
from resexp.rundir import atomic_write

log = logging.getLogger(__name__)

SOURCES = ("cifar10", "folder", "synthetic", "cifar100")
IMAGE_SIZE = 32  # CIFAR-10's; the networks of He et al. 2015, sec. 4.2 take 32x32 inputs
CIFAR10_FOLDER = "cifar-10-batches-py"  # torchvision's layout of the python version
CIFAR10_TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR100_FOLDER = "cifar-100-python"  # torchvision's layout: train, test and meta pickles
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
ARCHIVE_SUFFIXES = (".tar.gz", ".tar.xz", ".tgz", ".tar")
SYNTHETIC_SIZES = (2000, 500)  # train, test images when data.train_size / data.test_size are unset


@dataclass
class ImageData:
    """A train and a test (or validation) set of uint8 images with int64 labels."""

    train_x: Tensor  # (N, 3, 32, 32) uint8
    train_y: Tensor  # (N,) int64
    test_x: Tensor  # (M, 3, 32, 32) uint8
    test_y: Tensor  # (M,) int64
    classes: list[str]
    description: str  # one line for logs and summaries
    identity: dict[str, Any] = field(default_factory=dict)  # what it is: see data_identity()

    def to(self, device: torch.device | str) -> ImageData:
        """The same data with its tensors on ``device``."""
        return replace(
            self,
            train_x=self.train_x.to(device),
            train_y=self.train_y.to(device),
            test_x=self.test_x.to(device),
            test_y=self.test_y.to(device),
        )


def load_data(cfg: Any) -> ImageData:
    """Read (or generate) the data set that ``cfg`` (a ``DataConfig``) describes."""
    if cfg.source == "cifar10":
        sets, where = _cifar(cfg, _read_cifar10), f"CIFAR-10 (torchvision) at {cfg.root}"
    elif cfg.source == "cifar100":
        sets, where = _cifar(cfg, _read_cifar100), f"CIFAR-100 (torchvision) at {cfg.root}"
    elif cfg.source == "folder":
        sets, where = _folder(cfg), f"image folder {cfg.root}"
    elif cfg.source == "synthetic":
        s = cfg.synthetic
        sets, where = _synthetic(cfg), f"synthetic (seed {s.seed}, noise {s.noise:g})"
    else:
        raise DataError(f"unknown data source {cfg.source!r}; choose one of {', '.join(SOURCES)}")

    train_x, train_y, test_x, test_y = (sets[k] for k in ("train_x", "train_y", "test_x", "test_y"))
    heldout = "validation" if cfg.validation else "test"
    notes = []
    if cfg.validation:
        n = len(train_x)
        train_x, train_y, test_x, test_y = _validation_split(train_x, train_y, cfg.validation_size)
        notes.append(f"validation split {len(train_x)}/{len(test_x)} of the {n} training images")
    if cfg.source != "synthetic":
        subsets = []
        if cfg.train_size is not None:
            train_x, train_y = _subset(train_x, train_y, cfg.train_size, "data.train_size")
            subsets.append(f"{len(train_x)} train")
        if cfg.test_size is not None:
            test_x, test_y = _subset(test_x, test_y, cfg.test_size, "data.test_size")
            subsets.append(f"{len(test_x)} {heldout}")
        if subsets:
            notes.append("fixed random subsets of " + " / ".join(subsets))

    description = (
        f"{where}: {len(train_x)} train / {len(test_x)} {heldout}, {len(sets['classes'])} classes"
    )
    if notes:
        description += f" ({'; '.join(notes)})"
    log.debug("data: %s", description)
    data = ImageData(train_x, train_y, test_x, test_y, list(sets["classes"]), description)
    data.identity = {**data_identity(cfg, data), "subset_or_split": bool(notes)}
    return data


def data_identity(cfg: Any, data: ImageData) -> dict[str, Any]:
    """What a run trained and was tested on, recorded in its summary.json.

    The loader, where it read from, the images per class of each split and a SHA-256 of the
    decoded pixels and labels: two runs with the same fingerprint saw the same images. Only the
    ``cifar10`` loader reads the original CIFAR-10 (Krizhevsky 2009) that He et al. 2015 report
    on; an image folder is whatever it holds, a re-encoded copy of CIFAR-10 included.
    """
    h = hashlib.sha256()
    for t in (data.train_x, data.train_y, data.test_x, data.test_y):
        h.update(t.contiguous().cpu().numpy().tobytes())
    n = len(data.classes)
    return {
        "source": cfg.source,
        "root": None if cfg.source == "synthetic" else str(Path(cfg.root).expanduser().absolute()),
        "classes": list(data.classes),
        "train_per_class": torch.bincount(data.train_y.cpu(), minlength=n).tolist(),
        "test_per_class": torch.bincount(data.test_y.cpu(), minlength=n).tolist(),
        "sha256": h.hexdigest(),
    }


# ----------------------------------------------------------------------------------------------
# Sources: each returns {"train_x", "train_y", "test_x", "test_y", "classes"}


def _cifar(cfg: Any, read: Callable[[Path, bool], dict[str, Any]]) -> dict[str, Any]:
    """CIFAR-10 or CIFAR-100 (``cfg.source``) under ``cfg.root``: read by ``read`` (downloaded if
    allowed) on the first run, then from the cache."""
    root = Path(cfg.root).expanduser().absolute()
    cache = Path(cfg.cache_dir) / f"{cfg.source}-{_digest(str(root))}.pt"
    return _cached(cache, lambda: read(root, cfg.download))


def _read_cifar10(root: Path, download: bool) -> dict[str, Any]:
    folder = root / CIFAR10_FOLDER
    if not folder.is_dir():
        alternatives = (
            f"Alternatives: put torchvision's CIFAR-10 files (the folder {CIFAR10_FOLDER}/) into "
            f"{root}; or use an image-folder tree or archive with `data=folder data.root=PATH` "
            "(e.g. an image-folder archive of CIFAR-10: data.root=cifar10-jpeg.tar.xz); or run a "
            "smoke test on generated images with `data=synthetic`."
        )
        if not download:
            raise DataError(
                f"CIFAR-10 is not in {root} (no {CIFAR10_FOLDER}/ there) and data.download is "
                f"false. {alternatives}"
            )
        _download(root, "CIFAR-10", alternatives)
    what = "a CIFAR-10 batch"
    train = [_read_cifar_pickle(folder / name, b"labels", what) for name in CIFAR10_TRAIN_FILES]
    test_x, test_y = _read_cifar_pickle(folder / "test_batch", b"labels", what)
    classes = [name.decode() for name in _unpickle(folder / "batches.meta")[b"label_names"]]
    train_x, train_y = torch.cat([x for x, _ in train]), torch.cat([y for _, y in train])
    log.info("CIFAR-10 at %s: %d train / %d test images", root, len(train_x), len(test_x))
    return dict(train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y, classes=classes)


def _read_cifar100(root: Path, download: bool) -> dict[str, Any]:
    """CIFAR-100 (Krizhevsky 2009): the same 50,000 / 10,000 32x32 images as CIFAR-10's format,
    labelled with the 100 fine classes."""
    folder = root / CIFAR100_FOLDER
    if not folder.is_dir():
        instead = (
            f"Put torchvision's {CIFAR100_FOLDER}/ folder there, or use "
            "`data=folder data.root=PATH`"
        )
        if not download:
            raise DataError(
                f"CIFAR-100 is not in {root} (no {CIFAR100_FOLDER}/ there) and data.download is "
                f"false. {instead} or `data=synthetic data.synthetic.num_classes=100`."
            )
        _download(root, "CIFAR-100", f"{instead}.")
    train_x, train_y = _read_cifar_pickle(folder / "train", b"fine_labels", "a CIFAR-100 set")
    test_x, test_y = _read_cifar_pickle(folder / "test", b"fine_labels", "a CIFAR-100 set")
    classes = [name.decode() for name in _unpickle(folder / "meta")[b"fine_label_names"]]
    log.info("CIFAR-100 at %s: %d train / %d test images", root, len(train_x), len(test_x))
    return dict(train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y, classes=classes)


def _download(root: Path, name: str, alternatives: str) -> None:
    """Download CIFAR-10 or CIFAR-100 (``name``) into ``root`` with torchvision."""
    log.info("downloading %s into %s", name, root)
    new_folder = first_missing(root)
    try:
        import torchvision

        dataset = getattr(torchvision.datasets, name.replace("-", ""))  # CIFAR10 or CIFAR100
        dataset(str(root), train=True, download=True)
    except Exception as error:
        if new_folder is not None:  # a failed download leaves no folder behind
            shutil.rmtree(new_folder, ignore_errors=True)
        raise DataError(
            f"could not download {name} into {root}; the network is likely unavailable "
            f"({one_line(error)}). {alternatives}"
        ) from None


def _read_cifar_pickle(path: Path, labels: bytes, what: str) -> tuple[Tensor, Tensor]:
    """One CIFAR-10 batch or CIFAR-100 set: ``data`` rows of 3072 uint8, and the labels under
    the key ``labels`` (CIFAR-10's ``labels``, CIFAR-100's ``fine_labels``)."""
    batch = _unpickle(path)
    try:
        x = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE)
        y = np.asarray(batch[labels], dtype=np.int64)
    except (KeyError, ValueError) as error:
        raise DataError(f"{path} is not {what} ({one_line(error)})") from None
    return torch.from_numpy(x.copy()), torch.from_numpy(y)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="bytes")
    except (OSError, EOFError, pickle.UnpicklingError) as error:
        raise DataError(
            f"cannot read {path} ({one_line(error)}); delete {path.parent} and run again to "
            "download it afresh"
        ) from None


def _folder(cfg: Any) -> dict[str, Any]:
    """An image-folder tree ``ROOT/{train,test}/<class>/*``, or a tar archive of one."""
    root = Path(cfg.root).expanduser().absolute()
    cache_dir = Path(cfg.cache_dir)
    if not root.exists():
        raise DataError(
            f"image folder {root} does not exist; set data.root to a tree "
            "PATH/train/<class>/*.png|jpg plus PATH/test/<class>/*, or to a .tar, .tar.gz or "
            ".tar.xz archive of one"
        )
    if root.is_file():
        if not root.name.endswith(ARCHIVE_SUFFIXES):
            raise DataError(
                f"{root} is a file but not a tar archive ({', '.join(ARCHIVE_SUFFIXES)}); set "
                "data.root to an image-folder tree or an archive of one"
            )
        key = _digest(str(root), *_size_mtime(root))

        def build() -> dict[str, Any]:
            tree = _find_tree(_unpack(root, cache_dir / "unpacked", key))
            try:
                return _read_folder(tree, *_list_folder(tree))
            except DataError as error:
                raise DataError(f"archive {root}: {error}") from None

        return _cached(cache_dir / f"folder-{key}.pt", build)

    tree = _find_tree(root)
    classes, files = _list_folder(tree)
    paths = sorted(p for split in files.values() for p, _ in split)
    stats = [(str(p.relative_to(tree)), *_size_mtime(p)) for p in paths]  # a changed file: rebuild
    key = _digest(str(tree), stats)
    return _cached(cache_dir / f"folder-{key}.pt", lambda: _read_folder(tree, classes, files))


def _size_mtime(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def _visible(folder: Path) -> list[Path]:
    """The entries of ``folder`` in name order, without hidden ones (names starting with a dot)."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _find_tree(root: Path) -> Path:
    """The folder holding train/ and test/: ``root`` or, if it holds one folder only, that one."""
    while not (root / "train").exists():
        entries = _visible(root)
        if len(entries) != 1 or not entries[0].is_dir():
            break
        root = entries[0]
    return root


def _unpack(archive: Path, into: Path, key: str) -> Path:
    """Extract ``archive`` once into ``into/<stem>-<key>/``, atomically, and return that folder."""
    stem = archive.name
    for suffix in ARCHIVE_SUFFIXES:
        stem = stem.removesuffix(suffix)
    dest = into / f"{stem}-{key[:12]}"
    into.mkdir(parents=True, exist_ok=True)
    with _locked(dest):
        if dest.is_dir():
            return dest
        log.info("unpacking %s into %s", archive, dest)
        start = time.perf_counter()
        tmp = into / f"{dest.name}.partial"  # ours alone while we hold the lock
        shutil.rmtree(tmp, ignore_errors=True)  # left by an interrupted run
        try:
            tmp.mkdir()
            with tarfile.open(archive) as tar:
                _extract(tar, tmp)
            os.replace(tmp, dest)
        except Exception as error:  # OSError, TarError, EOFError, lzma and zlib errors
            raise DataError(
                f"cannot unpack {archive} ({one_line(error)}); is it a complete tar archive?"
            ) from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("unpacked %s in %.1f s", archive.name, time.perf_counter() - start)
    return dest


def _extract(tar: tarfile.TarFile, into: Path) -> None:
    """Extract refusing paths outside ``into``, links and devices (``filter="data"``)."""
    if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4
        tar.extractall(into, filter="data")
        return
    for member in tar.getmembers():
        if not (member.isfile() or member.isdir()):
            continue
        if member.name.startswith("/") or ".." in Path(member.name).parts:
            raise DataError(f"archive member {member.name!r} would land outside the unpack folder")
        tar.extract(member, into)


def _list_folder(root: Path) -> tuple[list[str], dict[str, list[tuple[Path, int]]]]:
    """Check the tree's layout; return its classes and, per split, (image path, label) pairs."""
    what = "expected PATH/train/<class>/*.png|jpg and PATH/test/<class>/*"
    splits: dict[str, dict[str, list[Path]]] = {}
    for split in ("train", "test"):
        folder = root / split
        if not folder.is_dir():
            raise DataError(f"{root} has no {split}/ folder; {what}")
        class_folders = [p for p in _visible(folder) if p.is_dir()]
        if not class_folders:
            raise DataError(f"{folder} has no class folders; {what}")
        splits[split] = {}
        for c in class_folders:
            images = [p for p in _visible(c) if p.suffix.lower() in IMAGE_SUFFIXES]
            if not images:
                raise DataError(f"class folder {c} has no {'/'.join(IMAGE_SUFFIXES)} images")
            splits[split][c.name] = images
    train_classes, test_classes = set(splits["train"]), set(splits["test"])
    if train_classes != test_classes:
        only_train = ", ".join(sorted(train_classes - test_classes)) or "none"
        only_test = ", ".join(sorted(test_classes - train_classes)) or "none"
        raise DataError(
            f"train/ and test/ of {root} have different classes (only in train: {only_train}; "
            f"only in test: {only_test}); give both the same class folders"
        )
    classes = sorted(train_classes)
    listing = {
        split: [(p, label) for label, c in enumerate(classes) for p in splits[split][c]]
        for split in ("train", "test")
    }
    return classes, listing


def _read_folder(
    root: Path, classes: list[str], files: dict[str, list[tuple[Path, int]]]
) -> dict[str, Any]:
    start = time.perf_counter()
    sets: dict[str, Any] = {"classes": classes}
    for split in ("train", "test"):
        sets[f"{split}_x"] = _decode_images([p for p, _ in files[split]])
        sets[f"{split}_y"] = torch.tensor([label for _, label in files[split]], dtype=torch.int64)
    log.info(
        "folder %s: %d train / %d test images, %d classes (decoded in %.1f s)",
        root,
        len(sets["train_x"]),
        len(sets["test_x"]),
        len(classes),
        time.perf_counter() - start,
    )
    return sets


def _decode_images(paths: list[Path]) -> Tensor:
    """Decode one by one: about 5 s for CIFAR-10's 60k JPEGs on 2 cores (a thread pool made it
    slower; batched ``decode_jpeg`` saved about a fifth, not worth a second code path)."""
    out = torch.empty((len(paths), 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8)
    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its image codecs in favour of TorchCodec, once per call.
        warnings.filterwarnings("ignore", "The image decoding", DeprecationWarning)
        for i, path in enumerate(paths):
            out[i] = _decode_image(path)
    return out


def _decode_image(path: Path) -> Tensor:
    """One image file as uint8 (3, 32, 32) RGB, or a DataError naming the file."""
    from torchvision.io import ImageReadMode, decode_image, read_file

    try:
        image = decode_image(read_file(str(path)), mode=ImageReadMode.RGB)
    except Exception as error:  # libjpeg / libpng errors surface as RuntimeError
        raise DataError(
            f"cannot decode image {path} ({one_line(error)}); remove or replace it"
        ) from None
    if image.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        h, w = image.shape[1:]
        raise DataError(
            f"image {path} is {w}x{h} pixels; these networks take {IMAGE_SIZE}x{IMAGE_SIZE} "
            "images: resize the data set first"
        )
    if image.dtype == torch.uint16:  # 16-bit PNG
        image = (image.to(torch.int32) // 257).to(torch.uint8)
    return image


def _synthetic(cfg: Any) -> dict[str, Any]:
    """One random low-frequency colour template per class; each image is its class's template,
    shifted by up to 4 pixels, mirrored half the time, plus per-pixel Gaussian noise.

    Learnable, not instant: with the defaults and ``schedule=smoke`` (60 iterations at batch 32),
    a plain-20 ends at about 35% test error and a ResNet-20 at about 3% (chance: 90%).
    """
    s = cfg.synthetic
    n_train = SYNTHETIC_SIZES[0] if cfg.train_size is None else cfg.train_size
    n_test = SYNTHETIC_SIZES[1] if cfg.test_size is None else cfg.test_size
    if s.num_classes < 2 or min(n_train, n_test) < 1:
        raise DataError("data=synthetic needs at least 2 classes and 1 train and 1 test image")
    g = torch.Generator().manual_seed(s.seed)
    coarse = torch.rand(s.num_classes, 3, 4, 4, generator=g)
    templates = F.interpolate(coarse, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear")
    lo = templates.amin(dim=(1, 2, 3), keepdim=True)
    hi = templates.amax(dim=(1, 2, 3), keepdim=True)
    templates = 195 * (templates - lo) / (hi - lo) - 97.5  # 195 grey levels, about 128
    templates = F.pad(templates, (4, 4, 4, 4), mode="replicate")  # room for shifts of 4 pixels

    sets: dict[str, Any] = {"classes": [f"class{c}" for c in range(s.num_classes)]}
    for split, n in (("train", n_train), ("test", n_test)):
        labels = torch.arange(n) % s.num_classes  # balanced classes, in random order
        labels = labels[torch.randperm(n, generator=g)]
        images = []
        for chunk in labels.split(8192):  # bounds the float memory of large sets
            b = len(chunk)
            dy, dx = torch.randint(0, 9, (2, b), generator=g)
            flip = torch.rand(b, generator=g) < 0.5
            noise = s.noise * torch.randn(b, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g)
            x = 128 + _crops(templates[chunk], dy, dx, flip) + noise
            images.append(x.round().clamp(0, 255).to(torch.uint8))
        sets[f"{split}_x"], sets[f"{split}_y"] = torch.cat(images), labels
    return sets


# ----------------------------------------------------------------------------------------------
# Cache: one torch.save file of uint8 tensors per decoded data set


def _digest(*parts: Any) -> str:
    """A short, stable hash of ``parts`` for cache file names."""
    h = hashlib.sha256()
    for part in parts:
        h.update(repr(part).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def _cached(path: Path, build: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Load the sets from ``path``, or build them and write ``path``; one builder at a time."""
    sets = _read_cache(path, warn=True)
    if sets is not None:
        return sets
    new_folder = first_missing(path.parent)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataError(
            f"cannot create the cache folder {path.parent} ({one_line(error)}); set "
            "data.cache_dir=PATH to a writable folder"
        ) from None
    try:
        with _locked(path):
            sets = _read_cache(path, warn=False)  # another run may have built it while we waited
            if sets is None:
                sets = build()
                _write_cache(path, sets)
    except DataError:  # nothing was built: leave no folder or lock file behind
        Path(str(path) + ".lock").unlink(missing_ok=True)
        if new_folder is not None:
            shutil.rmtree(new_folder, ignore_errors=True)
        raise
    return sets


def first_missing(folder: Path) -> Path | None:
    """The highest folder on the way to ``folder`` that does not exist yet (None: all do)."""
    folder = folder.absolute()
    missing = None
    while not folder.exists() and folder != folder.parent:
        missing, folder = folder, folder.parent
    return missing


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold ``path.lock`` so that parallel runs build ``path`` once; say so when waiting."""
    lock = FileLock(str(path) + ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("waiting for another run to build %s", path)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _read_cache(path: Path, warn: bool) -> dict[str, Any] | None:
    if not path.exists():
        return None
    start = time.perf_counter()
    try:
        sets = torch.load(path, map_location="cpu", weights_only=True)
        _check_sets(sets)
    except Exception as error:
        if warn:
            log.warning("cache file %s is unreadable (%s); rebuilding it", path, one_line(error))
        return None
    log.info("read cached images from %s in %.1f s", path, time.perf_counter() - start)
    return sets


def _check_sets(sets: Any) -> None:
    """Raise ValueError unless ``sets`` holds uint8 images, int64 labels and class names."""
    if not isinstance(sets, dict):
        raise ValueError(f"expected a dict, found {type(sets).__name__}")
    classes = sets.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise ValueError("no list of class names")
    for split in ("train", "test"):
        x, y = sets.get(f"{split}_x"), sets.get(f"{split}_y")
        if not isinstance(x, Tensor) or not isinstance(y, Tensor):
            raise ValueError(f"missing {split} tensors")
        if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1:] != (3, IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(f"{split}_x is {x.dtype} {tuple(x.shape)}")
        if y.dtype != torch.int64 or y.shape != (len(x),):
            raise ValueError(f"{split}_y is {y.dtype} {tuple(y.shape)} for {len(x)} images")
        if len(y) and (y.min() < 0 or y.max() >= len(classes)):
            raise ValueError(f"{split}_y has labels outside 0..{len(classes) - 1}")


def _write_cache(path: Path, sets: dict[str, Any]) -> None:
    """Write atomically: a temporary file in the same folder, synced, then renamed over ``path``."""
    start = time.perf_counter()
    atomic_write(path, lambda f: torch.save(sets, f), binary=True)
    size_mb = path.stat().st_size / 1e6
    log.info(
        "cached decoded images in %s (%.0f MB, %.1f s)", path, size_mb, time.perf_counter() - start
    )


# ----------------------------------------------------------------------------------------------
# Preprocessing: subsets, the validation split, normalisation


def _subset(x: Tensor, y: Tensor, size: int, setting: str) -> tuple[Tensor, Tensor]:
    """A fixed random subset of ``size`` images (seed 0), kept in their original order."""
    if not 0 < size <= len(x):
        raise DataError(f"{setting}={size} but there are {len(x)} images to choose from")
    g = torch.Generator().manual_seed(0)
    index = torch.randperm(len(x), generator=g)[:size].sort().values
    return x[index], y[index]


def _validation_split(x: Tensor, y: Tensor, size: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Hold out ``size`` training images, a fixed random choice (He et al. 2015, sec. 4.2: 5k)."""
    if not 0 < size < len(x):
        raise DataError(f"data.validation_size={size} but there are {len(x)} training images")
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    keep, held = perm[: len(x) - size].sort().values, perm[len(x) - size :].sort().values
    return x[keep], y[keep], x[held], y[held]


def mean_std(train_x: Tensor, mode: str) -> tuple[Tensor, Tensor]:
    """Normalisation constants (float32, on ``train_x``'s device) of the training images.

    "pixel_mean": the (3, 32, 32) per-pixel mean and a std of ones, i.e. only the mean is
    subtracted (He et al. 2015, sec. 4.2). "channel_std": per-channel mean and std, (3, 1, 1).
    """
    if mode not in ("pixel_mean", "channel_std"):
        raise ValueError(f"unknown normalisation {mode!r}; choose pixel_mean or channel_std")
    total = torch.zeros(train_x.shape[1:], dtype=torch.float64)
    total_sq = torch.zeros(train_x.shape[1:], dtype=torch.float64)
    for chunk in train_x.cpu().split(8192):  # float64 on the host: exact enough, bounded memory
        chunk = chunk.double()
        total += chunk.sum(0)
        total_sq += (chunk * chunk).sum(0)
    n = len(train_x)
    if mode == "pixel_mean":
        mean, std = total / n, torch.ones(3, 1, 1, dtype=torch.float64)
    else:
        count = n * train_x.shape[2] * train_x.shape[3]
        mean = total.sum((1, 2), keepdim=True) / count
        std = (total_sq.sum((1, 2), keepdim=True) / count - mean**2).clamp_min(0).sqrt()
    return mean.float().to(train_x.device), std.float().to(train_x.device)


def _normalize(x: Tensor, mean: Tensor, std: Tensor, memory_format: torch.memory_format) -> Tensor:
    return ((x.float() - mean) / std).contiguous(memory_format=memory_format)


# ----------------------------------------------------------------------------------------------
# Augmentation: pad 4, random 32x32 crop, random horizontal flip (He et al. 2015, sec. 4.2)


def _crops(padded: Tensor, dy: Tensor, dx: Tensor, flip: Tensor, size: int = IMAGE_SIZE) -> Tensor:
    """The size x size window at (dy, dx) of each image in ``padded`` (B, C, H, W), mirrored where
    ``flip``; one gather, no loop over images."""
    b, c = padded.shape[:2]
    steps = torch.arange(size, device=padded.device)
    rows = dy[:, None] + steps  # (B, size)
    cols = dx[:, None] + torch.where(flip[:, None], size - 1 - steps, steps)  # (B, size)
    batch = torch.arange(b, device=padded.device)[:, None, None, None]
    channel = torch.arange(c, device=padded.device)[None, :, None, None]
    # Broadcast (B, 1, 1, 1), (1, C, 1, 1), (B, 1, size, 1), (B, 1, 1, size) -> (B, C, size, size)
    return padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]


def augment(x: Tensor, generator: torch.Generator) -> Tensor:
    """Pad 4 zero pixels on each side, take a random 32x32 crop, flip it with probability 1/2.

    He et al. 2015, sec. 4.2: "4 pixels are padded on each side, and a 32x32 crop is randomly
    sampled from the padded image or its horizontal flip". The padding is black (raw value 0),
    applied to the raw pixels before the per-pixel mean is subtracted, as torchvision pipelines
    do; fb.resnet.torch subtracts the mean first and pads with zeros, i.e. with the mean image.

    ``x`` is uint8 (B, 3, 32, 32); the random numbers come from ``generator`` on ``x.device``.
    """
    b, size = x.shape[0], x.shape[2]
    padded = F.pad(x, (4, 4, 4, 4))  # zeros; (B, 3, 40, 40)
    dy = torch.randint(0, 9, (b,), generator=generator, device=x.device)
    dx = torch.randint(0, 9, (b,), generator=generator, device=x.device)
    flip = torch.rand(b, generator=generator, device=x.device) < 0.5
    return _crops(padded, dy, dx, flip, size=size)


# ----------------------------------------------------------------------------------------------
# Batching: the training set as an endless stream of shuffled batches; the test set in order


class TrainBatches:
    """Endless shuffled mini-batches of the training set, on its device."""

    def __init__(
        self,
        x_uint8: Tensor,
        y: Tensor,
        batch_size: int,
        mean: Tensor,
        std: Tensor,
        generator: torch.Generator,
        augment: bool = True,
        memory_format: torch.memory_format = torch.contiguous_format,
    ) -> None:
        if not 0 < batch_size <= len(x_uint8):
            raise ValueError(f"batch size {batch_size} for {len(x_uint8)} training images")
        self.x, self.y = x_uint8, y
        self.batch_size = batch_size
        self.mean, self.std = mean.to(x_uint8.device), std.to(x_uint8.device)
        self.generator = generator
        self.augment = augment
        self.memory_format = memory_format
        self.batches_per_epoch = len(x_uint8) // batch_size  # the last partial batch is dropped
        self.epoch = 0  # epochs completed
        self.position = 0  # batches taken from the current permutation
        self.permutation = self._shuffle()

    def _shuffle(self) -> Tensor:
        return torch.randperm(len(self.x), generator=self.generator, device=self.x.device)

    def next(self) -> tuple[Tensor, Tensor]:
        """The next batch: float32 normalised images (B, 3, 32, 32) and int64 labels (B,)."""
        if self.position == self.batches_per_epoch:  # host-side counters only: no sync
            self.permutation = self._shuffle()
            self.position = 0
            self.epoch += 1
        start = self.position * self.batch_size
        index = self.permutation[start : start + self.batch_size]
        self.position += 1
        x = self.x[index]
        if self.augment:
            x = augment(x, self.generator)
        return _normalize(x, self.mean, self.std, self.memory_format), self.y[index]

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume the exact sequence of batches."""
        return {
            "permutation": self.permutation.cpu(),
            "position": self.position,
            "epoch": self.epoch,
            "batch_size": self.batch_size,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from ``state_dict()``'s output (same data and batch size)."""
        if state["batch_size"] != self.batch_size or len(state["permutation"]) != len(self.x):
            raise ValueError(
                f"data state is for {len(state['permutation'])} images in batches of "
                f"{state['batch_size']}, not {len(self.x)} in batches of {self.batch_size}"
            )
        self.permutation = state["permutation"].to(self.x.device)
        self.position = state["position"]
        self.epoch = state["epoch"]
        self.generator.set_state(state["generator"])


def eval_batches(
    x_uint8: Tensor,
    y: Tensor,
    batch_size: int,
    mean: Tensor,
    std: Tensor,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Normalised batches in order, without augmentation, the last partial batch included."""
    mean, std = mean.to(x_uint8.device), std.to(x_uint8.device)
    for start in range(0, len(x_uint8), batch_size):
        x = x_uint8[start : start + batch_size]
        yield _normalize(x, mean, std, memory_format), y[start : start + batch_size]
