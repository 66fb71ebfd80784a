"""resexp.data: the sources, the cache, He et al. 2015's augmentation, device-side batching."""

from __future__ import annotations

import io
import logging
import pickle
import shutil
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from filelock import FileLock
from omegaconf import OmegaConf
from PIL import Image

from resexp.config import DataConfig, SyntheticConfig
from resexp.data import TrainBatches, augment, eval_batches, load_data, mean_std
from resexp.errors import DataError

CIFAR10_CLASSES = [  # in CIFAR-10's label order, as batches.meta lists them
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]


def data_cfg(tmp_path: Path, **settings) -> DataConfig:
    """A DataConfig whose cache lives under tmp_path."""
    return DataConfig(cache_dir=str(tmp_path / "cache"), **settings)


def cache_files(tmp_path: Path, prefix: str) -> list[Path]:
    return sorted((tmp_path / "cache").glob(f"{prefix}-*.pt"))


# ----------------------------------------------------------------------------------------------
# cifar10: torchvision's python pickles


def write_cifar10(root: Path, per_batch: int = 20, n_test: int = 10) -> dict[str, np.ndarray]:
    """Small pickles in torchvision's CIFAR-10 layout; returns the images and labels written."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    written: dict[str, list] = {"train_x": [], "train_y": []}
    for i in range(1, 6):
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump({b"data": data, b"labels": labels, b"batch_label": b"x"}, f)
        written["train_x"].append(data)
        written["train_y"].append(labels)
    test = rng.integers(0, 256, (n_test, 3072), dtype=np.uint8)
    test_labels = [i % 10 for i in range(n_test)]
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": test, b"labels": test_labels}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [c.encode() for c in CIFAR10_CLASSES]}, f)
    return {
        "train_x": np.concatenate(written["train_x"]).reshape(-1, 3, 32, 32),
        "train_y": np.concatenate(written["train_y"]),
        "test_x": test.reshape(-1, 3, 32, 32),
        "test_y": np.array(test_labels),
    }


def test_cifar10_reads_the_pickles_and_then_the_cache(tmp_path, caplog):
    expected = write_cifar10(tmp_path / "cifar10")
    cfg = data_cfg(tmp_path, source="cifar10", root=str(tmp_path / "cifar10"), download=False)
    data = load_data(cfg)

    assert data.train_x.shape == (100, 3, 32, 32) and data.train_x.dtype == torch.uint8
    assert data.train_y.shape == (100,) and data.train_y.dtype == torch.int64
    assert data.test_x.shape == (10, 3, 32, 32) and data.test_y.dtype == torch.int64
    assert torch.equal(data.train_x, torch.from_numpy(expected["train_x"]))
    assert data.train_y.tolist() == expected["train_y"].tolist()
    assert torch.equal(data.test_x, torch.from_numpy(expected["test_x"]))
    assert data.test_y.tolist() == expected["test_y"].tolist()
    assert data.classes == CIFAR10_CLASSES
    assert data.description.endswith("100 train / 10 test, 10 classes")
    assert len(cache_files(tmp_path, "cifar10")) == 1

    # The second load needs only the cache.
    for path in (tmp_path / "cifar10" / "cifar-10-batches-py").iterdir():
        path.unlink()
    (tmp_path / "cifar10" / "cifar-10-batches-py").rmdir()
    with caplog.at_level(logging.INFO, logger="resexp.data"):
        again = load_data(cfg)
    assert "read cached images" in caplog.text
    assert torch.equal(again.train_x, data.train_x) and torch.equal(again.test_y, data.test_y)
    assert again.classes == data.classes


@pytest.mark.parametrize("damage", ["truncate", "wrong_content"])
def test_unreadable_cache_is_rebuilt_with_a_warning(tmp_path, caplog, damage):
    write_cifar10(tmp_path / "cifar10")
    cfg = data_cfg(tmp_path, source="cifar10", root=str(tmp_path / "cifar10"), download=False)
    first = load_data(cfg)
    (cache,) = cache_files(tmp_path, "cifar10")
    if damage == "truncate":
        cache.write_bytes(cache.read_bytes()[: cache.stat().st_size // 2])
    else:
        torch.save({"train_x": torch.zeros(3)}, cache)

    with caplog.at_level(logging.WARNING, logger="resexp.data"):
        rebuilt = load_data(cfg)
    assert f"cache file {cache} is unreadable" in caplog.text and "rebuilding it" in caplog.text
    assert torch.equal(rebuilt.train_x, first.train_x)
    assert torch.load(cache, weights_only=True)["classes"] == CIFAR10_CLASSES  # whole again


def test_cifar10_absent_without_download_names_the_alternatives(tmp_path):
    cfg = data_cfg(tmp_path, source="cifar10", root=str(tmp_path / "none"), download=False)
    with pytest.raises(DataError) as error:
        load_data(cfg)
    message = str(error.value)
    assert "data.download is false" in message and "cifar-10-batches-py" in message
    assert "data=folder data.root=PATH" in message and "data=synthetic" in message


def test_failed_download_is_a_short_error(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise RuntimeError("<urlopen error [Errno -3] Temporary failure>\nlong traceback text")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    cfg = data_cfg(tmp_path, source="cifar10", root=str(tmp_path / "dl"), download=True)
    with pytest.raises(DataError) as error:
        load_data(cfg)
    message = str(error.value)
    assert "could not download CIFAR-10" in message and "network" in message
    assert "Temporary failure" in message and "long traceback text" not in message
    assert "data=folder" in message and "data=synthetic" in message


def test_download_is_used_when_it_works(tmp_path, monkeypatch):
    def fake_download(root, train, download):
        assert download
        write_cifar10(Path(root))

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", fake_download)
    cfg = data_cfg(tmp_path, source="cifar10", root=str(tmp_path / "dl"), download=True)
    assert len(load_data(cfg).train_x) == 100


# ----------------------------------------------------------------------------------------------
# cifar100: torchvision's python pickles (train, test, meta), 100 fine classes


def write_cifar100(root: Path, n_train: int = 300, n_test: int = 100) -> dict[str, np.ndarray]:
    """Small pickles in torchvision's CIFAR-100 layout; returns the images and labels written."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    written = {}
    for split, n in (("train", n_train), ("test", n_test)):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        fine = [i % 100 for i in range(n)]
        coarse = [i % 20 for i in range(n)]
        with open(folder / split, "wb") as f:
            pickle.dump({b"data": data, b"fine_labels": fine, b"coarse_labels": coarse}, f)
        written[f"{split}_x"], written[f"{split}_y"] = data.reshape(-1, 3, 32, 32), np.array(fine)
    with open(folder / "meta", "wb") as f:
        names = {b"fine_label_names": [f"fine{i}".encode() for i in range(100)]}
        pickle.dump({**names, b"coarse_label_names": [b"coarse"] * 20}, f)
    return written


