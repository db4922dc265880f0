"""Transcribe published reference tables into shiftbench's data files (run at development time).

    python bench/transcribe_published.py DOMAINBED_REPO TLLIB_REPO

reads DomainBed's `domainbed/results/2020_10_06_7df6f06/results.tex` and TLlib's
`examples/domain_adaptation/image_classification/README.md` from local git clones (at the commits
recorded below; `git show COMMIT:PATH`) and writes `results/published/*.json`: numbers only, with
their source, path and commit. tests/test_compare_published.py checks them against values read by
hand from the same documents.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "results" / "published"
DOMAINBED = {"repo": "facebookresearch/DomainBed", "commit": "b93c22a1cfc3b2428398272c1a116c8de1f4139e",
             "path": "domainbed/results/2020_10_06_7df6f06/results.tex",
             "results_commit": "7df6f06a6f9062284812a3f174c306218932c5e4"}
TLLIB = {"repo": "thuml/Transfer-Learning-Library", "commit": "c4aa59eb565650a552b809411601d0589efbbfe4",
         "path": "examples/domain_adaptation/image_classification/README.md"}
RULES = {"training-domain validation set": "iid", "leave-one-domain-out cross-validation": "loo",
         "test-domain validation set (oracle)": "oracle"}


def show(repo: str, commit: str, path: str) -> str:
    return subprocess.run(["git", "-C", repo, "show", f"{commit}:{path}"], check=True,
                          capture_output=True, text=True).stdout


def cell(text: str) -> list[float | None]:
    m = re.fullmatch(r"\s*([\d.]+)(?:\s*\$\\pm\$\s*([\d.]+))?\s*", text)
    if not m:
        raise ValueError(f"not a table cell: {text!r}")
    return [float(m.group(1)), None if m.group(2) is None else float(m.group(2))]


def domainbed(tex: str) -> list[dict]:
    tables, rule, dataset, columns = [], None, None, None
    for line in tex.splitlines():
        if m := re.match(r"\\subsection\{Model selection: (.+)\}", line):
            rule = RULES[m.group(1)]
        elif m := re.match(r"\\subsubsection\{(.+)\}", line):
            dataset = m.group(1)
        elif line.startswith(r"\textbf{Algorithm}"):
            columns = [re.sub(r"\\textbf\{(.*)\}", r"\1", c.strip()).replace("\\%", "%")
                       for c in line.rstrip("\\ ").split("&")[1:]]
            tables.append({"rule": rule, "dataset": dataset, "columns": columns, "rows": {}})
        elif columns and "&" in line and "$\\pm$" in line or (columns and re.match(r"\w.*&", line)):
            parts = [p for p in line.rstrip().rstrip("\\").split("&")]
            tables[-1]["rows"][parts[0].strip()] = dict(zip(columns, map(cell, parts[1:])))
        elif line.startswith(r"\bottomrule"):
            columns = None
    return tables


def tllib(md: str, heading: str, dataset: str) -> dict:
    lines = md.splitlines()
    start = lines.index(heading)
    rows, columns = {}, None
    for line in lines[start + 1:]:
        if not line.startswith("|"):
            if columns:
                break
            continue
        parts = [p.strip() for p in line.strip("|").split("|")]
        if columns is None:
            columns = [c.replace(" → ", "→") for c in parts[1:]]
        elif not set(parts[0]) <= {"-"}:
            rows[parts[0]] = {c: ([float(v), None] if v != "/" else None)
                              for c, v in zip(columns, parts[1:])}
    return {"rule": "oracle", "dataset": dataset, "columns": columns, "rows": rows}


def main(domainbed_repo: str, tllib_repo: str) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    tables = domainbed(show(domainbed_repo, DOMAINBED["commit"], DOMAINBED["path"]))
    (OUT / "domainbed-2020.json").write_text(json.dumps({
        "id": "domainbed-2020", "title": "DomainBed (Gulrajani & Lopez-Paz, ICLR 2021)",
        "source": DOMAINBED, "suites": ["rmnist", "domainbed-full"],
        "protocol": "DomainBed: 20 random hparam configurations x 3 trial seeds, every single and "
                    "paired held-out set, 5,000 steps, ResNet-50 (MNIST CNN for the MNISTs)",
        "units": "test accuracy %, mean +/- standard error over 3 trial seeds",
        "tables": tables}, indent=1, ensure_ascii=False) + "\n")
    md = show(tllib_repo, TLLIB["commit"], TLLIB["path"])
    for ident, heading, dataset, suite in (
            ("tllib-office31", "### Office-31 accuracy on ResNet-50", "Office31", "office31-da"),
            ("tllib-officehome", "### Office-Home accuracy on ResNet-50", "OfficeHome",
             "officehome-da")):
        (OUT / f"{ident}.json").write_text(json.dumps({
            "id": ident, "title": f"TLlib {dataset} (ResNet-50)", "source": TLLIB,
            "suites": [suite],
            "protocol": "TLlib: ResNet-50, batch 32, 20 (Office-31) / 30 (Office-Home) epochs of "
                        "1,000 iterations; the epoch is chosen by target test accuracy",
            "units": "target accuracy %; column Origin = the method's paper, Avg = TLlib's run",
            "tables": [tllib(md, heading, dataset)]}, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:3])
