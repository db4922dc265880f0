"""Published reference tables shipped as data (`results/published/*.json`), shown beside a
comparison whose suite follows their protocol, marked "published, not re-run".

Each file holds the numbers of one source document with its repository, path and commit
(transcribed by bench/transcribe_published.py; tests/test_compare_published.py checks them
against values read by hand from the documents):

* `domainbed-2020`: DomainBed's full results (facebookresearch/DomainBed,
  `domainbed/results/2020_10_06_7df6f06/results.tex`): every dataset x selection rule (iid,
  loo, oracle), algorithms x held-out domains, mean +/- standard error over 3 trial seeds; and
  the averages table (algorithms x datasets).
* `tllib-office31`, `tllib-officehome`: TLlib's ResNet-50 tables
  (thuml/Transfer-Learning-Library, `examples/domain_adaptation/image_classification/README.md`):
  per source->target task, TLlib's own run, and the method paper's average (`Origin`).

A table applies when the comparison runs one of its `suites` with the suite's own budget
(steps, hparam configurations, trial seeds): a comparison at another budget is not the
published protocol, so its rows are left out with a note.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).resolve().parent / "published"
MARK = "published, not re-run"


@cache
def published_tables() -> dict[str, dict[str, Any]]:
    """Every shipped reference document, by id."""
    out = {}
    for path in sorted(DATA_DIR.glob("*.json")):
        doc = json.loads(path.read_text(encoding="utf-8"))
        out[doc["id"]] = doc
    return out


def source_text(doc: dict[str, Any]) -> str:
    s = doc["source"]
    of = f", results of {s['results_commit'][:7]}" if "results_commit" in s else ""
    return f"{s['repo']} {s['path']} @ {s['commit'][:7]}{of}"


def _column(columns: Sequence[str], unit: str) -> str | None:
    """The published column of a unit: its name, or a task whose domain names start with ours
    (TLlib's `Ar→Cl` is our `A→C`)."""
    if unit in columns:
        return unit
    if "→" not in unit:
        return None
    src, tgt = unit.split("→", 1)
    for col in columns:
        if "→" in col:
            a, b = col.split("→", 1)
            if src and a.startswith(src) and b.startswith(tgt) and len(src) == 1 == len(tgt):
                return col
    return None


def reference_rows(suite: Any, units: Sequence[str], algorithms: Sequence[str],
                   rules: Sequence[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """Published rows (one per document, rule, algorithm) for the comparison's units, and notes
    on documents that do not apply."""
    rows, notes = [], []
    docs = [published_tables()[i] for i in suite.published if i in published_tables()]
    if docs and suite.overridden():
        notes.append(f"published rows ({', '.join(d['id'] for d in docs)}) not shown: they "
                     f"follow {suite.label}'s protocol, and this comparison changes its "
                     f"{', '.join(suite.overridden())}")
        return rows, notes
    for doc in docs:
        for table in doc["tables"]:
            if table["rule"] not in rules:
                continue
            # a dataset is a column of DomainBed's averages table, a task one of TLlib's tables
            cols = {u: _column(table["columns"], u) for u in units}
            if not any(cols.values()):
                continue
            shown = [a for a in algorithms if a in table["rows"]]
            if not shown:
                notes.append(f"{doc['id']} [{table['rule']}] has none of "
                             f"{', '.join(algorithms)}; its rows: {', '.join(table['rows'])}")
                continue
            for alg in shown:
                cells = table["rows"][alg]
                row = {"source": doc["id"], "rule": table["rule"], "algorithm": alg,
                       "table": table["dataset"], "mark": MARK}
                for unit, col in cols.items():
                    row[unit] = None if col is None else cells.get(col)
                rows.append(row)
    return rows, notes


def display_rows(rows: list[dict[str, Any]], units: Sequence[str]
                 ) -> list[tuple[str, list[str], list[list[str]]]]:
    """Tables for `shiftbench.results.compare.render`, one per (source, rule)."""
    def cell(v: Any) -> str:
        if not v:
            return "-"
        mean, err = v
        return f"{mean:.1f}" + ("" if err is None else f" ± {err:.1f}")

    out = []
    docs = published_tables()
    for key in dict.fromkeys((r["source"], r["rule"]) for r in rows):
        sub = [r for r in rows if (r["source"], r["rule"]) == key]
        doc = docs[key[0]]
        title = (f"[{key[1]}] {doc['title']}: {MARK} ({source_text(doc)}; {doc['units']})")
        table_rows = [[r["algorithm"]] + [cell(r.get(u)) for u in units] for r in sub]
        out.append((title, ["algorithm", *units], table_rows))
    return out