def test_cifar100_reads_the_fine_labels_and_then_the_cache(tmp_path):
    expected = write_cifar100(tmp_path / "cifar100")
    cfg = data_cfg(tmp_path, source="cifar100", root=str(tmp_path / "cifar100"), download=False)
    data = load_data(cfg)
    assert data.train_x.shape == (300, 3, 32, 32) and data.train_x.dtype == torch.uint8
    assert torch.equal(data.train_x, torch.from_numpy(expected["train_x"]))
    assert data.train_y.tolist() == expected["train_y"].tolist()
    assert torch.equal(data.test_x, torch.from_numpy(expected["test_x"]))
    assert data.test_y.tolist() == expected["test_y"].tolist()
    assert data.classes == [f"fine{i}" for i in range(100)]
    assert data.description.endswith("300 train / 100 test, 100 classes")
    assert data.identity["source"] == "cifar100" and len(data.identity["test_per_class"]) == 100
    assert len(cache_files(tmp_path, "cifar100")) == 1 and not cache_files(tmp_path, "cifar10")

    shutil.rmtree(tmp_path / "cifar100" / "cifar-100-python")  # the second load reads the cache
    assert torch.equal(load_data(cfg).train_x, data.train_x)


def test_cifar100_same_pipeline_subsets_and_validation(tmp_path):
    write_cifar100(tmp_path / "cifar100")
    root = str(tmp_path / "cifar100")
    cfg = data_cfg(
        tmp_path, source="cifar100", root=root, download=False, validation=True, validation_size=50
    )
    data = load_data(cfg)
    assert (len(data.train_x), len(data.test_x)) == (250, 50)
    sub = load_data(data_cfg(tmp_path, source="cifar100", root=root, download=False, test_size=7))
    assert len(sub.test_x) == 7


