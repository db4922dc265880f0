"""Users' own data as a registered dataset, in one call: a folder of images laid out as
`<root>/<domain>/<class>/<image>` (`register_image_folder`), or arrays with a domain label per
example (`register_arrays`); call them in a module passed to `--import`, or in a notebook."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shiftbench.datasets.base import DATASETS, MultiDomainDataset, TensorDomain
from shiftbench.errors import IMAGE_ERRORS, ShiftbenchError, image_error


def _decode(path: str, size: tuple[int, int] | None) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            image = im.convert("RGB")
            if size is not None and image.size != (size[1], size[0]):
                image = image.resize((size[1], size[0]), Image.BILINEAR)
            return np.array(image)
    except (*IMAGE_ERRORS, Image.DecompressionBombError) as e:
        raise image_error(path, e) from e


def register_image_folder(name: str, root: str | os.PathLike,
                          image_size: int | tuple[int, int] | None = None,
                          steps: int = 2001, checkpoint_freq: int = 200,
                          overwrite: bool = False) -> type[MultiDomainDataset]:
    """Register `<root>/<domain>/<class>/<image>` as dataset `name` (decoded into memory).

    Domains are the sorted sub-folders of `root`; every domain must have the same class
    folders. Images are converted to RGB and resized to `image_size` (an int for a square);
    with `image_size=None` they must all share one size. Errors are raised here, when the
    folder is scanned, except unreadable images and mixed sizes, which are found when the
    dataset is built. `overwrite=True` replaces a dataset registered under the same name.
    """
    root = Path(root)
    if not root.is_dir():
        raise ShiftbenchError(f"register_image_folder({name!r}): {root} is not a directory")
    from shiftbench.datasets.folder import scan_domain
    from shiftbench.datasets.lookup import IMAGE_EXTENSIONS
    from shiftbench.datasets.lookup import subdirs as _subdirs

    domains = _subdirs(root)
    if not domains:
        raise ShiftbenchError(f"register_image_folder({name!r}): {root} has no domain folders "
                              "(expected <root>/<domain>/<class>/<image>)")
    class_sets = {d: _subdirs(root / d) for d in domains}
    classes = class_sets[domains[0]]
    for d, cs in class_sets.items():
        if cs != classes:
            missing, extra = sorted(set(classes) - set(cs)), sorted(set(cs) - set(classes))
            raise ShiftbenchError(
                f"register_image_folder({name!r}): domain {d!r} has classes {cs} but domain "
                f"{domains[0]!r} has {classes} (missing: {missing or '-'}, extra: {extra or '-'})")
    if not classes:
        raise ShiftbenchError(f"register_image_folder({name!r}): no class folders in {root}")
    samples = {d: scan_domain(root / d, classes)[0] for d in domains}
    for d, s in samples.items():
        if not s:
            raise ShiftbenchError(f"register_image_folder({name!r}): domain {d!r} has no images "
                                  f"(extensions: {', '.join(IMAGE_EXTENSIONS)})")
    size = (image_size, image_size) if isinstance(image_size, int) else image_size
    first = samples[domains[0]][0][0]
    if size is None:
        from PIL import Image

        try:
            with Image.open(first) as im:
                size = (im.size[1], im.size[0])
        except OSError as e:
            raise ShiftbenchError(f"cannot read image {first}: {e}") from e
        fixed = False
    else:
        fixed = True

    def build(self, root_arg, test_envs, hparams) -> None:
        MultiDomainDataset.__init__(self, root_arg, test_envs, hparams)
        self.datasets = []
        for d in domains:
            arrays = []
            for path, _ in samples[d]:
                a = _decode(path, size if fixed else None)
                if a.shape[:2] != size:
                    raise ShiftbenchError(
                        f"dataset {name}: {path} is {a.shape[1]}x{a.shape[0]} but {first} is "
                        f"{size[1]}x{size[0]}; pass image_size= to resize them")
                arrays.append(a)
            x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
            y = torch.tensor([label for _, label in samples[d]], dtype=torch.long)
            self.datasets.append(TensorDomain(x, y, name=d))

    attrs: dict[str, Any] = dict(
        ENVIRONMENTS=tuple(domains), INPUT_SHAPE=(3, *size), NUM_CLASSES=len(classes),
        CLASSES=tuple(classes), N_STEPS=steps, CHECKPOINT_FREQ=checkpoint_freq,
        SOURCE=f"image folder {root}", __init__=build, __doc__=f"Images in {root}.")
    return DATASETS.register(name, overwrite=overwrite)(type(name, (MultiDomainDataset,), attrs))


def register_arrays(name: str, x, y, domain, num_classes: int | None = None,
                    domain_names: Sequence[str] | None = None, steps: int = 2001,
                    checkpoint_freq: int = 200, overwrite: bool = False,
                    ) -> type[MultiDomainDataset]:
    """Register in-memory arrays as dataset `name`.

    `x`: [N, ...] inputs (uint8 images are scaled to [0, 1] per batch, floats used as is);
    `y`: [N] integer labels in [0, num_classes); `domain`: [N] domain ids or names (the
    sorted distinct values become the environments, or `domain_names` gives their order).
    """
    x = torch.as_tensor(np.asarray(x))
    y = torch.as_tensor(np.asarray(y))
    domain = np.asarray(domain)
    if not (len(x) == len(y) == len(domain)):
        raise ShiftbenchError(f"register_arrays({name!r}): x, y and domain have lengths "
                              f"{len(x)}, {len(y)}, {len(domain)}")
    if y.dtype.is_floating_point or y.dim() != 1:
        raise ShiftbenchError(f"register_arrays({name!r}): y must be 1-d integer labels")
    if len(y) == 0:
        raise ShiftbenchError(f"register_arrays({name!r}): no examples")
    n_classes = int(num_classes) if num_classes is not None else int(y.max()) + 1
    if int(y.min()) < 0 or int(y.max()) >= n_classes:
        raise ShiftbenchError(f"register_arrays({name!r}): labels must lie in "
                              f"[0, {n_classes}), found [{int(y.min())}, {int(y.max())}]")
    values = sorted(set(domain.tolist()))
    order = list(domain_names) if domain_names is not None else values
    unknown = sorted(map(str, set(values) - set(order)))
    if unknown:
        raise ShiftbenchError(f"register_arrays({name!r}): domain values {unknown} are not in "
                              f"domain_names {list(order)}")
    envs = []
    for d in order:
        mask = torch.from_numpy(domain == d)
        if not bool(mask.any()):
            raise ShiftbenchError(f"register_arrays({name!r}): domain {d!r} has no examples")
        envs.append((x[mask], y[mask].long()))
    names = tuple(str(d) for d in order)

    def build(self, root_arg, test_envs, hparams) -> None:
        MultiDomainDataset.__init__(self, root_arg, test_envs, hparams)
        self.datasets = [TensorDomain(ex, ey, name=n) for (ex, ey), n in zip(envs, names)]

    attrs: dict[str, Any] = dict(
        ENVIRONMENTS=names, INPUT_SHAPE=tuple(x.shape[1:]), NUM_CLASSES=n_classes,
        N_STEPS=steps, CHECKPOINT_FREQ=checkpoint_freq, SOURCE="in-memory arrays",
        __init__=build, __doc__=f"In-memory arrays, domains {', '.join(names)}.")
    return DATASETS.register(name, overwrite=overwrite)(type(name, (MultiDomainDataset,), attrs))
