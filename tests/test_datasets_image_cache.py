"""The memory-mapped image cache: keying, atomic files, equivalence with the PIL pipeline, and
the batched DomainBed augmentation."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from shiftbench.datasets import augment as A
from shiftbench.datasets import get_dataset_class
from shiftbench.datasets import image_cache as C
from shiftbench.datasets.folder import ImageFolderDomain
from shiftbench.errors import ShiftbenchError

PACS_DOMAINS = ("art_painting", "cartoon", "photo", "sketch")
PACS_CLASSES = ("dog", "elephant", "giraffe", "guitar", "horse", "house", "person")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    path = tmp_path / "cache"
    monkeypatch.setenv("SHIFTBENCH_CACHE", str(path))
    monkeypatch.delenv("SHIFTBENCH_IMAGE_CACHE", raising=False)
    return path


def make_pacs(root: Path, per_class: int = 1) -> None:
    rs = np.random.RandomState(0)
    for d in PACS_DOMAINS:
        for c in PACS_CLASSES:
            folder = root / "PACS" / d / c
            folder.mkdir(parents=True)
            for k in range(per_class):
                h, w = rs.randint(20, 40, size=2)
                pixels = rs.randint(0, 256, (h, w, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{k}.{'jpg' if k % 2 else 'png'}")


def test_preprocessed_eval_matches_pil_pipeline(tmp_path, cache):
    make_pacs(tmp_path / "data")
    cls = get_dataset_class("PACS")
    lazy = cls(str(tmp_path / "data"), [0], {"data_augmentation": False})
    assert all(isinstance(e, ImageFolderDomain) for e in lazy.datasets)
    files = cls.preprocess(str(tmp_path / "data"), num_workers=0, log=lambda m: None)
    assert len(files) == 4 and all(f.stat().st_size == 7 * 3 * 224 * 224 for f in files)
    assert all(isinstance(e, ImageFolderDomain)  # a present cache is read only when asked for
               for e in cls(str(tmp_path / "data"), [0], {"data_augmentation": False}).datasets)
    cached = cls(str(tmp_path / "data"), [0], {"data_augmentation": False}, image_cache=True)
    assert all(isinstance(e, C.CachedImageDomain) for e in cached.datasets)
    for a, b in zip(lazy.datasets, cached.datasets):
        assert a.targets == b.targets and a.samples == b.samples
        for i in (0, len(a) - 1):
            xa, ya = a[i]
            xb, yb = b[i]
            assert ya == yb and xb.shape == xa.shape == (3, 224, 224)
            assert torch.allclose(xa, xb, atol=1e-5)
    # a second preprocess finds the cache up to date
    messages = []
    cls.preprocess(str(tmp_path / "data"), num_workers=0, log=messages.append)
    assert all("up to date" in m for m in messages)


def _cache_files(cache: Path, env: str) -> list[Path]:
    return sorted((cache / "images").glob(f"PACS-{env}-*.u8"))


def test_cache_key_follows_the_files(tmp_path, cache):
    make_pacs(tmp_path / "data")
    cls = get_dataset_class("PACS")
    cls.preprocess(str(tmp_path / "data"), num_workers=0, log=lambda m: None)
    base, _, env_samples = cls.scan(str(tmp_path / "data"))
    photo = cls.ENVIRONMENTS.index("P")
    assert C.find_cache("PACS", "P", env_samples[photo], base, 224) is not None
    touched = tmp_path / "data" / "PACS" / "photo" / "dog" / "0.png"
    st = touched.stat()
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    _, _, env_samples = cls.scan(str(tmp_path / "data"))
    assert C.find_cache("PACS", "P", env_samples[photo], base, 224) is None
    stale = _cache_files(cache, "P")
    # loading with the cache rebuilds the touched domain's cache and deletes the stale one
    ds = cls(str(tmp_path / "data"), [0], {}, image_cache=True)
    assert all(isinstance(e, C.CachedImageDomain) for e in ds.datasets)
    assert len(_cache_files(cache, "P")) == 1 and _cache_files(cache, "P") != stale
    # a truncated data file is not used: it is rebuilt
    data = _cache_files(cache, "A")[0]
    with open(data, "r+b") as f:
        f.truncate(100)
    assert C.find_cache("PACS", "A", env_samples[0], base, 224) is None
    ds = cls(str(tmp_path / "data"), [0], {}, image_cache=True)
    assert data.stat().st_size == len(env_samples[0]) * 3 * 224 * 224
    assert not list((cache / "images").glob(".*.tmp"))


def test_image_cache_choice(tmp_path, cache, monkeypatch):
    make_pacs(tmp_path / "data")
    cls = get_dataset_class("PACS")
    ds = cls(str(tmp_path / "data"), [3], {"data_augmentation": True}, image_cache=True)
    assert all(isinstance(e, C.CachedImageDomain) for e in ds.datasets)  # built when missing
    assert [e.augment for e in ds.datasets] == [True, True, True, False]
    assert all(isinstance(e, ImageFolderDomain) for e in cls(str(tmp_path / "data"), [3], {}).datasets)
    monkeypatch.setenv("SHIFTBENCH_IMAGE_CACHE", "off")
    for image_cache in (False, True):
        with pytest.raises(ShiftbenchError, match=r"SHIFTBENCH_IMAGE_CACHE='off' is not read .*"
                                                  r"shiftbench train --image-cache"):
            cls(str(tmp_path / "data"), [3], {}, image_cache=image_cache)


def test_a_cache_another_process_builds_is_waited_for_and_used(tmp_path, cache, monkeypatch):
    """`ensure_cache` takes the build lock: while another process holds it, it waits, then uses
    the cache that process built instead of building its own."""
    import fcntl
    import threading

    make_pacs(tmp_path / "data")
    cls = get_dataset_class("PACS")
    base, _, env_samples = cls.scan(str(tmp_path / "data"))
    samples = env_samples[0]
    data, _ = C.cache_paths("PACS", "A", 224, C.source_key(samples, base, 224))
    lock_path = data.with_name(data.name.rsplit("-", 1)[0] + ".lock")
    builds, results = [], []
    real_build = C.build_cache
    with open(lock_path, "a") as held:  # "another process" building
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        monkeypatch.setattr(C, "build_cache", lambda *a, **k: builds.append(a) or real_build(*a, **k))
        waiter = threading.Thread(target=lambda: results.append(
            C.ensure_cache("PACS", "A", samples, base, 224)))
        waiter.start()
        real_build("PACS", "A", samples, base, 224, num_workers=0)
        fcntl.flock(held.fileno(), fcntl.LOCK_UN)
    waiter.join(timeout=120)
    assert not waiter.is_alive() and results and results[0][0] == data
    assert builds == []  # the waiter found the other build's cache
    # a missing cache is built once, under the lock, by the first caller
    C.ensure_cache("PACS", "C", env_samples[1], base, 224, num_workers=0)
    assert len(builds) == 1 and C.find_cache("PACS", "C", env_samples[1], base, 224) is not None


def test_cached_domain_in_dataloader_workers(tmp_path, cache):
    from shiftbench.data import BatchStream, eval_batches

    make_pacs(tmp_path / "data", per_class=2)
    cls = get_dataset_class("PACS")
    cls.preprocess(str(tmp_path / "data"), num_workers=0, log=lambda m: None)
    ds = cls(str(tmp_path / "data"), [0], {"data_augmentation": True}, image_cache=True)
    env = ds[1]
    stream = BatchStream(env, torch.arange(len(env)), 5, seed=0, role="train", env=1,
                         start_step=0, num_workers=1)
    x, y = stream.next()
    assert x.shape == (5, 3, 224, 224) and x.dtype == torch.float32 and y.dtype == torch.long
    batches = list(eval_batches(ds[0], torch.arange(len(ds[0])), 4, num_workers=0))
    assert torch.cat([b[1] for b in batches]).tolist() == ds[0].targets


def test_preprocess_command(tmp_path, cache, capsys):
    from shiftbench.cli import main

    make_pacs(tmp_path / "data")
    assert main(["data", "preprocess", "--dataset", "PACS", "--data-dir", str(tmp_path / "data"),
                 "--workers", "0"]) == 0
    assert capsys.readouterr().out.count("images preprocessed") == 4
    assert main(["data", "preprocess", "--dataset", "Digits", "--data-dir", str(tmp_path)]) == 2
    assert "not an image-folder dataset" in capsys.readouterr().err
    assert main(["data", "preprocess", "--data-dir", str(tmp_path)]) == 2


# --------------------------------------------------------------------------------------------
# Batched augmentation against torchvision's per-image functions


def test_crop_boxes_follow_random_resized_crop_rule():
    g = torch.Generator().manual_seed(0)
    boxes = A.crop_boxes(2000, 224, 224, generator=g)
    top, left, h, w = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + h <= 224).all() and (left + w <= 224).all()
    area = h * w / 224**2
    assert area.min() >= 0.69 and area.max() <= 1.0
    ratio = w / h
    assert ratio.min() >= 3 / 4 - 0.02 and ratio.max() <= 4 / 3 + 0.02
    assert area.std() > 0.05 and len(set(left.tolist())) > 10
    # an image too thin for every attempt falls back to a centred crop of clamped ratio
    thin = A.crop_boxes(5, 10, 200, scale=(0.99, 1.0), ratio=(1.0, 1.0))
    assert thin[:, 2].tolist() == [10.0] * 5 and thin[:, 3].tolist() == [10.0] * 5
    assert thin[:, 1].tolist() == [95.0] * 5


def test_resized_crop_matches_torchvision():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 3, 50, 60, generator=g)
    boxes = torch.tensor([[0.0, 0.0, 50.0, 60.0], [5.0, 7.0, 30.0, 40.0], [10.0, 3.0, 40.0, 45.0]])
    flip = torch.tensor([False, True, False])
    out = A.resized_crop(x, boxes, 64, flip)
    for i in range(3):
        t, left, h, w = (int(v) for v in boxes[i])
        ref = TF.resized_crop(x[i], t, left, h, w, [64, 64], antialias=True)
        if flip[i]:
            ref = ref.flip(-1)
        assert torch.allclose(out[i], ref, atol=1e-5), i
    same = A.resized_crop(x[:1], boxes[:1], 50, torch.tensor([False]))
    assert torch.allclose(same[0, :, :, :], TF.resize(x[0], [50, 50], antialias=True), atol=1e-5)


def test_hue_and_colour_ops_match_torchvision():
    g = torch.Generator().manual_seed(2)
    x = torch.rand(4, 3, 16, 16, generator=g)
    shifts = torch.tensor([0.0, 0.1, -0.25, 0.3])
    out = A._shift_hue(x, shifts)
    for i in range(4):
        assert torch.allclose(out[i], TF.adjust_hue(x[i], float(shifts[i])), atol=1e-4), i
    # one op at a time through color_jitter with strength 0 is the identity
    assert torch.allclose(A.color_jitter(x.clone(), 0.0), x, atol=1e-5)
    gray = A._gray(x)
    assert torch.allclose(gray[:, 0], TF.rgb_to_grayscale(x)[:, 0], atol=1e-6)
    # uint8 crops agree with torchvision's uint8 resize up to rounding
    xu = (x * 255).round().to(torch.uint8)
    box = torch.tensor([[2.0, 3.0, 10.0, 12.0]])
    ours = A.resized_crop(xu[:1], box, 20, torch.tensor([False]))[0]
    ref = TF.resized_crop(xu[0], 2, 3, 10, 12, [20, 20], antialias=True)
    assert ours.dtype == torch.uint8 and (ours.int() - ref.int()).abs().max() <= 1


def test_linear_hue_rotation(monkeypatch):
    rot = A.hue_rotation(torch.tensor([0.0, 0.25, -0.3]))
    assert torch.allclose(rot[0], torch.eye(3), atol=1e-6)
    for r in rot:  # orthogonal, keeps grey
        assert torch.allclose(r @ r.T, torch.eye(3), atol=1e-5)
        assert torch.allclose(r @ torch.ones(3), torch.ones(3), atol=1e-5)
    # a third of a turn maps red to green, as the HSV shift does
    third = A.hue_rotation(torch.tensor([1 / 3]))[0]
    assert torch.allclose(third @ torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0]),
                          atol=1e-5)
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(A.color_jitter(x.clone(), 0.0, hue="linear"), x, atol=1e-5)
    assert A.hue_mode({"hue": "linear"}) == "linear" and A.hue_mode({}) == "hsv"
    with pytest.raises(ShiftbenchError, match="'hsl' is not one of hsv, linear"):
        A.hue_mode({"hue": "hsl"})
    monkeypatch.setenv("SHIFTBENCH_HUE", "linear")  # an input outside the spec is refused
    with pytest.raises(ShiftbenchError, match="SHIFTBENCH_HUE is no longer read"):
        A.hue_mode({"hue": "linear"})


def test_augment_batch_statistics():
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (64, 3, 40, 40), dtype=torch.uint8, generator=g)
    a = A.augment_batch(x, 32, generator=torch.Generator().manual_seed(4))
    b = A.augment_batch(x, 32, generator=torch.Generator().manual_seed(4))
    assert a.shape == (64, 3, 32, 32) and torch.equal(a, b)
    lo = (0 - max(A.MEAN)) / min(A.STD)
    hi = (1 - min(A.MEAN)) / min(A.STD)
    assert a.min() >= lo - 1e-4 and a.max() <= hi + 1e-4
    # about 10% grey images (equal channels once un-normalised)
    mean = torch.tensor(A.MEAN).view(1, 3, 1, 1)
    std = torch.tensor(A.STD).view(1, 3, 1, 1)
    raw = a * std + mean
    grey = ((raw[:, 0] - raw[:, 1]).abs().amax((1, 2)) < 1e-4).float().mean()
    assert 0.0 < grey < 0.3
    ev = A.eval_batch(x)
    assert torch.allclose(ev * std + mean, x.float() / 255, atol=1e-5)
    assert not math.isclose(float((a - A.augment_batch(x, 32)).abs().mean()), 0.0)


def test_color_jitter_equals_torchvision_ops_in_the_drawn_order():
    x = torch.rand(6, 3, 12, 12, generator=torch.Generator().manual_seed(6))
    out = A.color_jitter(x.clone(), 0.3, generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)  # the same draws, in the same order
    factors = torch.empty(6, 3).uniform_(0.7, 1.3, generator=g)
    shifts = torch.empty(6).uniform_(-0.3, 0.3, generator=g)
    order = torch.rand(6, 4, generator=g).argsort(1)
    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    for i in range(6):
        ref = x[i]
        for op in order[i].tolist():
            ref = ops[op](ref, float(shifts[i] if op == 3 else factors[i, op]))
        assert torch.allclose(out[i], ref, atol=1e-4), (i, order[i])


def test_hue_shift_exact_on_edge_cases():
    """Greys, ties between channels and primaries, across the whole range of shifts."""
    g = torch.Generator().manual_seed(8)
    x = torch.randint(0, 256, (8, 3, 10, 10), generator=g).float() / 255
    x[0] = 0.5  # grey: unchanged
    x[1, 0] = x[1, 1]  # red = green
    x[2] = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)
    x[3, 1] = x[3, 2]
    x[4, 0] = x[4, 2]
    x[5, :, :5] = 0.0
    for shift in torch.linspace(-0.5, 0.5, 11).tolist():
        out = A._shift_hue(x, torch.full((8,), shift))
        ref = torch.stack([TF.adjust_hue(xi, shift) for xi in x])
        assert (out - ref).abs().max() < 1e-5, shift
    assert torch.equal(A._shift_hue(x[:1], torch.tensor([0.3])), x[:1])


def test_augment_batch_equals_torchvision_pipeline_with_the_same_draws():
    """The cached training augmentation is torchvision's tensor transforms image by image:
    resized_crop (uint8, antialiased; to one grey level), hflip,
    adjust_brightness/contrast/saturation/hue in the drawn order, rgb_to_grayscale, normalize -
    with the same random draws."""
    n, size = 24, 28
    g = torch.Generator().manual_seed(9)
    x = torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8, generator=g).permute(0, 3, 1, 2)
    out = A.augment_batch(x, size, generator=torch.Generator().manual_seed(10))
    g = torch.Generator().manual_seed(10)  # the draws of augment_batch, in its order
    boxes = A.crop_boxes(n, 32, 32, generator=g).long()
    flips = torch.rand(n, generator=g) < 0.5
    factors = torch.empty(n, 3).uniform_(0.7, 1.3, generator=g)
    shifts = torch.empty(n).uniform_(-0.3, 0.3, generator=g)
    order = torch.rand(n, 4, generator=g).argsort(1)
    grays = torch.rand(n, generator=g) < 0.1
    assert flips.any() and (~flips).any() and grays.any()
    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    for i in range(n):
        top, left, h, w = boxes[i].tolist()
        # torchvision resizes uint8 in float and rounds, PyTorch's uint8 kernel in fixed point:
        # the same crop up to one grey level (PIL's resize, the lazy path, is also fixed point)
        tv = TF.resized_crop(x[i], top, left, h, w, [size, size], antialias=True)
        crop = A.resized_crop(x[i:i + 1], boxes[i:i + 1], size, torch.tensor([False]))[0]
        assert (tv.int() - crop.int()).abs().max() <= 1
        ref = (TF.hflip(crop) if flips[i] else crop).float() / 255
        for op in order[i].tolist():
            ref = ops[op](ref, float(shifts[i] if op == 3 else factors[i, op]))
        if grays[i]:
            ref = TF.rgb_to_grayscale(ref, num_output_channels=3)
        ref = TF.normalize(ref, list(A.MEAN), list(A.STD))
        assert torch.allclose(out[i], ref, atol=1e-4), i


def test_collated_batches_pass_through_the_loader(tmp_path, cache):
    from torch.utils.data import DataLoader, default_collate

    from shiftbench.data import collate
    from shiftbench.datasets.base import CollatedBatch

    make_pacs(tmp_path / "data")
    cls = get_dataset_class("PACS")
    cls.preprocess(str(tmp_path / "data"), num_workers=0, log=lambda m: None)
    env = cls(str(tmp_path / "data"), [0], {}, image_cache=True)[1]
    batch = env.__getitems__([0, 3, 5])
    assert isinstance(batch, CollatedBatch)
    x, y = collate(batch)
    assert x is batch.x and y.tolist() == [env.targets[i] for i in (0, 3, 5)]
    # a plain DataLoader (default_collate) still gets ordinary (input, label) pairs
    xd, yd = default_collate(batch)
    assert torch.equal(xd, x) and torch.equal(yd, y)
    for workers in (0, 1):
        xs = [b[0] for b in DataLoader(env, batch_size=4, num_workers=workers, collate_fn=collate)]
        assert torch.equal(torch.cat(xs), env.batch(range(len(env)))[0])


def test_color_jitter_on_a_non_contiguous_batch():
    x = torch.rand(4, 12, 12, 3, generator=torch.Generator().manual_seed(11)).permute(0, 3, 1, 2)
    for hue in ("hsv", "linear"):
        a = A.color_jitter(x.clone(), 0.3, generator=torch.Generator().manual_seed(12), hue=hue)
        b = A.color_jitter(x.contiguous(), 0.3, generator=torch.Generator().manual_seed(12),
                           hue=hue)
        assert torch.allclose(a, b, atol=1e-6), hue
