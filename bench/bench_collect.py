"""How long `shiftbench collect` takes on a large synthetic sweep (DomainBed-sized groups).

The sweep: A algorithms x D datasets of 4 environments x 3 trials x H hparam configs x 10
held-out sets (4 single + 6 pairs, as DomainBed's full sweep) x C checkpoints. Records are built
in memory for selection and tables; a slice is written to disk to time reading.

    python bench/bench_collect.py [--algorithms 10] [--datasets 2] [--hparams 20] [--checkpoints 11]
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import tempfile
import time
from pathlib import Path

from shiftbench.results.formats import render
from shiftbench.results.reading import read_sweep
from shiftbench.results.tables import collect

ENV_SETS = [[0], [1], [2], [3], *map(list, itertools.combinations(range(4), 2))]


def make_records(n_alg: int, n_ds: int, n_hp: int, n_ckpt: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    records = []
    for a, d, trial, hp, envs in itertools.product(range(n_alg), range(n_ds), range(3), range(n_hp),
                                                   ENV_SETS):
        args = {"dataset": f"DS{d}", "algorithm": f"ALG{a:02d}", "test_envs": envs,
                "hparams_seed": hp, "trial_seed": trial, "seed": rng.randrange(2**31),
                "task": "dg", "holdout_fraction": 0.2}
        hparams = {"lr": 10 ** rng.uniform(-4.5, -2.5), "batch_size": rng.choice([32, 64])}
        base = 0.5 + 0.02 * a + rng.uniform(-0.05, 0.05)
        for c in range(n_ckpt):
            r = {"args": args, "hparams": hparams, "step": 100 * c, "loss": 1.0 / (c + 1)}
            for i in range(4):
                acc = min(1.0, base + 0.03 * c + rng.uniform(-0.02, 0.02) - 0.1 * (i in envs))
                r[f"env{i}_in_acc"] = acc
                r[f"env{i}_out_acc"] = acc + rng.uniform(-0.01, 0.01)
            records.append(r)
    return records


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--algorithms", type=int, default=10)
    p.add_argument("--datasets", type=int, default=2)
    p.add_argument("--hparams", type=int, default=20)
    p.add_argument("--checkpoints", type=int, default=11)
    ns = p.parse_args()
    t = time.perf_counter()
    records = make_records(ns.algorithms, ns.datasets, ns.hparams, ns.checkpoints)
    build = time.perf_counter() - t
    t = time.perf_counter()
    collection = collect(records, ["iid", "loo", "oracle"])
    collect_s = time.perf_counter() - t
    t = time.perf_counter()
    text = render(collection, "text")
    render_s = time.perf_counter() - t
    # reading: one algorithm on one dataset written to disk
    slice_ = [r for r in records if r["args"]["algorithm"] == "ALG00" and r["args"]["dataset"] == "DS0"]
    with tempfile.TemporaryDirectory() as tmp:
        by_trial: dict[str, list[dict]] = {}
        for r in slice_:
            key = json.dumps(r["args"], sort_keys=True)
            by_trial.setdefault(key, []).append(r)
        for k, (_, recs) in enumerate(by_trial.items()):
            d = Path(tmp) / f"t{k:05d}"
            d.mkdir()
            (d / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
            (d / "done").write_text("done")
        t = time.perf_counter()
        sweep = read_sweep(tmp, quiet=True)
        read_s = time.perf_counter() - t
    print(json.dumps({
        "records": len(records), "build_s": round(build, 2),
        "collect_3_rules_s": round(collect_s, 2), "render_text_s": round(render_s, 3),
        "records_per_s_collect": round(len(records) / collect_s),
        "read_records": len(sweep.records), "read_trials": len(sweep.jobs),
        "read_s": round(read_s, 2), "records_per_s_read": round(len(sweep.records) / read_s),
        "text_lines": text.count("\n")}))


if __name__ == "__main__":
    main()
