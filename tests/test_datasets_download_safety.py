"""`data download` run twice at once, truncated archives, WILDS atomicity, the URL recorded, the
sources placed by hand (local HTTP server, no network)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest
from download_server import PACS_DOMAINS, Server, jpeg, pacs_zip

from shiftbench.cli import main
from shiftbench.datasets import download as D
from shiftbench.datasets.archive_checks import DownloadLock
from shiftbench.datasets.sources import SOURCES

TESTS = Path(__file__).parent


def _pacs_tree_is_good(root: Path) -> None:
    assert (root / "PACS" / D.MARKER).is_file()
    assert sorted(p.name for p in (root / "PACS").iterdir() if p.is_dir()) == list(PACS_DOMAINS)
    assert all(len(list((root / "PACS" / d).iterdir())) == 7 for d in PACS_DOMAINS)
    assert not list(root.glob(".staging-*"))
    assert not list((root / D.DOWNLOADS / "PACS").glob("*.part"))


def test_two_concurrent_downloads_of_one_dataset_both_end_with_a_good_tree(tmp_path):
    data = pacs_zip()
    with Server({"/PACS/PACS.zip": data}) as srv:
        srv.delay = 1.0  # keeps the first transfer open while the second process starts
        argv = [sys.executable, "-m", "shiftbench", "data", "download", "PACS", "--data-dir",
                str(tmp_path), "--base-url", srv.url, "--no-progress"]
        procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, cwd=TESTS) for _ in range(2)]
        outs = [p.communicate(timeout=300) for p in procs]
        fetched = [r for r in srv.requests if r[0] == "/PACS/PACS.zip"]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert len(fetched) == 1  # the second one reused the first one's download
    assert sum("already downloaded" in out for out, _ in outs) == 1
    _pacs_tree_is_good(tmp_path)


def test_a_download_waits_for_the_one_holding_the_lock(tmp_path):
    data = pacs_zip(1)
    messages: list[str] = []
    with Server({"/PACS/PACS.zip": data}) as srv:
        with DownloadLock(tmp_path / D.DOWNLOADS, "PACS", log=lambda s: None):
            worker = threading.Thread(target=D.install, args=(SOURCES["PACS"], tmp_path, srv.url),
                                      kwargs={"log": messages.append, "progress": False})
            worker.start()
            for _ in range(600):  # until it reports that it waits (it cannot get past the lock)
                if any("waiting" in m for m in messages):
                    break
                time.sleep(0.05)
            assert any("another `data download` of it is running" in m for m in messages)
            assert not srv.requests and worker.is_alive()
        worker.join(timeout=120)
        assert not worker.is_alive() and len(srv.requests) == 1
    _pacs_tree_is_good(tmp_path)


def _visda_tar(n_classes: int = 12, per_class: int = 2) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for c in range(n_classes):
            for k in range(per_class):
                body = jpeg(10 * c + k)
                info = tarfile.TarInfo(f"train/class{c:02d}/{k}.jpg")
                info.size = len(body)
                tf.addfile(info, io.BytesIO(body))
    return buf.getvalue()


def _cut_after_member(data: bytes, n_members: int) -> bytes:
    """`data` cut exactly at the end of member `n_members` (a valid, shorter tar stream)."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        members = tf.getmembers()
    end = members[n_members - 1].offset_data + -(-members[n_members - 1].size // 512) * 512
    return data[:end]


def _visda_source():
    remote = D.Remote("unused", "train.tar", "tar")
    return D.Source("VisDA", "visda", (remote,), D.move_folders("train"), classes=12)


def test_a_tar_cut_at_a_member_boundary_is_refused(tmp_path):
    full = _visda_tar()
    cut = _cut_after_member(full, 9 * 2)  # 9 of the 12 classes, then the file ends
    with tarfile.open(fileobj=io.BytesIO(cut)) as tf:  # tarfile itself reads it without error
        assert len(tf.getmembers()) == 18
    with Server({"/VisDA/train.tar": cut}) as srv:
        with pytest.raises(D.DownloadError, match="truncated tar archive .*18 members"):
            D.install(_visda_source(), tmp_path, srv.url, log=lambda s: None)
    assert not (tmp_path / "visda").exists()
    assert not (tmp_path / D.DOWNLOADS / "VisDA" / "train.tar").exists()  # refetched next time
    with Server({"/VisDA/train.tar": full}) as srv:
        D.install(_visda_source(), tmp_path, srv.url, log=lambda s: None)
    assert len(list((tmp_path / "visda" / "train").iterdir())) == 12


def test_a_complete_archive_with_missing_classes_is_refused(tmp_path):
    with Server({"/VisDA/train.tar": _visda_tar(n_classes=9)}) as srv:
        with pytest.raises(D.DownloadError, match="expected 12 class folders.*train: 9 class"):
            D.install(_visda_source(), tmp_path, srv.url, log=lambda s: None)
    assert not (tmp_path / "visda").exists()


def test_the_marker_records_the_url_actually_used(tmp_path):
    with Server({"/PACS/PACS.zip": pacs_zip(1)}) as srv:
        D.install(SOURCES["PACS"], tmp_path, srv.url, log=lambda s: None, progress=False)
    record = json.loads((tmp_path / "PACS" / D.MARKER).read_text())["files"][0]
    assert record["url"] == f"{srv.url}/PACS/PACS.zip"
    assert record["published_url"] == SOURCES["PACS"].remotes[0].url


def test_an_interrupted_wilds_download_leaves_no_folder(tmp_path, monkeypatch):
    wilds = pytest.importorskip("wilds")

    def get_dataset(dataset, root_dir, download):
        (Path(root_dir) / "camelyon17_v1.0" / "patches").mkdir(parents=True)
        raise ConnectionResetError("connection lost halfway")

    monkeypatch.setattr(wilds, "get_dataset", get_dataset)
    with pytest.raises(ConnectionResetError):
        D.install(SOURCES["WILDSCamelyon"], tmp_path, log=lambda s: None)
    assert not (tmp_path / "camelyon17_v1.0").exists() and not list(tmp_path.glob(".staging-*"))


@pytest.mark.parametrize("name, words", [
    ("Cityscapes", ["needs a login", "leftImg8bit_trainvaltest.zip", "Cityscapes"]),
    ("GTA5", ["01_images.zip", "download.visinf.tu-darmstadt.de", "GTA5"]),
    ("SYNTHIA", [".rar", "RAND_CITYSCAPES/GT/LABELS"]),
])
def test_road_scene_sources_say_how_to_get_them(tmp_path, capsys, name, words):
    assert main(["data", "download", name, "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "cannot be downloaded automatically" in err and all(w in err for w in words)
    if name != "SYNTHIA":
        assert str(tmp_path / D.DOWNLOADS / name) in err  # where to place the files


def test_imagenet_weights_download_verified_into_the_pretrained_folder(tmp_path, monkeypatch,
                                                                       capsys):
    import dataclasses
    import hashlib

    import torch
    import torchvision

    from shiftbench import networks

    buf = io.BytesIO()
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), buf)
    data = buf.getvalue()
    source = SOURCES["resnet18-ImageNet"]
    (remote,) = source.remotes
    assert remote.url == torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    assert remote.sha256 == "f37072fd"  # torchvision's published SHA-256 prefix
    folder = tmp_path / "pretrained"
    monkeypatch.setenv("SHIFTBENCH_PRETRAINED_DIR", str(folder))
    argv = ["data", "download", "resnet18-ImageNet", "--data-dir", str(tmp_path / "data")]
    with Server({f"/resnet18-ImageNet/{remote.filename}": data}) as srv:
        assert main([*argv, "--base-url", srv.url]) == 2  # the fixture is not the real file
        assert "does not match the published f37072fd" in capsys.readouterr().err
        assert not (folder / remote.filename).exists()
        fixture = dataclasses.replace(remote, sha256=hashlib.sha256(data).hexdigest()[:8])
        monkeypatch.setitem(SOURCES, "resnet18-ImageNet",
                            dataclasses.replace(source, remotes=(fixture,)))
        assert main([*argv, "--base-url", srv.url]) == 0
    assert (folder / remote.filename).read_bytes() == data
    net = networks.Featurizer((3, 64, 64), {"resnet18": True, "pretrained": True})
    assert net.n_outputs == 512


def test_a_dataset_of_two_sources_names_both(tmp_path, capsys):
    assert main(["data", "download", "GTA5Cityscapes", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "2 of 2 downloads failed" in err and "GTA5:" in err and "Cityscapes:" in err
    assert "needs a login" in err
