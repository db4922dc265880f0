"""Digit domains read from their public release layouts, on tiny fixtures in those formats."""

from __future__ import annotations

import bz2
import gzip
import os
import uuid
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from shiftbench.datasets import digit_files as D
from shiftbench.datasets import get_dataset_class
from shiftbench.datasets.base import resolve_inside
from shiftbench.errors import ShiftbenchError, UnknownNameError


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SHIFTBENCH_CACHE", str(tmp_path / "cache"))


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def make_mnist(root: Path, n_train=20, n_test=10) -> None:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rs = np.random.RandomState(0)
    write_idx(raw / "train-images-idx3-ubyte.gz", rs.randint(0, 256, (n_train, 28, 28)))
    write_idx(raw / "train-labels-idx1-ubyte.gz", np.arange(n_train) % 10)
    write_idx(raw / "t10k-images-idx3-ubyte.gz", rs.randint(0, 256, (n_test, 28, 28)))
    write_idx(raw / "t10k-labels-idx1-ubyte.gz", np.arange(n_test) % 10)


def usps_lines(n: int, seed: int) -> list[str]:
    rs = np.random.RandomState(seed)
    lines = []
    for i in range(n):
        values = rs.uniform(-1, 1, 256)
        values[5] = 0.0  # absent from the line: libsvm's sparse zero
        feats = " ".join(f"{j + 1}:{v:.6f}" for j, v in enumerate(values) if j != 5)
        lines.append(f"{i % 10 + 1} {feats}")
    return lines


def make_usps(root: Path, n_train=12, n_test=7) -> None:
    (root / "USPS").mkdir(parents=True)
    for name, n, seed in (("usps.bz2", n_train, 0), ("usps.t.bz2", n_test, 1)):
        with bz2.open(root / "USPS" / name, "wt") as f:
            f.write("\n".join(usps_lines(n, seed)) + "\n")


def write_svhn_mat(path: Path, n: int, seed: int) -> np.ndarray:
    rs = np.random.RandomState(seed)
    x = rs.randint(0, 256, (32, 32, 3, n)).astype(np.uint8)
    y = (np.arange(n) % 10).reshape(-1, 1)
    y[y == 0] = 10  # SVHN stores the digit 0 as label 10
    scipy.io.savemat(path, {"X": x, "y": y})
    return x


def make_svhn(root: Path, folder="SVHN", prefix="") -> None:
    (root / folder).mkdir(parents=True)
    write_svhn_mat(root / folder / f"{prefix}train_32x32.mat", 15, 0)
    write_svhn_mat(root / folder / f"{prefix}test_32x32.mat", 5, 1)


def make_mnist_m(root: Path, n_train=10, n_test=4) -> None:
    base = root / "mnist_m"
    rs = np.random.RandomState(2)
    for split, n in (("train", n_train), ("test", n_test)):
        (base / f"mnist_m_{split}").mkdir(parents=True)
        lines = []
        for i in range(n):
            name = f"{i:08d}.png"
            Image.fromarray(rs.randint(0, 256, (28, 28, 3), dtype=np.uint8)).save(
                base / f"mnist_m_{split}" / name)
            lines.append(f"{name} {(i * 3) % 10}")
        (base / f"mnist_m_{split}_labels.txt").write_text("\n".join(lines) + "\n")


def make_all(root: Path) -> None:
    make_mnist(root)
    make_usps(root)
    make_svhn(root)
    make_svhn(root, "SynthDigits", "synth_")
    make_mnist_m(root)


def test_digit_five_from_release_layouts(tmp_path):
    make_all(tmp_path)
    ds = get_dataset_class("DigitFive")(str(tmp_path), [0], {})
    assert ds.environments == ["mnist", "mnist_m", "svhn", "syn", "usps"]
    assert [len(e) for e in ds.datasets] == [30, 14, 20, 20, 19]
    for env in ds.datasets:
        assert env.x.shape[1:] == (3, 32, 32) and env.x.dtype == torch.uint8
        assert env.y.dtype == torch.int64 and 0 <= int(env.y.min()) and int(env.y.max()) <= 9
    assert ds[0].y[:10].tolist() == list(range(10))
    assert ds[1].y[:4].tolist() == [0, 3, 6, 9]
    assert ds[2].y[:10].tolist() == list(range(10))  # label 10 read as digit 0
    assert ds[4].y[:10].tolist() == list(range(10))  # libsvm labels 1-10 -> 0-9


def test_svhn_pixels_and_usps_values(tmp_path):
    make_svhn(tmp_path)
    x = write_svhn_mat(tmp_path / "SVHN" / "train_32x32.mat", 15, 0)
    images, labels = D.read_svhn_mat(tmp_path / "SVHN" / "train_32x32.mat")
    assert images.shape == (15, 3, 32, 32)
    assert np.array_equal(images[3, 1], x[:, :, 1, 3])  # [row, col, channel, index]
    path = tmp_path / "u"
    path.write_text("3 1:-1 2:1 3:0\n")
    img, lab = D.read_usps(path)
    assert lab.tolist() == [2] and img.shape == (1, 16, 16)
    assert img[0, 0, :4].tolist() == [0, 255, 128, 128]  # absent features are 0 -> mid grey


