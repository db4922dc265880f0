"""Seeded fingerprints of every algorithm in every setting it declares: proof that
a refactoring of algorithms/ leaves behaviour unchanged, bit for bit.

For each (algorithm, setting, input kind) the algorithm is built as the conformance checks build
it (`shiftbench.testing`, every generator seeded with 0, tiny hparams), trained for `--updates`
steps on seeded random batches shaped as the setting's, and four SHA-256 digests are taken: of
the values every update returned, of `predict` on a fixed probe (and `adapt` where the setting
adapts at test time), of the model's `state_dict`, and of `full_state()` (model + optimizers +
counters). One thread, so that reductions keep their order.

    python bench/fingerprints.py --out before.json          # on the commit before the change
    python bench/fingerprints.py --compare before.json      # after: exit 1 naming what moved

Two more families of keys drive the round hook (`on_round`) as the trainer does, before every
update whose step is a multiple of `round_interval()`, over a budget long enough for every phase:
`name|setting|kind|rounds` for the classification algorithms with rounds (CBST, CRST, TPLD, ...;
`ROUND_UPDATES` updates), and `name|setting|segmentation` for every segmentation algorithm, on
seeded 32x64 label maps with 4 classes (`SEG_UPDATES` updates). Their digests add the values
every round returned to "updates".
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import sys
from typing import Any

import torch


def digest(value: Any) -> str:
    """SHA-256 of a nested structure of tensors, numbers, strings, dicts and sequences."""
    h = hashlib.sha256()

    def feed(v: Any) -> None:
        if isinstance(v, torch.Tensor):
            t = v.detach().cpu()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            flat = t.contiguous().reshape(-1)
            h.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
        elif isinstance(v, dict):
            h.update(b"{")
            for k in sorted(v, key=str):
                h.update(repr(k).encode())
                feed(v[k])
            h.update(b"}")
        elif isinstance(v, (list, tuple)):
            h.update(b"[")
            for item in v:
                feed(item)
            h.update(b"]")
        else:
            h.update(repr(v).encode())

    feed(value)
    return h.hexdigest()


def fingerprint(cls: type, setting_name: str, kind: str, updates: int) -> dict[str, str]:
    from shiftbench.seeds import seed_everything
    from shiftbench.setting import get_setting
    from shiftbench.testing import _batches, _build, _probe

    setting = get_setting(setting_name)
    seed_everything(0)  # Python's and NumPy's generators too (SelfReg draws from them)
    alg, shape, num_classes = _build(cls, setting, kind)  # seeds torch with 0
    values = [alg.train_step(*_batches(shape, num_classes, 2, setting, seed=step))
              for step in range(updates)]
    return _digests(alg, values, _probe(shape))


ROUND_UPDATES = 12  # TPLD's defaults: 6 source steps, then 4 voting rounds and 2 hard rounds
SEG_UPDATES = 12
SEG_SHAPE, SEG_CLASSES = (3, 32, 64), 4


def _digests(alg: Any, values: list, x: torch.Tensor) -> dict[str, str]:
    alg.eval()
    with torch.no_grad():
        outputs = [alg.predict(x)]
    if alg.setting.adapts_at_test:
        outputs.append(alg.adapt(x))
        alg.reset_adaptation()
    return {"updates": digest(values), "predictions": digest(outputs),
            "model": digest(alg.state_dict()), "full_state": digest(alg.full_state())}


def _with_rounds(alg: Any, batches: Any, targets: list[torch.Tensor], updates: int) -> list:
    """`updates` train steps, each preceded by the round hook when a round is due (as the
    trainer's loop); returns every value the hook and the updates returned."""
    values = []
    every = alg.round_interval()
    for step in range(updates):
        if every and step % every == 0:
            values.append(alg.on_round(lambda: iter(targets)))
        values.append(alg.train_step(*batches(step)))
    return values


def round_fingerprint(cls: type, setting_name: str, kind: str, updates: int) -> dict[str, str]:
    """As `fingerprint`, for a classification algorithm with rounds, the rounds driven."""
    from shiftbench.seeds import seed_everything
    from shiftbench.setting import get_setting
    from shiftbench.testing import _batches, _build, _probe

    setting = get_setting(setting_name)
    seed_everything(0)
    alg, shape, num_classes = _build(cls, setting, kind)
    alg.total_steps = updates
    targets = list(torch.randn((12, *shape), generator=torch.Generator().manual_seed(7)).split(5))
    values = _with_rounds(alg, lambda s: _batches(shape, num_classes, 2, setting, seed=s),
                          targets, updates)
    return _digests(alg, values, _probe(shape))


def _seg_batch(seed: int, n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((n, *SEG_SHAPE), generator=g)
    y = torch.randint(SEG_CLASSES, (n, *SEG_SHAPE[1:]), generator=g)
    y[:, :2] = 255  # ignored rows
    return x, y


def seg_fingerprint(cls: type, setting_name: str, updates: int) -> dict[str, str]:
    """A segmentation algorithm (the small network, width 4) trained on seeded label maps."""
    from shiftbench.hparams import DatasetInfo
    from shiftbench.seeds import seed_everything
    from shiftbench.setting import get_setting

    setting = get_setting(setting_name)
    seed_everything(0)
    space = cls.hparam_space(DatasetInfo("Debug", SEG_SHAPE, SEG_CLASSES))
    hparams = {k: hp.default for k, hp in space.items()} | {"seg_width": 4, "batch_size": 4}
    alg = cls(SEG_SHAPE, SEG_CLASSES, 1, hparams, setting=setting, total_steps=updates)

    def batches(step: int):
        unlabeled = [_seg_batch(50 + step)[0]] if setting.unlabeled_target else None
        return [_seg_batch(step)], unlabeled

    targets = list(_seg_batch(99, 6)[0].split(3))
    values = _with_rounds(alg, batches, targets, updates)
    return _digests(alg, values, _seg_batch(9, 3)[0])


def _guarded(compute: Any, *args: Any) -> dict[str, str]:
    try:
        return compute(*args)
    except Exception as e:  # noqa: BLE001 - an error is a fingerprint too
        return {"error": f"{type(e).__name__}: {e}"}


def all_fingerprints(updates: int, pattern: str = "*") -> dict[str, dict[str, str]]:
    from shiftbench.algorithms import ALGORITHM_REGISTRY, Algorithm
    from shiftbench.testing import SHAPES

    out = {}
    for name in ALGORITHM_REGISTRY.names(pattern):
        cls = ALGORITHM_REGISTRY.get(name)
        for setting in cls.SETTINGS:
            if "segmentation" in cls.TASK_TYPES:
                out[f"{name}|{setting}|segmentation"] = _guarded(seg_fingerprint, cls, setting,
                                                                 SEG_UPDATES)
            if "classification" not in cls.TASK_TYPES:
                continue
            for kind in sorted(SHAPES):
                out[f"{name}|{setting}|{kind}"] = _guarded(fingerprint, cls, setting, kind, updates)
                if cls.round_interval is not Algorithm.round_interval:
                    out[f"{name}|{setting}|{kind}|rounds"] = _guarded(
                        round_fingerprint, cls, setting, kind, ROUND_UPDATES)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="write the fingerprints to this JSON file")
    p.add_argument("--compare", help="compare with fingerprints written before; exit 1 on change")
    p.add_argument("--updates", type=int, default=3)
    p.add_argument("--algorithms", default="*", help="shell pattern of algorithm names")
    ns = p.parse_args(argv)
    torch.set_num_threads(1)
    prints = all_fingerprints(ns.updates, ns.algorithms)
    if ns.out:
        with open(ns.out, "w", encoding="utf-8") as f:
            json.dump({"torch": torch.__version__, "updates": ns.updates, "fingerprints": prints},
                      f, indent=1, sort_keys=True)
    print(f"{len(prints)} fingerprints ({sum('error' in v for v in prints.values())} errors)")
    if not ns.compare:
        return 0
    with open(ns.compare, encoding="utf-8") as f:
        before = {key: value for key, value in json.load(f)["fingerprints"].items()
                  if fnmatch.fnmatchcase(key.split("|")[0], ns.algorithms)}
    changed = [f"{key}: {', '.join(k for k in prints[key] if prints[key].get(k) != before[key].get(k))}"
               for key in sorted(set(prints) & set(before)) if prints[key] != before[key]]
    for line in changed:
        print("changed", line)
    for key in sorted(set(before) ^ set(prints)):
        print("only in", "before" if key in before else "now", key)
    return 1 if changed else 0


if __name__ == "__main__":
    sys.exit(main())
