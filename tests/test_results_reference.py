"""DomainBed's golden sweep: our collector must reproduce every cell DomainBed printed for it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from shiftbench.cli import main
from shiftbench.results.reading import read_sweep
from shiftbench.results.selection import get_selection_rule
from shiftbench.results.tables import collect, domainbed_format

FIXTURE = Path(__file__).parent / "fixtures" / "domainbed-test-sweep"
SWEEP = FIXTURE / "sweep"
EXPECTED = (FIXTURE / "results.txt").read_text()


def _split(line: str, width: int) -> list[str]:
    """Fixed-width cells separated by two spaces (DomainBed's print_row)."""
    return [line[k:k + width].strip() for k in range(0, len(line.rstrip()), width + 2)]


def parse_domainbed_results(text: str) -> dict[str, dict[str, dict[str, str]]]:
    """{table header: {row label: {column: cell text}}} from collect_results' text output."""
    tables: dict[str, dict[str, dict[str, str]]] = {}
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("-------- "):
            header = lines[i][len("-------- "):]
            width = 25 if header.startswith("Averages") else 20
            columns = _split(lines[i + 1], width)
            rows = {}
            i += 2
            while i < len(lines) and lines[i].strip():
                cells = _split(lines[i], width)
                rows[cells[0]] = dict(zip(columns[1:], cells[1:]))
                i += 1
            tables[header] = rows
        else:
            i += 1
    return tables


@pytest.fixture(scope="module")
def sweep():
    return read_sweep(SWEEP, quiet=True)


def test_reads_the_whole_sweep(sweep):
    s = sweep.summary()
    assert (s["records"], s["jobs"], s["done"], s["duplicates_dropped"]) == (200, 40, 40, 0)
    assert EXPECTED.splitlines()[0] == f"Total records: {s['records']}"


def test_every_cell_of_results_txt(sweep):
    expected = parse_domainbed_results(EXPECTED)
    assert len(expected) == 6  # 3 rules x (VLCS + averages)
    ours = collect(sweep, ["iid", "loo", "oracle"], ddof=0)  # DomainBed's estimator
    by_title = {t.title: t for t in ours.tables}
    n_cells = 0
    for header, rows in expected.items():
        table = by_title[header]
        for alg, cells in rows.items():
            got = dict(zip(table.columns, table.cells[table.rows.index(alg)]))
            for col, text in cells.items():
                # DomainBed prints no health marks ([c]: a run of this sweep collapsed)
                unmarked = dataclasses.replace(got[col], health=())
                assert unmarked.display("text") == text, (header, alg, col)
                n_cells += 1
    assert n_cells == 3 * (5 + 2)


def test_reference_numbers_are_what_domainbed_documents(sweep):
    """The VLCS averages DomainBed's README/test data give: IID 78.3, LOO 77.1, oracle 77.8."""
    ours = collect(sweep, ["iid", "loo", "oracle"])
    avgs = {t.rule: t.cells[0][-1].mean for t in ours.tables if t.kind == "dataset"}
    assert {k: round(v, 1) for k, v in avgs.items()} == {"iid": 78.3, "loo": 77.1, "oracle": 77.8}


def test_domainbed_format_is_byte_identical(sweep):
    assert domainbed_format(sweep) == EXPECTED


def test_cli_domainbed_format(capsys, tmp_path):
    assert main(["collect", "--input_dir", str(SWEEP), "--format", "domainbed", "--quiet"]) == 0
    assert capsys.readouterr().out == EXPECTED
    out = tmp_path / "r.tex"
    assert main(["collect", "--input-dir", str(SWEEP), "--format", "domainbed", "--latex",
                 "--output", str(out)]) == 0
    tex = out.read_text()
    assert tex.startswith("\\documentclass{article}") and tex.rstrip().endswith("\\end{document}")
    assert "98.0 $\\pm$ 0.2" in tex and "\\subsection{Model selection: training-domain" in tex
    assert tex.count("\\begin{tabular}{lccccc}") == 3 and tex.count("\\begin{tabular}{lcc}") == 3


def test_domainbed_titles_match_rule_registry():
    titles = [line[len("-------- Dataset: VLCS, model selection method: "):]
              for line in EXPECTED.splitlines() if line.startswith("-------- Dataset")]
    assert titles == [get_selection_rule(n).TITLE for n in ("iid", "loo", "oracle")]
    assert get_selection_rule("IIDAccuracySelectionMethod").NAME == "iid"

