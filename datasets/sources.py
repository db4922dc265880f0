"""Where each public dataset is published, and how its archives become the loaders' layouts.

URLs are the ones DomainBed's download script, torchvision and the Transfer-Learning-Library
use (facts about the datasets, listed in `docs/datasets.md`). Checksums: MD5s of the MNIST,
Fashion-MNIST, SVHN and USPS files as torchvision publishes them; MD5s of DomainBed's VLCS and
OfficeHome archives as listed by DomainBed-based loaders; every other file has no published
checksum, so only its size (the server's `Content-Length`) is verified; tar archives must end
with their end-of-archive block, and the image-folder datasets must unpack into the number of
class folders they are published with (`Source.classes`), so a tar cut at a member boundary is
refused. GTA5, Cityscapes (login) and SYNTHIA (.rar) are placed by hand (`manual`).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from shiftbench.datasets.archive_checks import DownloadError
from shiftbench.datasets.download import (
    Remote,
    Source,
    find_folder_with,
    move_files,
    move_folders,
)
from shiftbench.errors import UnknownNameError

GDRIVE = "https://drive.usercontent.google.com/download?export=download&confirm=t&id="
TSINGHUA = "https://cloud.tsinghua.edu.cn/f/{}/?dl=1"
DOMAINNET = "http://csr.bu.edu/ftp/visda/2019/multi-source/"
LILA = "https://storage.googleapis.com/public-datasets-lila/caltechcameratraps/"
IDX = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
       "t10k-labels-idx1-ubyte.gz")

# TerraIncognita: DomainBed's four camera locations and ten categories.
TERRA_LOCATIONS = ("38", "46", "100", "43")
TERRA_CATEGORIES = ("bird", "bobcat", "cat", "coyote", "dog", "empty", "opossum", "rabbit",
                    "raccoon", "squirrel")


def arrange_terra_incognita(raw: Path, out: Path) -> None:
    """Sort the Caltech Camera Traps images of DomainBed's four locations into
    `location_<id>/<category>/<file>` from the ECCV'18 annotation files (an image with several
    annotations goes into each of their categories, as DomainBed does)."""
    images = raw / "eccv_18_all_images_sm"
    notes = raw / "eccv_18_annotation_files"
    if not images.is_dir() or not notes.is_dir():
        raise DownloadError(f"TerraIncognita: expected eccv_18_all_images_sm/ and "
                            f"eccv_18_annotation_files/ in the archives (found "
                            f"{', '.join(sorted(p.name for p in raw.iterdir()))})")
    merged: dict[str, list] = defaultdict(list)
    for path in sorted(notes.glob("*.json")):
        for key, value in json.loads(path.read_text()).items():
            if isinstance(value, list):
                merged[key].extend(value)
    names = {c["id"]: c["name"] for c in merged["categories"]}
    cats_of: dict[str, set[str]] = defaultdict(set)
    for a in merged["annotations"]:
        cats_of[a["image_id"]].add(names[a["category_id"]])
    for image in merged["images"]:
        location = str(image["location"])
        if location not in TERRA_LOCATIONS:
            continue
        for category in sorted(cats_of.get(image["id"], ())):
            if category not in TERRA_CATEGORIES:
                continue
            dst = out / f"location_{location}" / category / image["file_name"]
            if not dst.exists():
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.link(images / image["file_name"], dst)  # staging is on the same disk


def arrange_mnist_m(raw: Path, out: Path) -> None:
    """`mnist_m_{train,test}/` and their label files, as `shiftbench.datasets.digit_files` reads."""
    base = find_folder_with(raw, ("mnist_m_train", "mnist_m_test"))
    out.mkdir(parents=True, exist_ok=True)
    for name in ("mnist_m_train", "mnist_m_test", "mnist_m_train_labels.txt",
                 "mnist_m_test_labels.txt"):
        if not (base / name).exists():
            raise DownloadError(f"MNIST-M archive: {name} is missing under {base}")
        os.replace(base / name, out / name)


def arrange_domain_net(raw: Path, out: Path) -> None:
    """The six domain folders, less the duplicate images DomainBed's list names."""
    move_folders("clipart", "infograph", "painting", "quickdraw", "real", "sketch")(raw, out)
    listing = raw / "domain_net_duplicates.txt"
    for line in listing.read_text().splitlines():
        rel = Path(line.strip())
        if line.strip() and not rel.is_absolute() and ".." not in rel.parts:
            (out / rel).unlink(missing_ok=True)


