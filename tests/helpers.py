"""Helpers for tests: records without the fields that legitimately differ between runs."""

from __future__ import annotations

import json
from pathlib import Path

from shiftbench.trainer import TIMING_KEYS


def stable_records(path: str | Path) -> list[dict]:
    """The records of a trial directory minus timings and output paths."""
    records = [json.loads(line) for line in (Path(path) / "results.jsonl").read_text().splitlines()]
    for r in records:
        for key in TIMING_KEYS:
            r.pop(key, None)
        r["args"].pop("output_dir", None)
    return records
