"""The pre-registered effects of the digits DA table (docs/preregistration.md), tested on a sweep.

Reads a sweep's records through `shiftbench.results` (the same selection and health flags as
`shiftbench collect`) and prints, as Markdown:

1. per algorithm and trial seed, the target accuracy of the checkpoint training-domain
   validation selects (`iid`, phase-aware) and of the last checkpoint (the `oracle` rule's
   checkpoint), the source validation accuracy there and the run's health flags;
2. per effect "method vs baseline on task", the paired differences per seed, their mean, the
   95 % Student-t interval and the verdict of the pre-registered decision rule: reproduced
   (mean > 0, interval above 0), direction only (mean > 0), not reproduced (mean <= 0).

    python bench/digits_da_effects.py --input-dir /work/runs/da/table [--task mnist:mnist_m]

Effects numbered E1.. are the pre-registered extensions (other algorithms and tasks).
"""

from __future__ import annotations

import argparse
from collections import defaultdict

from shiftbench.results.reading import read_sweep
from shiftbench.results.stats import paired_difference
from shiftbench.results.tables import collect

# (method, baseline, preregistered number) on mnist -> mnist_m (docs/preregistration.md)
EFFECTS = [
    ("DANN", "ERM", 1), ("CDAN", "ERM", 2), ("CDANE", "ERM", 3), ("CDANE", "DANN", 4),
    ("MCC", "ERM", 5), ("SHOT", "ERM", 6), ("AdaBN", "ERM", 7), ("MCD", "ERM", 8),
    ("MDD", "ERM", 9), ("BSP", "ERM", 10), ("BSP", "DANN", 11), ("DAN", "ERM", 12),
    ("ADDA", "ERM", 13), ("CBST", "ERM", 14), ("CRST", "ERM", 15), ("CRST", "CBST", 16),
]
# The pre-registered extensions, numbered E1.. in the order docs/preregistration.md lists them:
# on mnist -> lowres and lowres -> mnist the eight TLlib "> ERM" directions, on synth -> mnist
# DANN > ERM; for the remaining algorithms DeepCORAL, FixMatch and DACS > ERM (on every task).
_TLLIB = ("DANN", "DAN", "ADDA", "CDAN", "MCD", "BSP", "MDD", "MCC")
_REMAINING = [("DeepCORAL", "ERM", "E1"), ("FixMatch", "ERM", "E2"), ("DACS", "ERM", "E3")]
EXTENSIONS = {
    "mnist:mnist_m": _REMAINING,
    "mnist:lowres": [(m, "ERM", f"E{4 + i}") for i, m in enumerate(_TLLIB)] + _REMAINING,
    "lowres:mnist": [(m, "ERM", f"E{12 + i}") for i, m in enumerate(_TLLIB)] + _REMAINING,
    "synth:mnist": [("DANN", "ERM", "E20")] + _REMAINING,
}
RULES = {"iid": "training-domain validation", "oracle": "last checkpoint"}


def effects_for(task: str) -> list[tuple[str, str, object]]:
    """The pre-registered effects of one task: the core list (mnist -> mnist_m only), then the
    extensions."""
    return (EFFECTS if task == "mnist:mnist_m" else []) + EXTENSIONS.get(task, [])


def verdict(mean: float | None, low: float | None) -> str:
    if mean is None:
        return "no data"
    if mean <= 0:
        return "not reproduced"
    return "**reproduced**" if low is not None and low > 0 else "direction only"


def _fmt(x: float | None, digits: int = 1, sign: bool = False) -> str:
    if x is None:
        return "—"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def per_seed(collection, task: tuple[int, int]) -> dict[str, dict[str, dict[int, object]]]:
    """rule -> algorithm -> trial seed -> Selected, for the task (source env, target env)."""
    out: dict[str, dict[str, dict[int, object]]] = defaultdict(lambda: defaultdict(dict))
    for rule in RULES:
        for s in collection.selected.get(rule, []):
            if s.test_env == task[1] and tuple(s.source_envs or ()) == (task[0],):
                out[rule][s.algorithm][s.trial_seed] = s
    return out


def source_val(record: dict) -> float | None:
    """Mean validation accuracy (%) of the record's source domains."""
    vals = [record.get(f"env{i}_out_acc") for i in record["args"].get("source_envs") or ()]
    vals = [v for v in vals if isinstance(v, float)]
    return None if not vals else 100 * sum(vals) / len(vals)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--input-dir", required=True)
    p.add_argument("--task", default="mnist:mnist_m", help="source:target environment names")
    ns = p.parse_args(argv)
    sweep = read_sweep(ns.input_dir, only_done=True, quiet=True)
    records = sweep.records
    envs = next(r["environments"] for r in records if r.get("environments"))
    source, target = (envs.index(n) for n in ns.task.split(":"))
    collection = collect(sweep, list(RULES))
    chosen = per_seed(collection, (source, target))
    by_step = {}
    for r in records:
        a = r["args"]
        by_step[(a["algorithm"], int(a["trial_seed"]), tuple(a.get("source_envs") or ()),
                 r["step"])] = r

    print(f"### Per trial: {envs[source]} → {envs[target]}\n")
    print("| algorithm | seed | iid step | iid target | source val | last target | flags |")
    print("|---|---|---|---|---|---|---|")
    for alg in sorted(chosen["iid"], key=str.lower):
        for seed, s in sorted(chosen["iid"][alg].items()):
            last = chosen["oracle"][alg].get(seed)
            rec = by_step.get((alg, seed, (source,), s.step), {"args": {}})
            flags = sorted(set(s.health) | set(last.health if last else ()))
            print(f"| {alg} | {seed} | {s.step} | {100 * s.test_acc:.1f} | "
                  f"{_fmt(source_val(rec))} | "
                  f"{_fmt(100 * last.test_acc if last else None)} | {', '.join(flags) or '—'} |")

    for rule, title in RULES.items():
        print(f"\n### Effects on {envs[source]} → {envs[target]}, {title} ({rule})\n")
        print("| # | effect | seeds | per-seed Δ | mean Δ | 95 % interval | verdict |")
        print("|---|---|---|---|---|---|---|")
        for method, base, number in effects_for(ns.task):
            m, b = chosen[rule].get(method, {}), chosen[rule].get(base, {})
            seeds = sorted(set(m) & set(b))
            diffs = [100 * (m[t].test_acc - b[t].test_acc) for t in seeds]
            d = paired_difference(diffs) if diffs else None
            mean = d.mean if d else None
            low = d.low if d else None
            interval = "—" if d is None or d.low is None else f"[{d.low:+.1f}, {d.high:+.1f}]"
            print(f"| {number} | {method} vs {base} | {len(seeds)} | "
                  f"{', '.join(f'{x:+.1f}' for x in diffs) or '—'} | {_fmt(mean, sign=True)} | "
                  f"{interval} | {verdict(mean, low)} |")


if __name__ == "__main__":
    main()
