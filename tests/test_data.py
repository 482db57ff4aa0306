"""DataModules on tiny files written in each dataset's real on-disk format."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from iamnn import data
from iamnn.data import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    DatasetError,
    DatasetNotFoundError,
    DigitsDataModule,
    FashionMNISTDataModule,
    ImageFolderDataModule,
    base,
    create_datamodule,
    fashion_mnist,
    read_idx,
)

N_TRAIN, N_TEST = 50, 20


@pytest.fixture(autouse=True)
def no_real_data(tmp_path_factory, monkeypatch):
    """Never look at this machine's datasets nor the network."""
    nowhere = tmp_path_factory.mktemp("nowhere")
    monkeypatch.setattr(fashion_mnist, "SYSTEM_FASHION_MNIST_DIR", str(nowhere / "system"))
    monkeypatch.setattr(base, "DEFAULT_CACHE_DIR", str(nowhere / "cache"))
    monkeypatch.delenv("IAMNN_DATA", raising=False)

    def offline(dataset, root):
        raise RuntimeError(f"no network for {dataset}:\n<urlopen error>")

    monkeypatch.setattr(base, "torchvision_download", offline)


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def make_fashion(directory: Path, gz: bool = True, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (N_TRAIN, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.arange(N_TRAIN, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (N_TEST, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.arange(N_TEST, dtype=np.uint8) % 10,
    }
    directory.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        write_idx(directory / (name + (".gz" if gz else "")), arr)
    return arrays


def first_batch(loader):
    return next(iter(loader))


# -------------------- IDX


@pytest.mark.parametrize("name", ["x-idx3-ubyte", "x-idx3-ubyte.gz"])
def test_read_idx_roundtrip(tmp_path, name):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / name, arr)
    np.testing.assert_array_equal(read_idx(tmp_path / name), arr)


@pytest.mark.parametrize(
    "payload",
    [
        b"\x00\x00\x08",  # too short
        b"\x12\x34\x08\x01\x00\x00\x00\x02ab",  # bad magic
        b"\x00\x00\x08\x01\x00\x00\x00\x05ab",  # says 5 bytes, has 2
    ],
)
def test_read_idx_malformed(tmp_path, payload):
    path = tmp_path / "bad-idx1-ubyte"
    path.write_bytes(payload)
    with pytest.raises(DatasetError, match="bad-idx1-ubyte"):
        read_idx(path)


def test_a_small_gzipped_idx_bomb_is_refused_before_it_inflates(tmp_path):
    import resource
    import time

    # 10 MB of zeros after a header announcing 10 000 x 1000 x 1000 bytes (10 GB): gzip makes it ~10 kB
    path = tmp_path / "bomb-idx3-ubyte.gz"
    header = b"\x00\x00\x08\x03" + (10_000).to_bytes(4, "big") + (1000).to_bytes(4, "big") * 2
    path.write_bytes(gzip.compress(header + bytes(10_000_000)))
    assert path.stat().st_size < 100_000
    before, start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter()
    with pytest.raises(DatasetError, match="more than the"):
        read_idx(path)
    assert time.perf_counter() - start < 1.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000  # kB: nothing was inflated
    # dimensions whose product overflows 64 bits, and data longer than the header says
    (tmp_path / "huge-idx2-ubyte").write_bytes(b"\x00\x00\x08\x02" + b"\xff" * 8)
    with pytest.raises(DatasetError, match="more than the"):
        read_idx(tmp_path / "huge-idx2-ubyte")
    (tmp_path / "long-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x02abc")
    with pytest.raises(DatasetError, match="found more bytes"):
        read_idx(tmp_path / "long-idx1-ubyte")


def test_labels_out_of_range_are_refused_at_load(tmp_path):
    arrays = make_fashion(tmp_path)
    labels = arrays["t10k-labels-idx1-ubyte"].copy()
    labels[3] = 10
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels)
    with pytest.raises(DatasetError, match=r"test labels range over 0..10, outside 0..9"):
        FashionMNISTDataModule(data_dir=str(tmp_path), val_size=10).setup("fit")


def test_read_idx_bad_gzip(tmp_path):
    path = tmp_path / "bad-idx1-ubyte.gz"
    path.write_bytes(b"not gzip")
    with pytest.raises(DatasetError, match="bad-idx1-ubyte.gz"):
        read_idx(path)


def test_malformed_fashion_file_names_it(tmp_path):
    make_fashion(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x09"))
    dm = FashionMNISTDataModule(data_dir=str(tmp_path), val_size=10)
    with pytest.raises(DatasetError, match="t10k-labels-idx1-ubyte.gz"):
        dm.setup("fit")


# -------------------- Fashion-MNIST


def test_fashion_flat_layout(tmp_path):
    arrays = make_fashion(tmp_path)
    dm = FashionMNISTDataModule(data_dir=str(tmp_path), batch_size=8, eval_batch_size=20, val_size=10)
    dm.prepare_data()
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (40, 10, N_TEST)
    assert (dm.num_classes, dm.in_chans, dm.input_size) == (10, 1, (28, 28))
    assert len(dm.class_names) == 10

    x, y = first_batch(dm.train_dataloader())
    assert x.shape == (8, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    # the test set is exactly the file, scaled and normalised, in file order
    x, y = first_batch(dm.test_dataloader())
    raw = torch.from_numpy(arrays["t10k-images-idx3-ubyte"]).float().unsqueeze(1) / 255
    torch.testing.assert_close(x, (raw - 0.2860) / 0.3530)
    assert y.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    x, y = first_batch(dm.predict_dataloader())
    assert len(x) == N_TEST


def test_fashion_torchvision_layout_ungzipped(tmp_path):
    make_fashion(tmp_path / "FashionMNIST" / "raw", gz=False)
    dm = FashionMNISTDataModule(data_dir=str(tmp_path), val_size=0.2, train_subset=7, test_subset=5)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (7, 10, 5)
    assert all(0 <= int(y) < 10 for _, y in dm.train_set)


def test_fashion_found_in_system_folder_and_cache(tmp_path, monkeypatch):
    make_fashion(tmp_path / "system")
    monkeypatch.setattr(fashion_mnist, "SYSTEM_FASHION_MNIST_DIR", str(tmp_path / "system"))
    (tmp_path / "empty").mkdir()
    dm = FashionMNISTDataModule(data_dir=str(tmp_path / "empty"), val_size=10)
    dm.setup()
    assert len(dm.test_set) == N_TEST
    # a data_dir that does not exist is a typo, not a reason to train on the copy found elsewhere
    with pytest.raises(DatasetError, match="is not a folder"):
        FashionMNISTDataModule(data_dir=str(tmp_path / "typo"), val_size=10)

    monkeypatch.setattr(fashion_mnist, "SYSTEM_FASHION_MNIST_DIR", str(tmp_path / "gone"))
    monkeypatch.setenv("IAMNN_DATA", str(tmp_path / "cache"))
    make_fashion(tmp_path / "cache" / "FashionMNIST" / "raw")
    dm = FashionMNISTDataModule(val_size=10)
    dm.setup()
    assert len(dm.test_set) == N_TEST


def test_fashion_missing_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    dm = FashionMNISTDataModule(data_dir=str(empty))
    with pytest.raises(DatasetNotFoundError) as info:
        dm.prepare_data()
    msg = str(info.value)
    assert "\n" not in msg
    assert str(empty) in msg and fashion_mnist.SYSTEM_FASHION_MNIST_DIR in msg and "no network" in msg
    assert "apt-get install dataset-fashion-mnist" in msg
    assert isinstance(info.value, DatasetError) and isinstance(info.value, RuntimeError)


def test_split_is_deterministic_by_seed(tmp_path):
    make_fashion(tmp_path)

    def val_indices(seed):
        dm = FashionMNISTDataModule(data_dir=str(tmp_path), val_size=10, seed=seed)
        dm.setup()
        assert not set(dm.val_set.indices) & set(dm.train_set.indices)
        return list(dm.val_set.indices)

    assert val_indices(0) == val_indices(0)
    assert val_indices(0) != val_indices(1)


def test_no_val_split_validates_on_test(tmp_path):
    make_fashion(tmp_path)
    dm = FashionMNISTDataModule(data_dir=str(tmp_path), val_size=0)
    dm.setup()
    assert dm.val_set is None and len(dm.train_set) == N_TRAIN
    assert dm.val_dataloader().dataset is dm.test_set


def test_val_size_too_large(tmp_path):
    make_fashion(tmp_path)
    with pytest.raises(DatasetError, match="val_size"):
        FashionMNISTDataModule(data_dir=str(tmp_path)).setup()  # default 5000 > 50 samples


def test_augmentation_train_only(tmp_path):
    make_fashion(tmp_path)
    dm = FashionMNISTDataModule(data_dir=str(tmp_path), val_size=10)
    dm.setup()
    torch.manual_seed(0)
    a = torch.stack([dm.train_set[i][0] for i in range(20)])
    b = torch.stack([dm.train_set[i][0] for i in range(20)])
    assert not torch.equal(a, b)
    assert torch.equal(dm.test_set[3][0], dm.test_set[3][0])
    assert torch.equal(dm.val_set[3][0], dm.val_set[3][0])

    plain = FashionMNISTDataModule(data_dir=str(tmp_path), val_size=10, augment=False)
    plain.setup()
    assert torch.equal(plain.train_set[0][0], plain.train_set[0][0])


def test_translation_and_flip_keep_content():
    img = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4).repeat(200, 1, 1, 1)
    ds = data.TensorImageDataset(img, torch.zeros(200), pad=1, flip=True)
    out = torch.stack([x for x, _ in ds.__getitems__(list(range(200)))])
    assert out.shape == (200, 1, 4, 4)
    # a shift by <= 1 px keeps the 2x2 centre of the 4x4 image somewhere inside
    centre = img[0, 0, 1:3, 1:3].float() / 255
    for x in out[:20, 0]:
        ok = any(torch.equal(x[i : i + 2, j : j + 2], c) for i in range(3) for j in range(3)
                 for c in (centre, centre.flip(-1)))  # fmt: skip
        assert ok
    assert len({tuple(x.flatten().tolist()) for x in out}) > 5


def test_raw_test_images(tmp_path):
    arrays = make_fashion(tmp_path)
    dm = FashionMNISTDataModule(data_dir=str(tmp_path), test_subset=4)
    raw = dm.test_dataset_raw()
    assert len(raw) == 4
    x, y = raw[1]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    torch.testing.assert_close(x[0] * 255, torch.from_numpy(arrays["t10k-images-idx3-ubyte"][1]).float())
    assert int(y) == 1


# -------------------- CIFAR


def write_pickle(path: Path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def cifar_images(n: int, rng) -> np.ndarray:
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8)


def make_cifar10(root: Path, per_batch: int = 4, n_test: int = 6) -> Path:
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(1, 6):
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        write_pickle(folder / f"data_batch_{i}", {b"batch_label": b"x", b"labels": labels,
                                                  b"data": cifar_images(per_batch, rng)})  # fmt: skip
    test = cifar_images(n_test, rng)
    test[0] = 0
    test[0, :1024] = 255  # image 0 is pure red: rows are R, G, B planes of 32x32
    write_pickle(folder / "test_batch", {b"labels": list(range(n_test)), b"data": test})
    write_pickle(folder / "batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)]})
    return folder


@pytest.mark.parametrize("point_at_folder", [False, True])
def test_cifar10(tmp_path, point_at_folder):
    folder = make_cifar10(tmp_path)
    dm = CIFAR10DataModule(data_dir=str(folder if point_at_folder else tmp_path), batch_size=5, val_size=4)
    dm.prepare_data()
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (16, 4, 6)
    assert (dm.num_classes, dm.in_chans, dm.input_size) == (10, 3, (32, 32))
    assert dm.class_names == [f"c{i}" for i in range(10)]
    x, y = first_batch(dm.train_dataloader())
    assert x.shape == (5, 3, 32, 32) and x.dtype == torch.float32 and y.max() < 10
    x, y = first_batch(dm.test_dataloader())
    mean, std = torch.tensor(dm.mean), torch.tensor(dm.std)
    torch.testing.assert_close(x[0, :, 5, 5], (torch.tensor([1.0, 0, 0]) - mean) / std)
    assert y.tolist() == list(range(5))


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar_pickle_that_would_run_code_is_refused(tmp_path):
    folder = make_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    write_pickle(folder / "data_batch_3", {b"labels": [0], b"data": _RunsCode(marker)})
    dm = CIFAR10DataModule(data_dir=str(tmp_path), val_size=2)
    with pytest.raises(DatasetError, match="data_batch_3.*refused to unpickle posix.system"):
        dm.setup()
    assert not marker.exists()


def test_cifar_pickle_protocol2_arrays_load(tmp_path):  # the real files are Python-2 pickles
    folder = make_cifar10(tmp_path)
    batch = {b"labels": [1, 2], b"data": np.full((2, 3072), 7, dtype=np.uint8)}
    (folder / "data_batch_1").write_bytes(pickle.dumps(batch, protocol=2))
    dm = CIFAR10DataModule(data_dir=str(tmp_path), val_size=2, augment=False)
    dm.setup()
    assert len(dm.train_set) + len(dm.val_set) == 2 + 4 * 4


def test_cifar100(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name, n in (("train", 30), ("test", 10)):
        write_pickle(folder / name, {b"data": cifar_images(n, rng), b"fine_labels": list(range(70, 70 + n)),
                                     b"coarse_labels": [0] * n})  # fmt: skip
    write_pickle(folder / "meta", {b"fine_label_names": [f"f{i}".encode() for i in range(100)],
                                   b"coarse_label_names": [b"c"] * 20})  # fmt: skip
    dm = CIFAR100DataModule(data_dir=str(tmp_path), batch_size=10, val_size=5, augment=False)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set), dm.num_classes) == (25, 5, 10, 100)
    assert dm.class_names[99] == "f99"
    x, y = first_batch(dm.train_dataloader())
    assert x.shape == (10, 3, 32, 32) and 70 <= y.min() and y.max() < 100
    assert len(CIFAR100DataModule.class_names) == 100


def test_cifar_missing_error(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        CIFAR10DataModule(data_dir=str(tmp_path)).prepare_data()
    assert "\n" not in str(info.value) and str(tmp_path) in str(info.value)


# -------------------- ImageFolder


def make_image_folder(root: Path, classes=("ant", "bee", "cat"), n_train: int = 4, n_val: int = 2) -> None:
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i}.png")


def test_image_folder(tmp_path):
    make_image_folder(tmp_path)
    dm = ImageFolderDataModule(data_dir=str(tmp_path), batch_size=4, val_size=3, image_size=16)
    assert (dm.num_classes, dm.class_names, dm.in_chans) == (3, ["ant", "bee", "cat"], 3)
    assert dm.input_size == (16, 16)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (9, 3, 6)
    x, y = first_batch(dm.train_dataloader())
    assert x.shape == (4, 3, 16, 16) and x.dtype == torch.float32
    x, y = first_batch(dm.test_dataloader())
    assert y.tolist() == [0, 0, 1, 1]
    assert torch.equal(dm.test_set[0][0], dm.test_set[0][0]) and x.min() < 0  # normalised
    raw_x, _ = dm.test_dataset_raw()[0]
    assert raw_x.shape == (3, 16, 16) and 0 <= raw_x.min() and raw_x.max() <= 1


def test_image_folder_val_missing_a_class_keeps_indices(tmp_path):
    make_image_folder(tmp_path)
    for f in (tmp_path / "val" / "ant").iterdir():
        f.unlink()
    dm = ImageFolderDataModule(data_dir=str(tmp_path), val_size=0.25, image_size=8)
    dm.setup()
    assert sorted({y for _, y in dm.test_set.samples}) == [1, 2]


def test_image_folder_missing(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="train/ and val/"):
        _ = ImageFolderDataModule(data_dir=str(tmp_path)).num_classes


# -------------------- digits, registry, helpers


def test_digits():
    dm = DigitsDataModule(batch_size=32)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (1300, 200, 297)
    assert (dm.num_classes, dm.in_chans, dm.input_size) == (10, 1, (16, 16))
    x, y = first_batch(dm.train_dataloader())
    assert x.shape == (32, 1, 16, 16) and y.min() >= 0 and y.max() < 10
    assert abs(float(x.mean())) < 0.5  # normalised
    raw, _ = dm.test_dataset_raw()[0]
    assert raw.shape == (1, 16, 16) and 0 <= raw.min() and raw.max() <= 1

    small = DigitsDataModule(image_size=8, val_size=0.1)
    small.setup()
    assert small.test_set[0][0].shape == (1, 8, 8) and len(small.val_set) == 150


def test_digits_loader_with_worker():
    dm = DigitsDataModule(batch_size=64, num_workers=1, train_subset=128, augment=True)
    dm.setup()
    loader = dm.train_dataloader()
    assert loader.persistent_workers
    try:
        assert sum(len(x) for x, _ in loader) == 128
    finally:
        # Stop the persistent worker now, as Lightning does at teardown; left to the garbage collector
        # it can stall a later test for DataLoader's 5 s status-check timeout.
        loader._iterator._shutdown_workers()


def test_pickle_roundtrip(tmp_path):
    make_fashion(tmp_path)
    dm = FashionMNISTDataModule(data_dir=str(tmp_path), val_size=10)
    dm.setup()
    clone = pickle.loads(pickle.dumps(dm))
    assert torch.equal(clone.test_set[0][0], dm.test_set[0][0])
    make_image_folder(tmp_path / "imgs")
    folder = ImageFolderDataModule(data_dir=str(tmp_path / "imgs"), val_size=2, image_size=8)
    folder.setup()
    assert len(pickle.loads(pickle.dumps(folder)).train_set) == 10


def test_registry(tmp_path):
    assert set(data.DATAMODULES) == {"fashion_mnist", "cluttered_fashion_mnist", "cifar10", "cifar100", "imagenet",
                                     "imagefolder", "digits"}  # fmt: skip
    dm = create_datamodule("digits", batch_size=7)
    assert isinstance(dm, DigitsDataModule) and dm.batch_size == dm.eval_batch_size == 7
    assert dm.hparams["batch_size"] == 7 and dm.hparams["image_size"] == 16
    with pytest.raises(DatasetError, match="unknown data module 'mnist'"):
        create_datamodule("mnist")


def test_ensure_fashion_mnist(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(fashion_mnist.subprocess, "run", lambda cmd, **kw: calls.append(cmd) or _Done())
    monkeypatch.setattr(fashion_mnist.shutil, "which", lambda name: name)
    monkeypatch.setattr(fashion_mnist.os, "geteuid", lambda: 1000, raising=False)
    data.ensure_fashion_mnist()
    assert calls == []  # not root

    monkeypatch.setattr(fashion_mnist.os, "geteuid", lambda: 0, raising=False)
    data.ensure_fashion_mnist()
    assert calls == [["apt-get", "update"], ["apt-get", "install", "-y", "dataset-fashion-mnist"]]

    calls.clear()
    make_fashion(tmp_path / "system")
    monkeypatch.setattr(fashion_mnist, "SYSTEM_FASHION_MNIST_DIR", str(tmp_path / "system"))
    data.ensure_fashion_mnist()
    assert calls == []  # already installed


class _Done:
    returncode = 0


def test_lightning_fit_smoke():
    import lightning as L

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16 * 16, 10))

        def training_step(self, batch, _):
            x, y = batch
            return torch.nn.functional.cross_entropy(self.net(x), y)

        def validation_step(self, batch, _):
            x, y = batch
            self.log("val_loss", torch.nn.functional.cross_entropy(self.net(x), y))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = L.Trainer(fast_dev_run=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False)  # fmt: skip
    trainer.fit(Tiny(), datamodule=DigitsDataModule(batch_size=16))


def test_an_empty_image_folder_is_a_dataset_error(tmp_path):
    from iamnn.data import ImageFolderDataModule

    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    with pytest.raises(DatasetError, match="Couldn't find any class folder"):
        ImageFolderDataModule(data_dir=str(tmp_path)).setup("fit")
    (tmp_path / "train" / "cats").mkdir()
    (tmp_path / "train" / "dogs").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "train" / "dogs" / "0.png")
    with pytest.raises(DatasetError, match="Found no valid file for the classes cats"):
        ImageFolderDataModule(data_dir=str(tmp_path)).setup("fit")