def test_cifar100_absent_or_offline_is_a_clear_error(tmp_path, monkeypatch):
    cfg = data_cfg(tmp_path, source="cifar100", root=str(tmp_path / "none"), download=False)
    with pytest.raises(DataError, match=r"cifar-100-python.*data\.download is false"):
        load_data(cfg)

    def offline(*args, **kwargs):
        raise RuntimeError("<urlopen error [Errno -3] Temporary failure>\nlong traceback text")

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", offline)
    cfg = data_cfg(tmp_path, source="cifar100", root=str(tmp_path / "dl"), download=True)
    with pytest.raises(DataError) as error:
        load_data(cfg)
    message = str(error.value)
    assert "could not download CIFAR-100" in message and "long traceback text" not in message


def test_cifar100_download_is_used_when_it_works(tmp_path, monkeypatch):
    def fake_download(root, train, download):
        assert download
        write_cifar100(Path(root))

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", fake_download)
    cfg = data_cfg(tmp_path, source="cifar100", root=str(tmp_path / "dl"), download=True)
    assert len(load_data(cfg).classes) == 100


def test_cifar100_config_composes():
    cfg = OmegaConf.merge(
        OmegaConf.structured(DataConfig),
        OmegaConf.load(Path(__file__).parents[1] / "configs" / "data" / "cifar100.yaml"),
    )
    assert cfg.source == "cifar100" and cfg.download


# ----------------------------------------------------------------------------------------------
# folder: ROOT/{train,test}/<class>/*.png|jpg, or an archive of one


def image(seed: int, size: tuple[int, int] = (32, 32)) -> torch.Tensor:
    return torch.randint(0, 256, (3, *size), generator=torch.Generator().manual_seed(seed)).to(
        torch.uint8
    )


def save(x: torch.Tensor, path: Path) -> None:
    """Write a (3, H, W) uint8 image with Pillow, independently of the decoder under test."""
    Image.fromarray(x.permute(1, 2, 0).numpy()).save(path)


def write_tree(
    root: Path, counts: dict[str, tuple[int, int]], fmt: str = "png"
) -> dict[tuple[str, str], list[torch.Tensor]]:
    """Write counts[class] = (n_train, n_test) images; return the images written per split."""
    written = {}
    seed = 0
    for c, (n_train, n_test) in counts.items():
        for split, n in (("train", n_train), ("test", n_test)):
            folder = root / split / c
            folder.mkdir(parents=True, exist_ok=True)
            written[split, c] = []
            for i in range(n):
                seed += 1
                x = image(seed)
                suffix = "png" if fmt == "png" or i % 2 == 0 else "jpg"
                save(x, folder / f"{i:04d}.{suffix}")
                written[split, c].append(x)
    return written


def test_folder_reads_a_tree_of_images(tmp_path):
    written = write_tree(tmp_path / "tree", {"dog": (3, 2), "cat": (4, 1), "ant": (2, 2)})
    data = load_data(data_cfg(tmp_path, source="folder", root=str(tmp_path / "tree")))
    assert data.classes == ["ant", "cat", "dog"]  # sorted, as torchvision's ImageFolder
    assert data.train_x.shape == (9, 3, 32, 32) and data.test_x.shape == (5, 3, 32, 32)
    assert data.train_y.tolist() == [0, 0, 1, 1, 1, 1, 2, 2, 2]
    assert data.test_y.tolist() == [0, 0, 1, 2, 2]
    # PNG is lossless: the pixels come back exactly, in file order within each class.
    assert torch.equal(data.train_x[2:6], torch.stack(written["train", "cat"]))
    assert data.description.endswith("9 train / 5 test, 3 classes")
    assert len(cache_files(tmp_path, "folder")) == 1


