"""Resolved hyperparameter spaces and seeded draws of every algorithm: proof that a refactoring
of the hparam declarations leaves every trial's configuration unchanged.

For each registered algorithm, each dataset (every registered one, plus a few bare shapes that
no registered dataset has: a 32x32 image, a 64x64 image, a vector) and each protocol a trial can
use (`domainbed` only for DomainBed's algorithms), through the public functions of
`shiftbench.hparams_registry`: the space (name and full `repr` of each `HParam`, in order), the
draws `random_hparams(seed)` and the configurations `resolve_hparams(seed)` for `--seeds`.

    python bench/hparam_spaces.py --out before.json        # on the commit before the change
    python bench/hparam_spaces.py --compare before.json    # after: exit 1 naming what moved

`--compare` says for each changed key whether only the order of the space moved (the draws do
not depend on it: each hparam is drawn with its own generator, `seed_hash(seed, name)`, and
records store configurations with sorted keys); `--ignore-order` then counts it as unchanged.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

EXTRA_SHAPES = {"Shape32": ((3, 32, 32), 4), "Shape64": ((3, 64, 64), 4), "Vector": ((8,), 3)}


def _datasets() -> list[Any]:
    from shiftbench.datasets import list_datasets
    from shiftbench.hparams import DatasetInfo, dataset_info

    return ([dataset_info(name) for name in list_datasets()]
            + [DatasetInfo(name, shape, k) for name, (shape, k) in EXTRA_SHAPES.items()])


def _reprs(config: dict[str, Any]) -> dict[str, str]:
    """name -> repr(value) (types kept: 1 and 1.0 differ); the order is the space's."""
    return {name: repr(value) for name, value in config.items()}


def dump(algorithm: str, ds: Any, protocol: str, seeds: list[int]) -> dict[str, Any]:
    from shiftbench import hparams_registry as reg

    try:
        space = reg.hparam_space(algorithm, ds, protocol)
        return {"space": [[name, repr(hp)] for name, hp in space.items()],
                "random": {str(s): _reprs(reg.random_hparams(algorithm, ds, s, protocol))
                           for s in seeds},
                "resolved": {str(s): _reprs(reg.resolve_hparams(algorithm, ds, s, None, protocol))
                             for s in seeds}}
    except Exception as e:  # noqa: BLE001 - an error is part of the record too
        return {"error": f"{type(e).__name__}: {e}"}


def all_dumps(pattern: str, seeds: list[int]) -> dict[str, dict[str, Any]]:
    from shiftbench.algorithms import list_algorithms
    from shiftbench.hparams import DOMAINBED_ALGORITHMS

    out = {}
    datasets = _datasets()
    for algorithm in list_algorithms(pattern):
        for ds in datasets:
            for protocol in ("shiftbench", "domainbed"):
                if protocol == "domainbed" and algorithm not in DOMAINBED_ALGORITHMS:
                    continue
                out[f"{algorithm}|{ds.name}|{protocol}"] = dump(algorithm, ds, protocol, seeds)
    return out


def differences(before: dict[str, Any], now: dict[str, Any], ignore_order: bool = False
                ) -> list[str]:
    lines = []
    for key in sorted(set(before) & set(now)):
        if before[key] == now[key]:
            continue
        b, n = before[key], now[key]
        fields = [f for f in sorted(set(b) | set(n)) if b.get(f) != n.get(f)]
        order_only = (fields == ["space"] and sorted(b["space"]) == sorted(n["space"]))
        if not (order_only and ignore_order):
            lines.append(f"changed {key}: {', '.join(fields)}"
                         + (" (order only)" if order_only else ""))
    lines += [f"only in {'before' if key in before else 'now'} {key}"
              for key in sorted(set(before) ^ set(now))]
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="write the dumps to this JSON file")
    p.add_argument("--compare", help="compare with dumps written before; exit 1 on any change")
    p.add_argument("--algorithms", default="*", help="shell pattern of algorithm names")
    p.add_argument("--seeds", default="0,1,2,3", help="hparams seeds, comma-separated")
    p.add_argument("--ignore-order", action="store_true",
                   help="a space whose hparams only changed order counts as unchanged")
    ns = p.parse_args(argv)
    dumps = all_dumps(ns.algorithms, [int(s) for s in ns.seeds.split(",")])
    if ns.out:
        with open(ns.out, "w", encoding="utf-8") as f:
            json.dump(dumps, f, indent=0, sort_keys=True)
    errors = sum("error" in v for v in dumps.values())
    print(f"{len(dumps)} (algorithm, dataset, protocol) spaces ({errors} errors)")
    if not ns.compare:
        return 0
    with open(ns.compare, encoding="utf-8") as f:
        before = json.load(f)
    lines = differences(before, dumps, ns.ignore_order)
    print("\n".join(lines) if lines else "identical: spaces, draws and configurations")
    return 1 if lines else 0


if __name__ == "__main__":
    sys.exit(main())