def arrange_office_caltech(raw: Path, out: Path) -> None:
    """The four domain folders, each `<domain>/<class>/` (a `<domain>/images/<class>/` level, as
    some releases have, is lifted)."""
    move_folders("amazon", "caltech", "dslr", "webcam")(raw, out)
    for domain in ("amazon", "caltech", "dslr", "webcam"):
        inner = out / domain / "images"
        if inner.is_dir() and [p.name for p in (out / domain).iterdir()] == ["images"]:
            for entry in inner.iterdir():
                os.replace(entry, out / domain / entry.name)
            inner.rmdir()


def wilds_fetcher(wilds_name: str) -> Callable:
    def fetch(source: Source, data_dir: Path, log) -> Path:
        try:
            import wilds
        except ImportError:
            raise DownloadError(f"{source.name} is downloaded by the `wilds` package: "
                                "pip install wilds (or pip install 'shiftbench[wilds]'), then "
                                "rerun") from None
        log(f"{source.name}: downloading through wilds {wilds.__version__} into {data_dir}")
        wilds.get_dataset(dataset=wilds_name, root_dir=str(data_dir), download=True)
        return data_dir / source.target

    return fetch


def pretrained_dir() -> Path:
    """Where the torchvision ResNets' ImageNet weights are looked for first:
    $SHIFTBENCH_PRETRAINED_DIR, else torch's hub cache (`shiftbench.networks`)."""
    if os.environ.get("SHIFTBENCH_PRETRAINED_DIR"):
        return Path(os.environ["SHIFTBENCH_PRETRAINED_DIR"])
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def fetch_pretrained(source: Source, data_dir: Path, log, base: str | None = None,
                     progress: bool | None = None) -> Path:
    """A weights file into `pretrained_dir()` (checked against the SHA-256 prefix in its name)."""
    from shiftbench.datasets.download import fetch

    (remote,) = source.remotes
    folder = pretrained_dir()
    if (folder / remote.filename).is_file():
        log(f"{source.name}: already in {folder}")
    path = fetch(source, remote, folder, base, progress)
    log(f"{source.name}: ready, {path}")
    return path


def _weights(arch: str, digest: str, used_by: tuple[str, ...]) -> Source:
    filename = f"{arch}-{digest}.pth"
    return Source(f"{arch}-ImageNet", "", (Remote("https://download.pytorch.org/models/" + filename,
                                                  filename, sha256=digest),),
                  homepage="https://pytorch.org/vision/stable/models.html (IMAGENET1K_V1)",
                  licence="BSD-3-Clause (torchvision); ImageNet terms", datasets=used_by,
                  fetcher=fetch_pretrained)


def _idx(base: str, md5s: tuple[str, ...]) -> tuple[Remote, ...]:
    return tuple(Remote(base + f, f, md5=m) for f, m in zip(IDX, md5s))