def test_folder_reads_jpeg_and_sees_new_files(tmp_path):
    write_tree(tmp_path / "tree", {"a": (4, 2), "b": (4, 2)}, fmt="mixed")
    cfg = data_cfg(tmp_path, source="folder", root=str(tmp_path / "tree"))
    assert len(load_data(cfg).train_x) == 8
    save(image(99), tmp_path / "tree" / "train" / "a" / "extra.png")
    assert len(load_data(cfg).train_x) == 9  # the file list is part of the cache's key
    assert len(cache_files(tmp_path, "folder")) == 2


def test_folder_from_an_archive(tmp_path, caplog):
    write_tree(tmp_path / "src" / "mini", {"a": (3, 1), "b": (2, 2)})
    archive = tmp_path / "mini.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "mini", arcname="mini")
    cfg = data_cfg(tmp_path, source="folder", root=str(archive))

    data = load_data(cfg)
    assert data.classes == ["a", "b"] and len(data.train_x) == 5 and len(data.test_x) == 3
    (unpacked,) = (p for p in (tmp_path / "cache" / "unpacked").glob("mini-*") if p.is_dir())
    assert (unpacked / "mini" / "train" / "a").is_dir()
    assert not list((tmp_path / "cache" / "unpacked").glob("*.partial"))

    caplog.clear()  # the first load's lines may have been captured too
    with caplog.at_level(logging.INFO, logger="resexp.data"):
        again = load_data(cfg)
    assert "unpacking" not in caplog.text and "read cached images" in caplog.text
    assert torch.equal(again.train_x, data.train_x)


def test_truncated_archive_is_a_clear_error(tmp_path):
    write_tree(tmp_path / "src" / "mini", {"a": (3, 1), "b": (2, 2)})
    archive = tmp_path / "mini.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "mini", arcname="mini")
    archive.write_bytes(archive.read_bytes()[:500])
    with pytest.raises(DataError, match=r"cannot unpack .*mini\.tar\.gz"):
        load_data(data_cfg(tmp_path, source="folder", root=str(archive)))
    unpacked = tmp_path / "cache" / "unpacked"  # nothing half-unpacked is left behind
    assert not unpacked.exists() or not [p for p in unpacked.iterdir() if p.is_dir()]


def test_a_second_run_waits_for_the_cache_being_built(tmp_path, caplog):
    write_cifar10(tmp_path / "cifar10")
    cfg = data_cfg(tmp_path, source="cifar10", root=str(tmp_path / "cifar10"), download=False)
    load_data(cfg)  # learn the cache's name, then start over without it
    (cache,) = cache_files(tmp_path, "cifar10")
    cache.unlink()
    results = []
    with caplog.at_level(logging.INFO, logger="resexp.data"):
        with FileLock(str(cache) + ".lock"):  # as another run building the cache holds it
            thread = threading.Thread(target=lambda: results.append(load_data(cfg)))
            thread.start()
            time.sleep(0.5)
            assert thread.is_alive()  # blocked on the lock
        thread.join(timeout=30)
    assert "waiting for another run to build" in caplog.text
    assert len(results) == 1 and len(results[0].train_x) == 100


def break_no_test(root: Path) -> None:
    shutil.rmtree(root / "test")


def break_classes(root: Path) -> None:
    (root / "test" / "b").rename(root / "test" / "zebra")


def break_image(root: Path) -> None:
    (root / "train" / "b" / "0000.png").write_bytes(b"not a png at all")


def break_size(root: Path) -> None:
    save(image(7, size=(32, 40)), root / "test" / "a" / "0000.png")


def break_empty_class(root: Path) -> None:
    (root / "train" / "c").mkdir()


