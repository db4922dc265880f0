"""`shiftbench data download` against a local HTTP server serving fixture archives in the real
layouts: resume, verification, atomic extraction, idempotent re-runs, clear errors (the
benchmark archives' layouts: test_datasets_archives.py)."""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import zipfile
from pathlib import Path

import pytest
from download_server import PACS_DOMAINS, Server, pacs_zip, toy_source

from shiftbench.cli import main
from shiftbench.datasets import download as D
from shiftbench.datasets import get_dataset_class
from shiftbench.datasets.sources import SOURCES
from shiftbench.errors import ShiftbenchError


@pytest.mark.slow
def test_pacs_download_then_train(tmp_path, capsys):
    data = pacs_zip()
    with Server({"/PACS/PACS.zip": data}) as srv:
        argv = ["data", "download", "PACS", "--data-dir", str(tmp_path), "--base-url", srv.url]
        assert main(argv) == 0
        assert (tmp_path / "PACS" / D.MARKER).is_file()
        assert sorted(p.name for p in (tmp_path / "PACS").iterdir() if p.is_dir()) == \
            list(PACS_DOMAINS)
        assert not list((tmp_path / D.DOWNLOADS / "PACS").iterdir())  # archive removed
        assert not list(tmp_path.glob(".staging-*"))
        n = len(srv.requests)
        assert main(argv) == 0  # idempotent: nothing fetched again
        assert len(srv.requests) == n
        assert "already downloaded" in capsys.readouterr().out
    ds = get_dataset_class("PACS")(str(tmp_path), [0], {"data_augmentation": False})
    assert [len(e) for e in ds.datasets] == [14, 14, 14, 14]
    out = tmp_path / "run"
    code = main(["train", "--dataset", "PACS", "--data-dir", str(tmp_path), "--steps", "2",
                 "--checkpoint-freq", "1", "--output-dir", str(out), "--skip-model-save",
                 "--hparams", json.dumps({"batch_size": 2, "resnet18": True,
                                          "pretrained": False})])
    assert code == 0
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert records and records[-1]["step"] == 1 and "env3_out_acc" in records[-1]


def test_truncated_download_is_resumed_with_range(tmp_path):
    data = pacs_zip(1)
    with Server({"/Toy/toy.zip": data}) as srv:
        srv.truncate_once.add("/Toy/toy.zip")
        D.install(toy_source("unused", data), tmp_path, base=srv.url, log=lambda s: None)
        ranges = [r for p, r in srv.requests if p == "/Toy/toy.zip"]
    assert ranges == [None, f"bytes={len(data) // 2}-"]
    assert (tmp_path / "toy" / "cartoon" / "dog").is_dir()


def test_partial_file_from_an_earlier_run_is_resumed(tmp_path):
    data = pacs_zip(1)
    part = tmp_path / D.DOWNLOADS / "Toy" / "toy.zip.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:1000])
    with Server({"/Toy/toy.zip": data}) as srv:
        D.install(toy_source("unused", data), tmp_path, base=srv.url, log=lambda s: None)
        assert srv.requests == [("/Toy/toy.zip", "bytes=1000-")]
    assert (tmp_path / "toy" / D.MARKER).is_file()


