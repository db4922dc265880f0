"""Seeded fingerprints of every classification algorithm in every setting it declares: proof that
a refactoring of algorithms/ leaves behaviour unchanged, bit for bit.

For each (algorithm, setting, input kind) the algorithm is built as the conformance checks build
it (`shiftbench.testing`, every generator seeded with 0, tiny hparams), trained for `--updates`
steps on seeded random batches shaped as the setting's, and four SHA-256 digests are taken: of
the values every update returned, of `predict` on a fixed probe (and `adapt` where the setting
adapts at test time), of the model's `state_dict`, and of `full_state()` (model + optimizers +
counters). One thread, so that reductions keep their order.

    python bench/fingerprints.py --out before.json          # on the commit before the change
    python bench/fingerprints.py --compare before.json      # after: exit 1 naming what moved

Segmentation algorithms have their own inputs and are not covered here.
"""

from __future__ import annotations

import argparse
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
    alg.eval()
    x = _probe(shape)
    with torch.no_grad():
        outputs = [alg.predict(x)]
    if setting.adapts_at_test:
        outputs.append(alg.adapt(x))
        alg.reset_adaptation()
    return {"updates": digest(values), "predictions": digest(outputs),
            "model": digest(alg.state_dict()), "full_state": digest(alg.full_state())}


def all_fingerprints(updates: int, pattern: str = "*") -> dict[str, dict[str, str]]:
    from shiftbench.algorithms import ALGORITHM_REGISTRY
    from shiftbench.testing import SHAPES

    out = {}
    for name in ALGORITHM_REGISTRY.names(pattern):
        cls = ALGORITHM_REGISTRY.get(name)
        if "classification" not in cls.TASK_TYPES:
            continue
        for setting in cls.SETTINGS:
            for kind in sorted(SHAPES):
                key = f"{name}|{setting}|{kind}"
                try:
                    out[key] = fingerprint(cls, setting, kind, updates)
                except Exception as e:  # noqa: BLE001 - an error is a fingerprint too
                    out[key] = {"error": f"{type(e).__name__}: {e}"}
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
        before = json.load(f)["fingerprints"]
    changed = [f"{key}: {', '.join(k for k in prints[key] if prints[key].get(k) != before[key].get(k))}"
               for key in sorted(set(prints) & set(before)) if prints[key] != before[key]]
    for line in changed:
        print("changed", line)
    for key in sorted(set(before) ^ set(prints)):
        print("only in", "before" if key in before else "now", key)
    return 1 if changed else 0


if __name__ == "__main__":
    sys.exit(main())