@pytest.mark.parametrize(
    "damage,messages",
    [
        (None, ["does not exist", "data.root"]),
        (break_no_test, ["no test/ folder"]),
        (break_classes, ["different classes", "only in train: b", "only in test: zebra"]),
        (break_image, ["cannot decode image", "0000.png"]),
        (break_size, ["0000.png is 40x32 pixels", "take 32x32 images"]),
        (break_empty_class, ["class folder", "has no"]),
    ],
)
def test_folder_problems_are_clear_errors(tmp_path, damage, messages):
    root = tmp_path / "tree"
    if damage is not None:
        write_tree(root, {"a": (2, 1), "b": (2, 1)})
        damage(root)
    with pytest.raises(DataError) as error:
        load_data(data_cfg(tmp_path, source="folder", root=str(root)))
    for message in messages:
        assert message in str(error.value)


def test_unknown_source_lists_the_sources(tmp_path):
    with pytest.raises(DataError, match="cifar10, folder, synthetic"):
        load_data(data_cfg(tmp_path, source="imagenet"))


def test_real_cifar10_jpeg_archive(cifar10_jpeg, cifar10_jpeg_cache, caplog):
    # cifar10_jpeg (conftest.py): RESEXP_TEST_CIFAR10_JPEG, or a skip that says so.
    # About 20 s on 2 idle cores (unpack about 10, decode 5); twice that on busy ones.
    cfg = DataConfig(source="folder", root=str(cifar10_jpeg), cache_dir=str(cifar10_jpeg_cache))
    start = time.perf_counter()
    with caplog.at_level(logging.INFO, logger="resexp.data"):
        data = load_data(cfg)
    built = time.perf_counter() - start
    assert data.train_x.shape == (50_000, 3, 32, 32) and data.test_x.shape == (10_000, 3, 32, 32)
    assert data.classes == CIFAR10_CLASSES
    assert data.train_y.bincount().tolist() == [5000] * 10
    assert data.test_y.bincount().tolist() == [1000] * 10
    assert "50000 train / 10000 test images, 10 classes" in caplog.text

    start = time.perf_counter()
    cached = load_data(cfg)
    print(f"CIFAR-10 JPEG: unpack + decode + cache {built:.1f} s, cached load", end=" ")
    print(f"{time.perf_counter() - start:.1f} s")
    assert torch.equal(cached.test_x, data.test_x)


# ----------------------------------------------------------------------------------------------
# synthetic


def test_synthetic_is_deterministic_balanced_and_learnable(tmp_path):
    cfg = data_cfg(tmp_path, source="synthetic")
    data = load_data(cfg)
    assert data.train_x.shape == (2000, 3, 32, 32) and data.test_x.shape == (500, 3, 32, 32)
    assert data.train_x.dtype == torch.uint8 and data.train_y.dtype == torch.int64
    assert data.classes == [f"class{c}" for c in range(10)]
    assert data.train_y.bincount().tolist() == [200] * 10
    assert data.test_y.bincount().tolist() == [50] * 10
    assert data.train_x.float().std() > 30  # uses a wide range of grey levels

    again = load_data(cfg)
    assert torch.equal(again.train_x, data.train_x) and torch.equal(again.test_y, data.test_y)
    other = load_data(data_cfg(tmp_path, source="synthetic", synthetic=SyntheticConfig(seed=1)))
    assert not torch.equal(other.train_x, data.train_x)

    # Not noise: the nearest class mean of the training images classifies test images well.
    means = torch.stack([data.train_x[data.train_y == c].float().mean(0) for c in range(10)])
    distances = torch.cdist(data.test_x.float().flatten(1), means.flatten(1))
    accuracy = (distances.argmin(1) == data.test_y).float().mean().item()
    assert accuracy > 0.5  # chance: 0.1
    assert not cache_files(tmp_path, "synthetic")  # generated, never cached


def test_synthetic_sizes_and_classes(tmp_path):
    cfg = data_cfg(
        tmp_path,
        source="synthetic",
        train_size=30,
        test_size=9,
        synthetic=SyntheticConfig(num_classes=3, noise=10.0),
    )
    data = load_data(cfg)
    assert len(data.train_x) == 30 and len(data.test_x) == 9 and data.classes[-1] == "class2"
    assert data.train_y.bincount().tolist() == [10, 10, 10]