SOURCES: dict[str, Source] = {s.name: s for s in (
    Source("PACS", "PACS", (Remote(GDRIVE + "1JFr8f805nMUelQWWmfnJR3y4_SYoN5Pd", "PACS.zip",
                                   "zip"),),
           move_folders("art_painting", "cartoon", "photo", "sketch"),
           "https://domaingeneralization.github.io/", "research use", ("PACS",), classes=7),
    Source("VLCS", "VLCS", (Remote(GDRIVE + "1skwblH1_okBwxWxmRsp9_qi15hyPpxg8", "VLCS.tar.gz",
                                   "tar", md5="8870171eba660927d9668f4e515928e4"),),
           move_folders("Caltech101", "LabelMe", "SUN09", "VOC2007"),
           "https://github.com/facebookresearch/DomainBed", "per source dataset", ("VLCS",),
           classes=5),
    Source("OfficeHome", "office_home",
           (Remote(GDRIVE + "1uY0pj7oFsjMxRwaD3Sxy0jgel0fsYXLC", "office_home.zip", "zip",
                   md5="b1c14819770c4448fd5b6d931031c91c"),),
           move_folders("Art", "Clipart", "Product", "Real World"),
           "https://www.hemanthdv.org/officeHomeDataset.html",
           "non-commercial research and educational use", ("OfficeHome",), classes=65),
    Source("TerraIncognita", "terra_incognita",
           (Remote(LILA + "eccv_18_all_images_sm.tar.gz", "eccv_18_all_images_sm.tar.gz", "tar"),
            Remote(LILA + "eccv_18_annotations.tar.gz", "eccv_18_annotations.tar.gz", "tar")),
           arrange_terra_incognita, "https://lila.science/datasets/caltech-camera-traps",
           "Community Data License Agreement (permissive)", ("TerraIncognita",)),
    Source("DomainNet", "domain_net",
           tuple(Remote(DOMAINNET + p, p.split("/")[-1], "zip") for p in (
               "groundtruth/clipart.zip", "infograph.zip", "groundtruth/painting.zip",
               "quickdraw.zip", "real.zip", "sketch.zip"))
           + (Remote("https://raw.githubusercontent.com/facebookresearch/DomainBed/main/"
                     "domainbed/misc/domain_net_duplicates.txt", "domain_net_duplicates.txt"),),
           arrange_domain_net, "http://ai.bu.edu/M3SDA/", "fair use for research",
           ("DomainNet",), classes=345),
    Source("SVIRO", "sviro", (Remote("https://sviro.kl.dfki.de/?wpdmdl=1731",
                                     "sviro_grayscale_rectangle_classification.zip", "zip"),),
           move_folders("aclass", "escape", "hilux", "i3", "lexus", "tesla", "tiguan", "tucson",
                        "x5", "zoe"),
           "https://sviro.kl.dfki.de", "CC BY-NC-SA 4.0", ("SVIRO",)),
    Source("Office31", "office31", tuple(
        Remote(TSINGHUA.format(k), f"{d}.tgz", "tar") for d, k in (
            ("amazon", "ec12dfcddade43ab8101"), ("dslr", "a41d818ae2f34da7bb32"),
            ("webcam", "8a41009a166e4131adcd"))),
           move_folders("amazon", "dslr", "webcam"),
           "https://faculty.cc.gatech.edu/~judy/domainadapt/", "research use", ("Office31",),
           classes=31, class_subpath="images"),
    # The Transfer-Learning-Library's archive (tllib/vision/datasets/officecaltech.py); the
    # transferlearning repository's data page offers the original images on Baidu Yun only.
    Source("OfficeCaltech", "office_caltech_10",
           (Remote(TSINGHUA.format("e93f2e07d93243d6b57e"), "officecaltech.tgz", "tar"),),
           arrange_office_caltech,
           "https://github.com/thuml/Transfer-Learning-Library (Office-Caltech, Gong et al. 2012)",
           "research use", ("OfficeCaltech",), classes=10),
    Source("VisDA", "visda", tuple(
        Remote(f"http://csr.bu.edu/ftp/visda17/clf/{s}.tar", f"{s}.tar", "tar")
        for s in ("train", "validation")), move_folders("train", "validation"),
           "https://github.com/VisionLearningGroup/taskcv-2017-public",
           "research use (COCO images under their own terms)", ("VisDA",), classes=12),
    Source("MNIST", "MNIST", _idx("https://ossci-datasets.s3.amazonaws.com/mnist/", (
        "f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
        "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c")),
           move_files(*IDX, subdir="raw"), "http://yann.lecun.com/exdb/mnist/", "CC BY-SA 3.0",
           ("ColoredMNIST", "RotatedMNIST")),
    Source("FashionMNIST", "FashionMNIST", _idx(
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/", (
            "8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
            "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310")),
           move_files(*IDX, subdir="raw"), "https://github.com/zalandoresearch/fashion-mnist",
           "MIT", ("ColoredFashionMNIST", "RotatedFashionMNIST")),
    Source("SVHN", "SVHN", (
        Remote("http://ufldl.stanford.edu/housenumbers/train_32x32.mat", "train_32x32.mat",
               md5="e26dedcc434d2e4c54c9b2d4a06d8373"),
        Remote("http://ufldl.stanford.edu/housenumbers/test_32x32.mat", "test_32x32.mat",
               md5="eb5a983be6a315427106f1b164d9cef3")),
           move_files("train_32x32.mat", "test_32x32.mat"),
           "http://ufldl.stanford.edu/housenumbers/", "non-commercial use", ("DigitFive",)),
    Source("USPS", "USPS", (
        Remote("https://www.csie.ntu.edu.tw/~cjlin/libsvmtools/datasets/multiclass/usps.bz2",
               "usps.bz2", md5="ec16c51db3855ca6c91edd34d0e9b197"),
        Remote("https://www.csie.ntu.edu.tw/~cjlin/libsvmtools/datasets/multiclass/usps.t.bz2",
               "usps.t.bz2", md5="8ea070ee2aca1ac39742fdd1ef5ed118")),
           move_files("usps.bz2", "usps.t.bz2"),
           "https://www.csie.ntu.edu.tw/~cjlin/libsvmtools/datasets/multiclass.html#usps",
           "no explicit licence (research use)", ("DigitFive",)),
    Source("MNIST_M", "mnist_m", (Remote("http://yaroslav.ganin.net/", "mnist_m.tar.gz", "tar"),),
           arrange_mnist_m, "http://yaroslav.ganin.net/", "research use", ("DigitFive",),
           manual="MNIST-M is distributed through a Google Drive folder linked from "
                  "http://yaroslav.ganin.net/ with no stable direct link; download "
                  "mnist_m.tar.gz from there"),
    Source("SynthDigits", "SynthDigits", (
        Remote("http://yaroslav.ganin.net/", "synth_train_32x32.mat"),
        Remote("http://yaroslav.ganin.net/", "synth_test_32x32.mat")),
           move_files("synth_train_32x32.mat", "synth_test_32x32.mat"),
           "http://yaroslav.ganin.net/", "research use", ("DigitFive",),
           manual="SynNumbers / SynthDigits is distributed through a Google Drive folder linked "
                  "from http://yaroslav.ganin.net/ with no stable direct link; download the two "
                  ".mat files from there"),
    Source("DigitFive", "", parts=("MNIST", "MNIST_M", "SVHN", "SynthDigits", "USPS"),
           homepage="Peng et al. 2019", datasets=("DigitFive",)),
    Source("GTA5", "GTA5", tuple(
        Remote("https://download.visinf.tu-darmstadt.de/data/from_games/", f"{i:02d}_{k}.zip",
               "zip") for k in ("images", "labels") for i in range(1, 11)),
           move_folders("images", "labels"), "https://download.visinf.tu-darmstadt.de/data/"
           "from_games/", "research use (Richter et al. 2016; images from GTA V)",
           ("GTA5Cityscapes",),
           manual="GTA5 (Richter et al. 2016) is published as 10 image and 10 label zip files on "
                  "https://download.visinf.tu-darmstadt.de/data/from_games/ without checksums "
                  "or a scripted link; download 01_images.zip ... 10_images.zip and "
                  "01_labels.zip ... 10_labels.zip there"),
    Source("Cityscapes", "cityscapes", (
        Remote("https://www.cityscapes-dataset.com/downloads/", "leftImg8bit_trainvaltest.zip",
               "zip"),
        Remote("https://www.cityscapes-dataset.com/downloads/", "gtFine_trainvaltest.zip", "zip")),
           move_folders("leftImg8bit", "gtFine"), "https://www.cityscapes-dataset.com",
           "Cityscapes terms (non-commercial; registration required)",
           ("GTA5Cityscapes", "SynthiaCityscapes16", "SynthiaCityscapes13"),
           manual="Cityscapes needs a login: register at https://www.cityscapes-dataset.com, "
                  "accept its terms and download leftImg8bit_trainvaltest.zip and "
                  "gtFine_trainvaltest.zip from its downloads page"),
    Source("SYNTHIA", "RAND_CITYSCAPES", (), None, "http://synthia-dataset.net",
           "CC BY-NC-SA 3.0", ("SynthiaCityscapes16", "SynthiaCityscapes13"),
           manual="SYNTHIA-RAND-CITYSCAPES is a .rar archive from http://synthia-dataset.net "
                  "(downloads page), which this command cannot unpack; unpack it yourself so that "
                  "<data-dir>/RAND_CITYSCAPES/RGB and <data-dir>/RAND_CITYSCAPES/GT/LABELS exist"),
    # ImageNet weights of the torchvision ResNets (DomainBed's backbones; ResNet-101: DeepLabv2)
    _weights("resnet18", "f37072fd", ("backbone resnet18",)),
    _weights("resnet50", "0676ba61", ("backbone resnet50",)),
    _weights("resnet101", "63fe2227", ("seg_network deeplabv2",)),
    Source("WILDSCamelyon", "camelyon17_v1.0", fetcher=wilds_fetcher("camelyon17"),
           homepage="https://wilds.stanford.edu", licence="CC0 1.0",
           datasets=("WILDSCamelyon",)),
    Source("WILDSFMoW", "fmow_v1.1", fetcher=wilds_fetcher("fmow"),
           homepage="https://wilds.stanford.edu", licence="FMoW terms (see wilds)",
           datasets=("WILDSFMoW",)),
)}


def get_source(name: str) -> Source:
    """The source named `name` (case-insensitive), or the one source of dataset `name`."""
    lowered = {k.lower(): s for k, s in SOURCES.items()}
    if name.lower() in lowered:
        return lowered[name.lower()]
    providers = [s for s in SOURCES.values() if name in s.datasets]
    if len(providers) == 1:
        return providers[0]
    if providers:  # a dataset built from several sources (GTA5Cityscapes): all of them
        return Source(name, "", parts=tuple(s.name for s in providers), datasets=(name,))
    raise UnknownNameError("downloadable dataset", name, SOURCES)