def test_mnist_m_pixels(tmp_path):
    make_mnist_m(tmp_path)
    x, y = D.load_domain("mnist_m", str(tmp_path), use_cache=False)
    first = np.asarray(Image.open(tmp_path / "mnist_m" / "mnist_m_train" / "00000000.png"))
    resized = D.to_rgb32(first.transpose(2, 0, 1)[None])
    assert torch.equal(x[0], resized[0])


def test_missing_domains_are_listed(tmp_path):
    make_mnist(tmp_path)
    make_usps(tmp_path)
    with pytest.raises(ShiftbenchError) as e:
        get_dataset_class("DigitFive")(str(tmp_path), [0], {})
    msg = str(e.value)
    assert "3 digit domain(s) missing" in msg
    for name in ("mnist_m", "svhn", "syn"):
        assert f"  {name}: expected" in msg
    assert "  usps:" not in msg and "  mnist:" not in msg


def test_register_digit_files_uses_present_domains(tmp_path):
    make_mnist(tmp_path)
    make_usps(tmp_path)
    make_svhn(tmp_path)
    name = "Digits" + uuid.uuid4().hex[:8]
    cls = D.register_digit_files(name, tmp_path)
    assert cls.ENVIRONMENTS == ("mnist", "svhn", "usps")
    assert get_dataset_class(name) is cls
    ds = cls(str(tmp_path), [1], {})
    assert [len(e) for e in ds.datasets] == [30, 20, 19]
    with pytest.raises(ShiftbenchError, match="mnist_m: expected"):
        D.register_digit_files(name + "b", tmp_path, domains=["usps", "mnist_m"])
    with pytest.raises(UnknownNameError, match="'mnistm'"):
        D.register_digit_files(name + "c", tmp_path, domains=["mnistm"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ShiftbenchError, match="found none; at least 2 needed"):
        D.register_digit_files(name + "d", empty)


def test_cache_is_keyed_by_the_files(tmp_path):
    make_usps(tmp_path)
    a = D.load_domain("usps", str(tmp_path))
    assert len(list((tmp_path / "cache").glob("digit-usps-*.pt"))) == 1
    b = D.load_domain("usps", str(tmp_path))
    assert torch.equal(a[0], b[0])
    with bz2.open(tmp_path / "USPS" / "usps.t.bz2", "wt") as f:
        f.write("\n".join(usps_lines(3, 5)) + "\n")
    st = os.stat(tmp_path / "USPS" / "usps.t.bz2")
    os.utime(tmp_path / "USPS" / "usps.t.bz2", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    c = D.load_domain("usps", str(tmp_path))
    assert len(c[0]) == 15


def test_bad_files_are_clear_errors(tmp_path):
    bad = tmp_path / "bad"
    bad.write_text("11 1:0.5\n")
    with pytest.raises(ShiftbenchError, match="line 1: label 11 is not in 1-10"):
        D.read_usps(bad)
    bad.write_text("3 1:0.5 x\n")
    with pytest.raises(ShiftbenchError, match="not a USPS libsvm line"):
        D.read_usps(bad)
    scipy.io.savemat(tmp_path / "m.mat", {"images": np.zeros((2, 2))})
    with pytest.raises(ShiftbenchError, match="expected variables X and y"):
        D.read_svhn_mat(tmp_path / "m.mat")
    make_mnist_m(tmp_path)
    labels = tmp_path / "mnist_m" / "mnist_m_test_labels.txt"
    labels.write_text("00000000.png seven\n")
    with pytest.raises(ShiftbenchError, match="line 1: expected '<image> <digit>'"):
        D.load_domain("mnist_m", str(tmp_path), use_cache=False)


def test_list_files_cannot_escape_the_data_dir(tmp_path):
    make_mnist_m(tmp_path / "data")
    secret = tmp_path / "secret.png"
    Image.new("RGB", (28, 28)).save(secret)
    labels = tmp_path / "data" / "mnist_m" / "mnist_m_test_labels.txt"
    labels.write_text("../../secret.png 1\n")
    with pytest.raises(ShiftbenchError, match=r"'\.\./\.\./secret\.png' is not inside"):
        D.load_domain("mnist_m", str(tmp_path / "data"), use_cache=False)
    labels.write_text(f"{secret} 1\n")
    with pytest.raises(ShiftbenchError, match="absolute paths"):
        D.load_domain("mnist_m", str(tmp_path / "data"), use_cache=False)
    (tmp_path / "data" / "mnist_m" / "mnist_m_test" / "link.png").symlink_to(secret)
    labels.write_text("link.png 1\n")
    with pytest.raises(ShiftbenchError, match="outside .*symlink"):
        D.load_domain("mnist_m", str(tmp_path / "data"), use_cache=False)
    # a symlink that stays inside is fine
    inside = tmp_path / "data" / "mnist_m" / "mnist_m_test"
    (inside / "alias.png").symlink_to(inside / "00000001.png")
    assert resolve_inside(inside, "alias.png", labels) == (inside / "00000001.png").resolve()


def test_data_command_reports_digit_domains(tmp_path, capsys):
    import json

    from shiftbench.cli import main

    make_usps(tmp_path)
    make_svhn(tmp_path)
    assert main(["data", "--data-dir", str(tmp_path), "--json"]) == 0
    rows = {r["dataset"]: r for r in json.loads(capsys.readouterr().out)}
    row = rows["DigitFive"]
    assert row["status"] == "missing mnist, mnist_m, syn (present: svhn, usps)"
    assert row["domains"]["usps"] == "present" and row["domains"]["mnist"] == "missing"
