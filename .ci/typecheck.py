"""CI's type check: basedpyright over the package with pyproject.toml's [tool.pyright] rules.

Fails on any error (the rules held clean) and on any `shiftbench` import that static tools cannot
resolve (a module or a name: "is unknown import symbol", reported under a warning-level rule);
prints the warnings still open by rule, so that their count can only be watched going down.

    python .ci/typecheck.py [--python .venv/bin/python]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
UNRESOLVED = re.compile(r'Import "shiftbench[.\w]*" could not be resolved|is unknown import symbol')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default=sys.executable, help="interpreter whose packages "
                        "(and strict editable install of shiftbench) pyright resolves against")
    ns = parser.parse_args()
    exe = Path(ns.python).parent / "basedpyright"
    command = [str(exe) if exe.exists() else "basedpyright", "--outputjson", "--pythonpath",
               ns.python]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "NODE_OPTIONS": "--max-old-space-size=4096"})
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        print(proc.stdout, proc.stderr, sep="\n", file=sys.stderr)
        print("typecheck: basedpyright gave no report (is it installed? pip install "
              "basedpyright)", file=sys.stderr)
        return 2
    diagnostics = report["generalDiagnostics"]
    errors = [d for d in diagnostics if d["severity"] == "error"]
    unresolved = [d for d in diagnostics if UNRESOLVED.search(d["message"])]
    open_rules = collections.Counter(d.get("rule", "?") for d in diagnostics
                                     if d["severity"] == "warning")
    summary = report["summary"]
    print(f"typecheck: {summary['filesAnalyzed']} files, {len(errors)} errors, "
          f"{len(unresolved)} unresolved shiftbench imports, "
          f"{sum(open_rules.values())} open warnings "
          f"({', '.join(f'{r} {n}' for r, n in open_rules.most_common())})")
    for d in errors + [d for d in unresolved if d not in errors]:
        line = d["range"]["start"]["line"] + 1
        print(f"{os.path.relpath(d['file'], ROOT)}:{line}: {d.get('rule', '')}: "
              f"{d['message'].splitlines()[0]}", file=sys.stderr)
    return 1 if errors or unresolved else 0


if __name__ == "__main__":
    sys.exit(main())