def test_wrong_checksum_is_refused_and_nothing_is_kept(tmp_path, capsys):
    fake = {f"/FashionMNIST/{f}": gzip.compress(b"not fashion-mnist") for f in
            ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
    with Server(fake) as srv:
        code = main(["data", "download", "FashionMNIST", "--data-dir", str(tmp_path),
                     "--base-url", srv.url])
    err = capsys.readouterr().err
    assert code == 2
    assert "md5" in err and "8d4fb7e6c68d591d4c3dfef9ec88bf0d" in err
    assert f"{srv.url}/FashionMNIST/train-images-idx3-ubyte.gz" in err
    assert not (tmp_path / "FashionMNIST").exists()
    assert not list((tmp_path / D.DOWNLOADS / "FashionMNIST").iterdir())


def test_interrupted_extraction_leaves_no_dataset(tmp_path, monkeypatch):
    data = pacs_zip()
    real_arrange = SOURCES["PACS"].arrange

    def crash(raw: Path, out: Path) -> None:
        out.mkdir(parents=True)
        (out / "art_painting").mkdir()  # half-built layout, then the process is stopped
        raise KeyboardInterrupt

    monkeypatch.setitem(SOURCES, "PACS", dataclasses.replace(SOURCES["PACS"], arrange=crash))
    with Server({"/PACS/PACS.zip": data}) as srv:
        assert main(["data", "download", "PACS", "--data-dir", str(tmp_path), "--base-url",
                     srv.url]) == 130
        assert not (tmp_path / "PACS").exists()
        assert not list(tmp_path.glob(".staging-*"))
        killed = tmp_path / ".staging-PACS-999999" / "out" / "photo"  # a run killed with -9
        killed.mkdir(parents=True)
        with pytest.raises(ShiftbenchError, match="does not exist"):
            get_dataset_class("PACS")(str(tmp_path), [0], {})
        monkeypatch.setitem(SOURCES, "PACS", dataclasses.replace(SOURCES["PACS"],
                                                                 arrange=real_arrange))
        n = len(srv.requests)
        assert main(["data", "download", "PACS", "--data-dir", str(tmp_path), "--base-url",
                     srv.url]) == 0
        assert len(srv.requests) == n  # the verified archive was kept and reused
    assert (tmp_path / "PACS" / D.MARKER).is_file()
    assert not list(tmp_path.glob(".staging-*"))


def test_offline_and_terms_pages_give_clear_errors(tmp_path):
    with Server({}) as srv:
        closed = srv.url
        srv.html.add("/Toy/toy.zip")
        with pytest.raises(D.DownloadError, match="web page instead of toy.zip"):
            D.install(toy_source("unused", b""), tmp_path, base=srv.url, log=lambda s: None)
        with pytest.raises(D.DownloadError, match="HTTP 404"):
            D.install(D.Source("PACS", "PACS", SOURCES["PACS"].remotes), tmp_path,
                      base=srv.url, log=lambda s: None)
    with pytest.raises(D.DownloadError, match="are you offline") as info:
        D.install(toy_source("unused", b""), tmp_path, base=closed, log=lambda s: None)
    assert f"{closed}/Toy/toy.zip" in str(info.value)
    assert str(tmp_path / D.DOWNLOADS / "Toy" / "toy.zip") in str(info.value)


def test_manual_source_explains_what_to_do(tmp_path, capsys):
    code = main(["data", "download", "MNIST_M", "--data-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "cannot be downloaded automatically" in err
    assert str(tmp_path / D.DOWNLOADS / "MNIST_M") in err and "mnist_m.tar.gz" in err


def test_archive_escaping_the_folder_is_refused(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("../evil.txt", b"x")
    path = tmp_path / "bad.zip"
    path.write_bytes(buf.getvalue())
    with pytest.raises(D.DownloadError, match="outside"):
        D.unpack(path, D.Remote("u", "bad.zip", "zip"), tmp_path / "x")
    assert not (tmp_path / "evil.txt").exists()


def test_wilds_sources_download_through_wilds(tmp_path, monkeypatch):
    wilds = pytest.importorskip("wilds")
    calls = []

    def get_dataset(dataset, root_dir, download):
        calls.append((dataset, root_dir, download))
        (Path(root_dir) / "camelyon17_v1.0").mkdir()

    monkeypatch.setattr(wilds, "get_dataset", get_dataset)
    assert main(["data", "download", "WILDSCamelyon", "--data-dir", str(tmp_path)]) == 0
    assert len(calls) == 1 and calls[0][0] == "camelyon17" and calls[0][2] is True
    staging = Path(calls[0][1])  # fetched into a staging folder, published by one rename
    assert staging.parent == tmp_path and staging.name.startswith(".staging-WILDSCamelyon-")
    assert (tmp_path / "camelyon17_v1.0" / D.MARKER).is_file() and not staging.exists()
    assert main(["data", "download", "WILDSCamelyon", "--data-dir", str(tmp_path)]) == 0
    assert len(calls) == 1  # present: left alone


def test_every_file_dataset_has_a_download_source():
    from shiftbench.datasets.folder import IMAGE_FOLDER_DATASETS
    from shiftbench.datasets.sources import get_source
    from shiftbench.datasets.wilds_datasets import WILDS_DATASETS

    for cls in (*IMAGE_FOLDER_DATASETS, *WILDS_DATASETS):
        assert get_source(cls.__name__).target == getattr(cls, "DATA_SUBDIR", None) or \
            get_source(cls.__name__).target == getattr(cls, "FOLDER", None), cls
    for name in ("ColoredMNIST", "RotatedFashionMNIST", "DigitFive"):
        assert get_source(name)
    with pytest.raises(ShiftbenchError, match="unknown downloadable dataset 'PAC'.*PACS"):
        get_source("PAC")


def test_full_disk_stops_at_once_and_keeps_the_partial_file(tmp_path, monkeypatch):
    import builtins
    import errno

    from shiftbench.errors import StorageError

    data = pacs_zip(1)
    real_open, writes = builtins.open, []

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, block):
            if writes:  # the second block does not fit
                raise OSError(errno.ENOSPC, "No space left on device")
            writes.append(len(block))
            return self.f.write(block)

    def fake_open(path, mode="r", *a, **k):
        f = real_open(path, mode, *a, **k)
        return FullDisk(f) if str(path).endswith(".part") else f

    monkeypatch.setattr(D, "open", fake_open, raising=False)
    monkeypatch.setattr(D, "CHUNK", 1000)
    with Server({"/Toy/toy.zip": data}) as srv:
        with pytest.raises(StorageError, match="no space left on device"):
            D.install(toy_source("unused", data), tmp_path, base=srv.url, log=lambda s: None)
        assert len(srv.requests) == 1  # no retries against a full disk
        part = tmp_path / D.DOWNLOADS / "Toy" / "toy.zip.part"
        assert part.stat().st_size == 1000  # kept, to be resumed
        monkeypatch.undo()
        D.install(toy_source("unused", data), tmp_path, base=srv.url, log=lambda s: None)
        assert srv.requests[-1] == ("/Toy/toy.zip", "bytes=1000-")
    assert (tmp_path / "toy" / D.MARKER).is_file()
