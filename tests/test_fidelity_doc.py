"""docs/fidelity.md has one row for every registered algorithm, and every DomainBed algorithm
is registered."""

from __future__ import annotations

import re
from pathlib import Path

from shiftbench.algorithms import list_algorithms
from shiftbench.hparams_registry import DOMAINBED_ALGORITHMS

DOC = Path(__file__).resolve().parents[1] / "docs" / "fidelity.md"


def test_every_registered_algorithm_has_a_fidelity_row():
    rows = re.findall(r"^\| (\w+) \|", DOC.read_text(), re.M)
    names = set(list_algorithms())
    assert sorted(names - set(rows)) == []  # add a row to docs/fidelity.md
    assert sorted(set(rows) - names - {"Algorithm"}) == []


def test_every_domainbed_algorithm_is_registered():
    assert [a for a in DOMAINBED_ALGORITHMS if a not in set(list_algorithms())] == []
