"""Digit domains read from their public releases under `--data-dir`: `DigitFive` and friends.

Every domain becomes one environment of uint8 `[N, 3, 32, 32]` images (grey digits copied to
three channels, smaller digits resized bilinearly to 32x32, as Digit-Five setups do) with labels
0-9; a release's train and test files are concatenated (the trainer makes its own splits).

Files looked for under `--data-dir` (the first listed folder that holds all of a domain's files):

* mnist: `{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]` in `MNIST/raw/`, `raw/`, `.` or
  `MNIST/` (LeCun et al.'s idx files, torchvision's layout);
* usps: `usps.bz2` and `usps.t.bz2` (or unpacked `usps`, `usps.t`) in `USPS/`, `usps/` or `.`
  (the LIBSVM data sets page's libsvm text files, which torchvision's USPS also reads);
* svhn: `train_32x32.mat`, `test_32x32.mat` in `SVHN/`, `svhn/` or `.` (Netzer et al. 2011,
  format 2, cropped digits);
* syn: `synth_train_32x32.mat`, `synth_test_32x32.mat` in `SynthDigits/`, `syn/` or `.`
  (Ganin & Lempitsky 2015's synthetic digits, SVHN's .mat format);
* mnist_m: `mnist_m/mnist_m_{train,test}/*.png` listed with labels in
  `mnist_m/mnist_m_{train,test}_labels.txt` (Ganin & Lempitsky 2015).

Decoded domains are cached in `shiftbench.paths.cache_dir()` under a key that hashes the source
files' paths, sizes and modification times.
"""

from __future__ import annotations

import bz2
import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from shiftbench.datasets.base import (
    DATASETS,
    MultiDomainDataset,
    TensorDomain,
    register_dataset,
    resolve_inside,
)
from shiftbench.datasets.cache_files import load_tensors, save_tensors
from shiftbench.datasets.lookup import DIGIT_RELEASES
from shiftbench.datasets.mnist import _read_idx_set
from shiftbench.errors import ShiftbenchError
from shiftbench.paths import cache_dir

SIZE = 32
CACHE_VERSION = 1


# --------------------------------------------------------------------------------------------
# Readers, one per release format


