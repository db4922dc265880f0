"""Tables: missing cells, averages, ranks, paired tests vs scipy, budgets, and every format."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from results_helpers import make_record, write_trial
from scipy import stats as sps

from shiftbench.cli import main
from shiftbench.errors import UnknownNameError
from shiftbench.results.formats import FORMATS, render
from shiftbench.results.stats import mean_and_error, paired_test
from shiftbench.results.tables import collect, collection_to_dict

# Test accuracy of the single config of each (algorithm, trial) on held-out env e: ACC[alg][trial][e]
ACC = {
    "ERM": [[0.60, 0.70, 0.80], [0.62, 0.69, 0.83], [0.58, 0.74, 0.79]],
    "DeepCORAL": [[0.65, 0.72, 0.81], [0.66, 0.75, 0.80], [0.61, 0.73, 0.86]],
    "Other": [[0.50, 0.50, 0.50], [0.50, 0.50, 0.50], [0.40, 0.40, 0.40]],
}


def sweep_records(drop=()):
    """Two hparam configs per group; config 0 always validates best and carries ACC."""
    records = []
    for alg, trials in ACC.items():
        for trial, accs in enumerate(trials):
            for env, acc in enumerate(accs):
                if (alg, trial, env) in drop:
                    continue
                for seed in (0, 1):
                    if alg == "Other" and seed == 1:
                        continue  # a smaller budget
                    val = 0.9 if seed == 0 else 0.2
                    others = {f"env{i}_out_acc": val for i in range(3) if i != env}
                    records.append(make_record(0, seed, [env], trial_seed=trial, algorithm=alg,
                                               **{f"env{env}_in_acc": acc if seed == 0 else 0.0},
                                               **others))
    return records


@pytest.fixture(scope="module")
def full():
    return collect(sweep_records(), ["iid"])


def table(collection, kind):
    return next(t for t in collection.tables if t.kind == kind)


def row(t, name):
    return dict(zip(t.columns, t.cells[t.rows.index(name)]))


def test_dataset_table_cells(full):
    t = table(full, "dataset")
    assert t.columns == ["0", "1", "2", "Avg"] and sorted(t.rows) == ["DeepCORAL", "ERM", "Other"]
    erm = row(t, "ERM")
    vals = [ACC["ERM"][tr][0] for tr in range(3)]
    assert erm["0"].mean == pytest.approx(100 * np.mean(vals))
    assert erm["0"].err == pytest.approx(100 * np.std(vals, ddof=1) / np.sqrt(3))  # sample SE
    assert erm["Avg"].mean == pytest.approx(np.mean([erm[c].mean for c in "012"]))


def test_missing_cells_are_marked_never_averaged():
    c = collect(sweep_records(drop={("DeepCORAL", 0, 2), ("DeepCORAL", 1, 2), ("DeepCORAL", 2, 2),
                                    ("ERM", 1, 1)}), ["iid"])
    t = row(table(c, "dataset"), "DeepCORAL")
    assert t["2"].display() == "X" and t["Avg"].display() == "X"
    erm = row(table(c, "dataset"), "ERM")
    assert erm["1"].n == 2 and erm["Avg"].mean is not None
    avg = table(c, "averages")
    # ERM trial 1 misses env 1: averaged over trials 0 and 2 only, and flagged
    cell = row(avg, "ERM")["DebugVector"]
    assert cell.flag == "*" and cell.n == 2
    assert cell.mean == pytest.approx(100 * np.mean([np.mean(ACC["ERM"][0]), np.mean(ACC["ERM"][2])]))
    assert any("trial(s) [1] miss" in n for n in avg.notes)
    assert row(avg, "DeepCORAL")["DebugVector"].display() == "X"
    assert row(avg, "DeepCORAL")["Avg"].display() == "X"
    assert row(table(c, "ranks"), "DeepCORAL")["Avg rank"].display() == "X"


def test_ranks(full):
    t = table(full, "ranks")
    assert row(t, "DeepCORAL")["DebugVector"].mean == 1.0
    assert row(t, "ERM")["DebugVector"].mean == 2.0 and row(t, "Other")["Avg rank"].mean == 3.0


def test_paired_test_matches_scipy(full):
    t = table(full, "baseline")
    assert sorted(t.rows) == ["DeepCORAL", "Other"]
    cell = row(t, "DeepCORAL")["DebugVector"]
    a = [100 * np.mean(x) for x in ACC["DeepCORAL"]]
    b = [100 * np.mean(x) for x in ACC["ERM"]]
    expected = sps.ttest_rel(a, b)
    assert cell.mean == pytest.approx(np.mean(np.subtract(a, b)))
    assert cell.p_value == pytest.approx(expected.pvalue)
    assert cell.n == 3 and cell.display().startswith(f"{np.mean(np.subtract(a, b)):+.1f} +/- ")
    assert cell.err == pytest.approx(sps.sem(np.subtract(a, b)))  # the sample SE of the pairs
    cmp = paired_test("A", "B", {0: 1.0, 1: 2.0, 5: 4.0}, {0: 0.5, 1: 2.5, 2: 9.0})
    assert cmp.trials == [0, 1] and cmp.p_value == pytest.approx(sps.ttest_rel([1, 2], [0.5, 2.5]).pvalue)
    assert paired_test("A", "B", {0: 1.0}, {0: 0.0}).p_value is None


def test_mean_and_error_estimators():
    # the default: the sample standard error; ddof=0 is DomainBed's (20.0 +/- 4.7)
    assert mean_and_error([0.1, 0.2, 0.3]) == pytest.approx((0.2, sps.sem([0.1, 0.2, 0.3])))
    assert mean_and_error([0.1, 0.2, 0.3], ddof=0) == pytest.approx((0.2, 0.047140452))
    assert mean_and_error([]) == (None, None)
    assert mean_and_error([0.4]) == mean_and_error([0.4], ddof=0) == (0.4, None)  # n = 1


def test_budgets_flag_unequal(full):
    t = table(full, "budget")
    assert row(t, "ERM")["DebugVector"].display() == "2"
    assert row(t, "Other")["DebugVector"].display() == "1!"
    assert any("unequal hparam budgets on DebugVector" in n for n in t.notes)


def test_csv_round_trip(full):
    rows = list(csv.DictReader(io.StringIO(render(full, "csv"))))
    n_cells = sum(len(t.rows) * len(t.columns) for t in full.tables)
    assert len(rows) == n_cells
    for t in full.tables:
        for name, cells in zip(t.rows, t.cells):
            for col, cell in zip(t.columns, cells):
                r = next(x for x in rows if x["table"] == t.title and x["row"] == name
                         and x["column"] == col)
                assert (float(r["mean"]) if r["mean"] else None) == cell.mean
                assert (float(r["err"]) if r["err"] else None) == cell.err
                assert r["display"] == cell.display("csv", t.digits)


def test_json_round_trip(full):
    data = json.loads(render(full, "json"))
    assert data == json.loads(json.dumps(collection_to_dict(full), default=str))
    t = next(x for x in data["tables"] if x["kind"] == "dataset")
    erm = next(r for r in t["rows"] if r["row"] == "ERM")
    assert erm["cells"]["0"]["mean"] == pytest.approx(row(table(full, "dataset"), "ERM")["0"].mean)
    assert len(data["selected"]["iid"]) == 27


def test_markdown_and_latex(full):
    md = render(full, "markdown")
    header = next(ln for ln in md.splitlines() if ln.startswith("| Algorithm"))
    assert [c.strip() for c in header.strip("|").split("|")] == ["Algorithm", "0", "1", "2", "Avg"]
    assert "±" in md
    tex = render(full, "latex")
    assert tex.count(r"\toprule") == tex.count(r"\bottomrule") == tex.count(r"\midrule") > 0
    assert tex.count(r"\begin{table}") == tex.count(r"\end{table}") == len(full.tables)
    assert r"$\pm$" in tex and "+/-" not in tex
    text = render(full, "text")
    assert "-------- Dataset: DebugVector, model selection method: training-domain" in text


def test_unknown_format_is_a_clear_error(full, tmp_path, capsys):
    with pytest.raises(UnknownNameError, match="did you mean 'latex'"):
        render(full, "latx")
    write_trial(tmp_path, "a", [make_record(0, 0, [0])])
    assert main(["collect", "--input-dir", str(tmp_path), "--format", "htm"]) == 2
    assert "did you mean 'html'" in capsys.readouterr().err
    assert set(FORMATS) == {"text", "markdown", "latex", "csv", "json", "html", "domainbed"}


def test_domainbed_format_orders_rows_and_tables_as_domainbed():
    from shiftbench.results.tables import domainbed_format

    records = [make_record(0, 0, [e], algorithm=a, dataset=d, n_envs=4 if d == "PACS" else 3)
               for a in ("ZZZ", "IRM", "CORAL", "ERM") for d in ("PACS", "ColoredMNIST")
               for e in range(3)]
    text = domainbed_format(records, ["oracle"])
    headers = [ln for ln in text.splitlines() if ln.startswith("-------- ")]
    assert headers[0].startswith("-------- Dataset: ColoredMNIST") and "PACS" in headers[1]
    first = text.split("-------- ")[1].splitlines()
    assert first[1].split()[:4] == ["Algorithm", "+90%", "+80%", "-90%"]
    assert [ln.split()[0] for ln in first[2:6]] == ["ERM", "IRM", "CORAL", "ZZZ"]
    pacs = text.split("-------- ")[2].splitlines()
    assert pacs[2].split()[-2:] == ["X", "X"]  # env 3 (S) never held out: X, and Avg X


def test_loo_without_pair_runs_is_explained():
    c = collect([make_record(0, 0, [e]) for e in range(3)], None)
    loo = next(t for t in c.tables if t.rule == "loo" and t.kind == "dataset")
    assert any("pairs of environments" in n for n in loo.notes)
    assert all(cell.display() == "X" for cell in loo.cells[0])
    assert not any(t.kind == "ranks" for t in c.tables)  # one algorithm: nothing to rank


def test_cli_latex_alias_and_output_file(tmp_path, capsys):
    for e in range(3):
        write_trial(tmp_path / "s", f"t{e}", [make_record(0, 0, [e])])
    out = tmp_path / "out" / "t.tex"
    assert main(["collect", "--input-dir", str(tmp_path / "s"), "--latex", "--output", str(out)]) == 0
    tex = out.read_text()
    assert tex.startswith("\\documentclass{article}") and "\\toprule" in tex and "\\section*" in tex
    assert main(["collect", "--input-dir", str(tmp_path / "s"), "--latex", "--format", "csv"]) == 2
    assert "--latex conflicts with --format csv" in capsys.readouterr().err
    assert main(["collect", "--input-dir", str(tmp_path / "missing")]) == 2
    assert "no such directory" in capsys.readouterr().err


def test_cli_baseline_choice(tmp_path, capsys):
    for e in range(3):
        for alg in ("ERM", "IRM"):
            write_trial(tmp_path, f"{alg}{e}", [make_record(0, 0, [e], algorithm=alg)])
    assert main(["collect", "--input-dir", str(tmp_path), "--baseline", "IRN"]) == 2
    assert "did you mean 'IRM'" in capsys.readouterr().err
    assert main(["collect", "--input-dir", str(tmp_path), "--baseline", "IRM", "--all-tables"]) == 0
    assert "Difference to IRM" in capsys.readouterr().out
    assert main(["collect", "--input-dir", str(tmp_path), "--baseline", "none", "--all-tables"]) == 0
    assert "Difference to" not in capsys.readouterr().out
    assert main(["collect", "--input-dir", str(tmp_path), "--baseline", "IRM"]) == 0
    assert "vs IRM" in capsys.readouterr().out  # the headline's paired-difference column