def test_load_data_takes_an_omegaconf_node(tmp_path):
    node = OmegaConf.structured(data_cfg(tmp_path, source="synthetic", train_size=20, test_size=5))
    data = load_data(node)
    assert len(data.train_x) == 20 and "synthetic" in data.description


# ----------------------------------------------------------------------------------------------
# Subsets and the validation split


def test_subsets_are_fixed_and_keep_the_order(tmp_path):
    write_cifar10(tmp_path / "cifar10")
    root = str(tmp_path / "cifar10")
    full = load_data(data_cfg(tmp_path, source="cifar10", root=root, download=False))
    cfg = data_cfg(
        tmp_path, source="cifar10", root=root, download=False, train_size=30, test_size=4
    )
    part = load_data(cfg)
    assert len(part.train_x) == 30 and len(part.test_x) == 4
    assert torch.equal(load_data(cfg).train_x, part.train_x)  # the same subset every time
    # Every kept image is one of the full set's, in the full set's order.
    rows = {bytes(x.flatten().numpy()): i for i, x in enumerate(full.train_x)}
    index = [rows[bytes(x.flatten().numpy())] for x in part.train_x]
    assert index == sorted(index) and len(set(index)) == 30
    assert part.train_y.tolist() == full.train_y[index].tolist()
    assert "30 train / 4 test" in part.description

    with pytest.raises(DataError, match="train_size=101"):
        load_data(data_cfg(tmp_path, source="cifar10", root=root, download=False, train_size=101))


def test_validation_split_holds_out_training_images(tmp_path):
    write_cifar10(tmp_path / "cifar10")
    root = str(tmp_path / "cifar10")
    full = load_data(data_cfg(tmp_path, source="cifar10", root=root, download=False))
    cfg = data_cfg(
        tmp_path, source="cifar10", root=root, download=False, validation=True, validation_size=20
    )
    data = load_data(cfg)
    assert len(data.train_x) == 80 and len(data.test_x) == 20
    assert "validation split 80/20" in data.description
    # The two parts are disjoint and together make up the training set.
    together = torch.cat([data.train_x, data.test_x]).flatten(1)
    assert sorted(map(bytes, together.numpy())) == sorted(
        map(bytes, full.train_x.flatten(1).numpy())
    )
    assert torch.equal(load_data(cfg).test_x, data.test_x)


# ----------------------------------------------------------------------------------------------
# Normalisation


def test_mean_std_modes():
    x = torch.randint(0, 256, (50, 3, 32, 32), dtype=torch.uint8)
    mean, std = mean_std(x, "pixel_mean")  # He et al. 2015, sec. 4.2: subtract the pixel mean
    assert mean.shape == (3, 32, 32) and mean.dtype == torch.float32
    assert torch.allclose(mean, x.float().mean(0))
    assert torch.equal(std, torch.ones(3, 1, 1))

    mean, std = mean_std(x, "channel_std")
    assert mean.shape == (3, 1, 1) and std.shape == (3, 1, 1)
    assert torch.allclose(mean.flatten(), x.float().mean((0, 2, 3)))
    assert torch.allclose(std.flatten(), x.float().std((0, 2, 3), unbiased=False))

    with pytest.raises(ValueError, match="pixel_mean"):
        mean_std(x, "zca")


# ----------------------------------------------------------------------------------------------
# Augmentation: pad 4, random crop, random flip


def all_views(x: torch.Tensor) -> torch.Tensor:
    """The 162 views augment may produce of one image: 81 shifts, each plain or mirrored."""
    padded = torch.zeros(3, 40, 40, dtype=x.dtype)
    padded[:, 4:36, 4:36] = x
    crops = [padded[:, dy : dy + 32, dx : dx + 32] for dy in range(9) for dx in range(9)]
    return torch.stack(crops + [c.flip(-1) for c in crops])  # (162, 3, 32, 32)