def read_usps(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A LIBSVM-format USPS file: lines `label 1:v1 2:v2 ... 256:v256`, labels 1-10 for digits
    0-9, values in [-1, 1] (absent features are 0). Returns uint8 [N, 16, 16] and int64 [N]."""
    opener = bz2.open if path.suffix == ".bz2" else open
    images, labels = [], []
    with opener(path, "rt") as f:
        for line_no, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            try:
                label = int(float(parts[0]))
                row = np.zeros(256, dtype=np.float32)
                for item in parts[1:]:
                    index, value = item.split(":")
                    row[int(index) - 1] = float(value)
            except (ValueError, IndexError) as e:
                raise ShiftbenchError(f"{path}, line {line_no}: not a USPS libsvm line "
                                      f"(label 1-10 then index:value with index 1-256): {e}"
                                      ) from e
            if not 1 <= label <= 10:
                raise ShiftbenchError(f"{path}, line {line_no}: label {label} is not in 1-10")
            images.append(row)
            labels.append(label - 1)
    if not images:
        raise ShiftbenchError(f"{path} holds no examples")
    x = np.clip((np.stack(images) + 1.0) * 127.5, 0, 255).round().astype(np.uint8)
    return x.reshape(-1, 16, 16), np.asarray(labels, dtype=np.int64)


def read_svhn_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """An SVHN-format .mat file: `X` uint8 [32, 32, 3, N], `y` [N, 1] with 10 standing for 0.
    Returns uint8 [N, 3, 32, 32] and int64 [N]."""
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(path))
    except (ValueError, OSError, NotImplementedError) as e:
        raise ShiftbenchError(f"cannot read {path} as a MATLAB file: {e}") from e
    if "X" not in mat or "y" not in mat:
        raise ShiftbenchError(f"{path}: expected variables X and y (SVHN format), found "
                              f"{', '.join(k for k in mat if not k.startswith('__'))}")
    x, y = mat["X"], np.asarray(mat["y"]).reshape(-1).astype(np.int64)
    if x.ndim != 4 or x.shape[2] != 3 or x.shape[3] != len(y):
        raise ShiftbenchError(f"{path}: X has shape {x.shape}, expected (H, W, 3, {len(y)})")
    y[y == 10] = 0
    if y.min() < 0 or y.max() > 9:
        raise ShiftbenchError(f"{path}: labels outside 0-10")
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1), dtype=np.uint8), y


def read_mnist_m_split(folder: Path, labels_file: Path) -> tuple[np.ndarray, np.ndarray]:
    """MNIST-M: `<name>.png <label>` lines; images are read from `folder` (never outside it)."""
    from PIL import Image

    images, labels = [], []
    for line_no, line in enumerate(labels_file.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not parts[1].isdigit() or not 0 <= int(parts[1]) <= 9:
            raise ShiftbenchError(f"{labels_file}, line {line_no}: expected '<image> <digit>', "
                                  f"got {line!r}")
        path = resolve_inside(folder, parts[0], labels_file)
        try:
            with Image.open(path) as im:
                images.append(np.asarray(im.convert("RGB")))
        except OSError as e:
            raise ShiftbenchError(f"cannot read image {path} (listed in {labels_file}): {e}"
                                  ) from e
        labels.append(int(parts[1]))
    if not images:
        raise ShiftbenchError(f"{labels_file} lists no images")
    shapes = {a.shape for a in images}
    if len(shapes) != 1:
        raise ShiftbenchError(f"{folder}: images of several sizes {sorted(shapes)}")
    return np.stack(images).transpose(0, 3, 1, 2), np.asarray(labels, dtype=np.int64)


# --------------------------------------------------------------------------------------------
# Domains


@dataclass(frozen=True)
class DigitDomain:
    name: str
    files: str  # what is looked for, for messages
    url: str
    licence: str
    find: Callable[[str | None], dict[str, Path] | None]
    read: Callable[[dict[str, Path]], tuple[np.ndarray, np.ndarray]]


def _read_mnist(files: dict[str, Path]) -> tuple[np.ndarray, np.ndarray]:
    x, y = _read_idx_set(files)
    return x, y.astype(np.int64)


def _read_pairs(reader, keys: Sequence[str]):
    def read(files: dict[str, Path]) -> tuple[np.ndarray, np.ndarray]:
        parts = [reader(files[k]) for k in keys]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    return read


def _read_mnist_m(files: dict[str, Path]) -> tuple[np.ndarray, np.ndarray]:
    root = files["mnist_m_train_labels.txt"].parent
    train = read_mnist_m_split(root / "mnist_m_train", files["mnist_m_train_labels.txt"])
    test = read_mnist_m_split(root / "mnist_m_test", files["mnist_m_test_labels.txt"])
    return np.concatenate([train[0], test[0]]), np.concatenate([train[1], test[1]])


# How each release is read, by domain name (where it is found: `lookup.DIGIT_RELEASES`).
READERS: dict[str, Callable[[dict[str, Path]], tuple[np.ndarray, np.ndarray]]] = {
    "mnist": _read_mnist,
    "mnist_m": _read_mnist_m,
    "svhn": _read_pairs(read_svhn_mat, ("train_32x32.mat", "test_32x32.mat")),
    "syn": _read_pairs(read_svhn_mat, ("synth_train_32x32.mat", "synth_test_32x32.mat")),
    "usps": _read_pairs(read_usps, ("usps.bz2", "usps.t.bz2")),
}
DOMAINS: dict[str, DigitDomain] = {
    name: DigitDomain(r.name, r.files, r.url, r.licence, r.find, READERS[name])
    for name, r in DIGIT_RELEASES.items()}


def to_rgb32(x: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W] or [N, 3, H, W] -> uint8 [N, 3, 32, 32] (bilinear, antialiased)."""
    t = torch.from_numpy(np.ascontiguousarray(x))
    if t.dim() == 3:
        t = t[:, None]
    if t.shape[-2:] != (SIZE, SIZE):
        chunks = [F.interpolate(c.float(), size=(SIZE, SIZE), mode="bilinear",
                                align_corners=False, antialias=True)
                  for c in t.split(4096)]
        t = torch.cat(chunks).round_().clamp_(0, 255).to(torch.uint8)
    return t.expand(-1, 3, -1, -1).contiguous() if t.shape[1] == 1 else t.contiguous()


def load_domain(name: str, data_dir: str | None, use_cache: bool = True,
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """One domain as (uint8 [N, 3, 32, 32], int64 [N]), from the cache when the files match."""
    domain = DOMAINS[name]
    files = domain.find(data_dir)
    if files is None:
        raise ShiftbenchError(f"digit domain {name!r}: files not found under {data_dir} "
                              f"(expected {domain.files}; get them from {domain.url})")
    h = hashlib.sha256(f"v{CACHE_VERSION}|{name}|{SIZE}".encode())
    for key in sorted(files):
        st = os.stat(files[key])
        h.update(f"|{Path(files[key]).resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    path = cache_dir() / f"digit-{name}-{h.hexdigest()[:16]}.pt"
    cached = load_tensors(path, lambda data: (data["x"], data["y"])) if use_cache else None
    if cached is not None:
        return cached
    x, y = domain.read(files)
    out = to_rgb32(x), torch.from_numpy(np.asarray(y, dtype=np.int64))
    if use_cache:
        save_tensors(path, {"x": out[0], "y": out[1]})
    return out


def missing_domains(names: Sequence[str], data_dir: str | None) -> list[str]:
    return [n for n in names if DOMAINS[n].find(data_dir) is None]


def _missing_message(dataset: str, missing: Sequence[str], data_dir: str | None) -> str:
    lines = [f"{dataset}: {len(missing)} digit domain(s) missing under --data-dir "
             f"{data_dir or '(not given)'}:"]
    lines += [f"  {n}: expected {DOMAINS[n].files}; get it from {DOMAINS[n].url}"
              for n in missing]
    return "\n".join(lines)


class DigitFilesDataset(MultiDomainDataset):
    """Digit domains from files; every domain in `ENVIRONMENTS` must be present."""

    INPUT_SHAPE = (3, SIZE, SIZE)
    NUM_CLASSES = 10
    CLASSES = tuple(str(d) for d in range(10))
    N_STEPS = 5001
    CHECKPOINT_FREQ = 500

    def __init__(self, root, test_envs, hparams):
        super().__init__(root, test_envs, hparams)
        missing = missing_domains(self.ENVIRONMENTS, root)
        if missing:
            raise ShiftbenchError(_missing_message(type(self).__name__, missing, root))
        self.datasets = [TensorDomain(*load_domain(n, root), name=n) for n in self.ENVIRONMENTS]


@register_dataset
class DigitFive(DigitFilesDataset):
    """Digit-Five (Peng et al. 2019 / Xu et al. 2018): MNIST, MNIST-M, SVHN, SynDigits, USPS
    from their own releases, 3x32x32."""

    ENVIRONMENTS = ("mnist", "mnist_m", "svhn", "syn", "usps")
    SOURCE = "MNIST idx, MNIST-M png+labels, SVHN .mat, SynthDigits .mat, USPS libsvm files"


def register_digit_files(name: str, data_dir: str | os.PathLike,
                         domains: Sequence[str] | None = None, overwrite: bool = False,
                         ) -> type[MultiDomainDataset]:
    """Register dataset `name` with the digit domains present under `data_dir` (in the order
    mnist, mnist_m, svhn, syn, usps), or exactly `domains` (all of which must be present)."""
    data_dir = str(data_dir)
    if domains is not None:
        unknown = [d for d in domains if d not in DOMAINS]
        if unknown:
            from shiftbench.errors import UnknownNameError

            raise UnknownNameError("digit domain", unknown[0], DOMAINS)
        missing = missing_domains(domains, data_dir)
        if missing:
            raise ShiftbenchError(_missing_message(name, missing, data_dir))
        chosen = tuple(domains)
    else:
        chosen = tuple(n for n in DOMAINS if DOMAINS[n].find(data_dir) is not None)
        if len(chosen) < 2:
            missing = [n for n in DOMAINS if n not in chosen]
            raise ShiftbenchError(_missing_message(name, missing, data_dir) +
                                  f"\n(found {', '.join(chosen) or 'none'}; at least 2 needed)")
    attrs = dict(ENVIRONMENTS=chosen, SOURCE=f"digit files in {data_dir}",
                 __doc__=f"Digit domains {', '.join(chosen)} from {data_dir}.")
    return DATASETS.register(name, overwrite=overwrite)(
        type(name, (DigitFilesDataset,), attrs))
