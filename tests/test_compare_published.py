"""The shipped published reference tables against values read by hand from the source documents,
and when `shiftbench compare` shows them.

Sources (read with `git show COMMIT:PATH` in clones of the repositories):
* facebookresearch/DomainBed @ b93c22a1cfc3b2428398272c1a116c8de1f4139e,
  domainbed/results/2020_10_06_7df6f06/results.tex (results of commit 7df6f06);
* thuml/Transfer-Learning-Library @ c4aa59eb565650a552b809411601d0589efbbfe4,
  examples/domain_adaptation/image_classification/README.md.
"""

from __future__ import annotations

import pytest

from shiftbench.results.published import published_tables, reference_rows
from shiftbench.sweeps.suites import get_suite

# (rule, table, algorithm, column) -> (mean, standard error), transcribed by hand
DOMAINBED = {
    ("iid", "Averages", "ERM", "ColoredMNIST"): (51.5, 0.1),
    ("iid", "Averages", "ERM", "PACS"): (85.5, 0.2),
    ("iid", "Averages", "ERM", "DomainNet"): (40.9, 0.1),
    ("iid", "Averages", "ERM", "Avg"): (66.6, None),
    ("iid", "Averages", "CORAL", "OfficeHome"): (68.7, 0.3),
    ("iid", "Averages", "CORAL", "Avg"): (67.5, None),
    ("iid", "Averages", "MMD", "DomainNet"): (23.4, 9.5),
    ("iid", "Averages", "DANN", "TerraIncognita"): (46.7, 0.5),
    ("iid", "ColoredMNIST", "ARM", "+90%"): (82.0, 0.5),
    ("iid", "ColoredMNIST", "MLDG", "-90%"): (9.8, 0.1),
    ("loo", "Averages", "ERM", "ColoredMNIST"): (36.7, 0.1),
    ("loo", "Averages", "CORAL", "PACS"): (82.6, 0.5),
    ("loo", "Averages", "DANN", "VLCS"): (76.9, 0.4),
    ("oracle", "Averages", "ERM", "ColoredMNIST"): (57.8, 0.2),
    ("oracle", "Averages", "CORAL", "TerraIncognita"): (52.8, 0.2),
    ("oracle", "Averages", "DANN", "VLCS"): (79.7, 0.5),
}
TLLIB_OFFICE31 = {("ERM", "Avg"): 79.5, ("DANN", "A→W"): 91.4, ("DANN", "Origin"): 82.2,
                  ("MCC", "A→D"): 95.6, ("MDD", "W→A"): 72.2, ("FixMatch", "W→D"): 100.0}
TLLIB_OFFICEHOME = {("ERM", "Ar→Cl"): 41.1, ("DANN", "Avg"): 65.2, ("CDAN", "Rw→Pr"): 83.8,
                    ("MCC", "Avg"): 72.4, ("MDD", "Origin"): 68.1, ("BSP", "Pr→Cl"): 55.2}


def _table(doc_id: str, rule: str, dataset: str) -> dict:
    doc = published_tables()[doc_id]
    return next(t for t in doc["tables"] if t["rule"] == rule and t["dataset"] == dataset)


@pytest.mark.parametrize("key,value", DOMAINBED.items(), ids=lambda k: str(k))
def test_domainbed_numbers_match_the_source(key, value):
    rule, dataset, algorithm, column = key
    assert _table("domainbed-2020", rule, dataset)["rows"][algorithm][column] == list(value)


def test_domainbed_document_is_complete_and_sourced():
    doc = published_tables()["domainbed-2020"]
    assert doc["source"]["commit"] == "b93c22a1cfc3b2428398272c1a116c8de1f4139e"
    assert doc["source"]["path"] == "domainbed/results/2020_10_06_7df6f06/results.tex"
    tables = {(t["rule"], t["dataset"]) for t in doc["tables"]}
    assert len(tables) == 3 * 8  # 3 rules x (7 datasets + averages)
    assert all(len(t["rows"]) == 14 for t in doc["tables"])


@pytest.mark.parametrize("doc_id,values", [("tllib-office31", TLLIB_OFFICE31),
                                           ("tllib-officehome", TLLIB_OFFICEHOME)])
def test_tllib_numbers_match_the_source(doc_id, values):
    doc = published_tables()[doc_id]
    assert doc["source"]["commit"] == "c4aa59eb565650a552b809411601d0589efbbfe4"
    rows = doc["tables"][0]["rows"]
    for (algorithm, column), value in values.items():
        assert rows[algorithm][column] == [value, None]
    # "/" in the source (no number in the method's paper) is kept as no value
    expected_origin = [89.4, None] if doc_id == "tllib-office31" else None
    assert rows["MCC"]["Origin"] == expected_origin


def test_published_rows_apply_only_at_the_suites_own_protocol():
    suite = get_suite("domainbed-full")
    units = list(suite.datasets)
    rows, notes = reference_rows(suite, units, ["CORAL", "ERM"], ["iid", "oracle"])
    assert {(r["rule"], r["algorithm"]) for r in rows} == {
        ("iid", "CORAL"), ("iid", "ERM"), ("oracle", "CORAL"), ("oracle", "ERM")}
    erm = next(r for r in rows if r["rule"] == "iid" and r["algorithm"] == "ERM")
    assert erm["PACS"] == [85.5, 0.2] and erm["mark"] == "published, not re-run"
    rows, notes = reference_rows(suite.with_budget(steps=100), units, ["ERM"], ["iid"])
    assert rows == [] and "steps" in notes[0]
    assert reference_rows(get_suite("digits-dg"), ["DigitsDemo"], ["ERM"], ["iid"]) == ([], [])


def test_tllib_task_names_map_to_ours():
    suite = get_suite("officehome-da")
    rows, _ = reference_rows(suite, ["A→C", "R→P"], ["ERM", "DANN"], ["oracle"])
    dann = next(r for r in rows if r["algorithm"] == "DANN")
    assert dann["A→C"] == [53.8, None] and dann["R→P"] == [81.1, None]
