"""`shiftbench collect`: read a sweep, select models, print or write the result tables."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from shiftbench.errors import ShiftbenchError, UnknownNameError


def _flag(name: str) -> list[str]:
    from shiftbench.cli import flag

    return flag(name)


def register(subparsers) -> None:
    """Add the `collect` subcommand."""
    p = subparsers.add_parser(
        "collect", help="model selection and result tables for a sweep directory",
        description="Read every results.jsonl under --input-dir (ours or DomainBed's), select a "
                    "model per trial with each selection rule, and print the tables.")
    p.add_argument(*_flag("input_dir"), required=True, help="sweep output directory")
    p.add_argument(*_flag("selection"), nargs="+", default=None, metavar="RULE",
                   help="selection rules (default: every rule the records support; the three "
                        "classic ones for --format domainbed): iid, loo, oracle, target, entropy, "
                        "im, snd, dev")
    p.add_argument(*_flag("format"), default=None,
                   help="text, markdown, latex, csv, json, html, domainbed (default: the headline "
                        "leaderboards on the terminal, every table in text with --output)")
    p.add_argument(*_flag("all_tables"), action="store_true",
                   help="print every table (each selection rule, per dataset, ranks, paired tests, "
                        "budgets) instead of one headline leaderboard per setting")
    p.add_argument("--latex", action="store_true",
                   help="DomainBed's flag: LaTeX output (DomainBed's layout with --format domainbed)")
    p.add_argument(*_flag("output"), default=None, metavar="PATH",
                   help="write here instead of standard output")
    p.add_argument(*_flag("baseline"), default=None,
                   help="algorithm the others are compared with (default ERM when present; "
                        "'none' to skip)")
    p.add_argument(*_flag("only_done"), action="store_true",
                   help="ignore trials without a done marker (default: use every record, as "
                        "DomainBed does)")
    p.add_argument(*_flag("ddof"), type=int, choices=(0, 1), default=1,
                   help="standard error: 1 = the sample standard error (default, used everywhere); "
                        "0 = DomainBed's population std / sqrt(n), only to reproduce its numbers")
    p.add_argument("--health", action="store_true",
                   help="add the run-health table: every trial flagged diverged, not learning, "
                        "collapsed or selected before adaptation, with what tripped the flag "
                        "(a one-line health summary is always printed)")
    p.add_argument(*_flag("source_models"), action="store_true",
                   help="add a row '<algorithm> (source)' for each phased algorithm (SHOT, ADDA, "
                        "CBST, ...): its own source model, from the checkpoints before its "
                        "adaptation begins, selected by the same rules")
    p.add_argument(*_flag("quiet"), action="store_true", help="do not print reading warnings")
    p.add_argument(*_flag("import"), dest="imports", action="append", default=[],
                   metavar="MODULE", help="import a module that registers selection rules")
    p.set_defaults(func=cmd_collect)


def cmd_collect(ns: argparse.Namespace) -> int:
    from shiftbench.cli import import_user_modules
    from shiftbench.results.formats import FORMATS, render
    from shiftbench.results.reading import read_sweep
    from shiftbench.results.selection import get_selection_rule
    from shiftbench.results.tables import collect, domainbed_format

    import_user_modules(ns.imports)
    fmt = ns.format or ("latex" if ns.latex else "text")
    headline = ns.format is None and not ns.latex and not ns.all_tables and not ns.output
    if ns.latex and fmt not in ("latex", "domainbed"):
        raise ShiftbenchError(f"--latex conflicts with --format {fmt} (use --format latex, or "
                              "--format domainbed --latex for DomainBed's LaTeX layout)")
    if fmt not in FORMATS:
        raise UnknownNameError("output format", fmt, FORMATS)
    if fmt == "domainbed" and ns.source_models:
        raise ShiftbenchError("--source-models adds rows that DomainBed's layout does not have; "
                              "use another --format (text, markdown, latex, csv, json, html)")
    rules = None
    if ns.selection:
        rules = [get_selection_rule(r).NAME for r in ns.selection]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sweep = read_sweep(ns.input_dir, only_done=ns.only_done, quiet=True)
    if not ns.quiet:
        for message in sweep.messages:
            print(f"shiftbench collect: warning: {message}", file=sys.stderr)
    if not sweep.records:
        raise ShiftbenchError(f"no records found under {ns.input_dir}")
    collection_health = None
    if fmt == "domainbed":  # DomainBed's text, byte for byte: the health line goes to stderr
        from shiftbench.results.health import sweep_health

        text = domainbed_format(sweep, rules, latex=ns.latex)
        collection_health = sweep_health(sweep.records, sweep.jobs)
    else:
        baseline = "ERM" if ns.baseline is None else ns.baseline
        if baseline.lower() == "none":
            baseline = None
        elif ns.baseline is not None:
            present = {r["args"]["algorithm"] for r in sweep.records}
            if baseline not in present:
                raise UnknownNameError("baseline algorithm", baseline, present)
        collection = collect(sweep, rules, baseline=baseline, ddof=ns.ddof, health=ns.health,
                             source_models=ns.source_models)
        collection_health = collection.health
        if headline:
            from shiftbench.results.headline import render_headline

            text = render_headline(collection)
        else:
            text = render(collection, fmt)
    if fmt in ("csv", "domainbed") and collection_health is not None:  # no room in the output
        print(collection_health.summary_line(), file=sys.stderr)
    if ns.output:
        path = Path(ns.output)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path} ({fmt})", file=sys.stderr)
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
    return 0