def test_augment_crops_shifted_and_mirrored_views():
    x = torch.randint(1, 256, (16, 3, 32, 32), dtype=torch.uint8)
    out = augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8
    for original, view in zip(x, out, strict=True):
        matches = (all_views(original) == view).flatten(1).all(1)
        assert matches.sum() == 1  # exactly one shift/flip of the original image


def test_augment_pads_with_zeros_flips_half_and_is_seeded():
    x = torch.full((2000, 3, 32, 32), 255, dtype=torch.uint8)
    x[:, :, :, :16] = 100  # left half darker: a mirrored view has the dark half on the right
    out = augment(x, torch.Generator().manual_seed(0))
    assert (out == 0).any((1, 2, 3)).float().mean() > 0.9  # most crops reach into the padding
    assert ((out == 0).sum((1, 2, 3)) == 0).any()  # the centred crop, among 81, also occurs
    flipped = (out[:, 0, 16, 27] == 100) & (out[:, 0, 16, 4] == 255)  # column 27 of 32
    plain = (out[:, 0, 16, 4] == 100) & (out[:, 0, 16, 27] == 255)
    assert torch.all(flipped ^ plain)
    assert 0.45 < flipped.float().mean() < 0.55

    same = augment(x, torch.Generator().manual_seed(0))
    assert torch.equal(same, out)
    assert not torch.equal(augment(x, torch.Generator().manual_seed(1)), out)


# ----------------------------------------------------------------------------------------------
# Batching


def make_batches(n: int = 100, batch_size: int = 32, seed: int = 0, **kwargs) -> TrainBatches:
    """Images whose labels are their own indices, so a batch tells which images it holds."""
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator())
    mean, std = mean_std(x, "channel_std")
    generator = torch.Generator().manual_seed(seed)
    return TrainBatches(x, torch.arange(n), batch_size, mean, std, generator, **kwargs)


def test_train_batches_are_normalised_and_cover_each_epoch():
    batches = make_batches(augment=False)
    assert batches.batches_per_epoch == 3  # 100 // 32: the last partial batch is dropped
    for epoch in range(2):
        seen = []
        for _ in range(3):
            x, y = batches.next()
            assert x.shape == (32, 3, 32, 32) and x.dtype == torch.float32
            assert y.dtype == torch.int64
            expected = (batches.x[y].float() - batches.mean) / batches.std
            assert torch.allclose(x, expected)
            seen += y.tolist()
        assert len(set(seen)) == 96  # no image twice within an epoch
        assert batches.epoch == epoch
    batches.next()
    assert batches.epoch == 2


def test_train_batches_augment_and_take_a_memory_format():
    batches = make_batches(memory_format=torch.channels_last)
    x, _ = batches.next()
    assert x.is_contiguous(memory_format=torch.channels_last)
    plain_x, _ = make_batches(augment=False).next()
    assert not torch.allclose(x, plain_x)  # same order (same seed), augmented pixels


def test_train_batches_resume_the_same_sequence():
    batches = make_batches()
    for _ in range(5):  # into the second epoch
        batches.next()
    buffer = io.BytesIO()
    torch.save(batches.state_dict(), buffer)  # as a checkpoint would hold it
    expected = [batches.next() for _ in range(4)]

    resumed = make_batches(seed=123)
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert resumed.epoch == 1
    for x, y in expected:
        x2, y2 = resumed.next()
        assert torch.equal(x, x2) and torch.equal(y, y2)

    with pytest.raises(ValueError, match="batches of 32"):
        make_batches(batch_size=16).load_state_dict(batches.state_dict())


def test_eval_batches_in_order_with_the_last_partial_batch():
    x = torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8)
    mean, std = mean_std(x, "pixel_mean")
    batches = list(eval_batches(x, torch.arange(10), 4, mean, std))
    assert [len(y) for _, y in batches] == [4, 4, 2]
    assert torch.cat([y for _, y in batches]).tolist() == list(range(10))
    images = torch.cat([xb for xb, _ in batches])
    assert torch.allclose(images, x.float() - mean) and images.dtype == torch.float32
