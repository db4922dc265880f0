"""What a sweep runs: DomainBed's sweep flags, or a TOML file that can also pin hparams.

A TOML spec (read with Python's own `tomllib`) holds the same keys as the flags, plus per-algorithm
hparam grids/fixed values and named test-environment sets::

    datasets = ["Digits"]
    algorithms = ["ERM", "DANN"]
    task = "dg"                 # dg | uda | ssda | sda | tta
    n_hparams = 2               # hparam seeds n_hparams_from .. n_hparams-1 (seed 0 = defaults)
    n_trials = 2                # trial seeds 0 .. n_trials-1
    single_test_envs = true     # only single held-out domains (no pairs)
    hparams_preset = "dann_digits"  # a named protocol (shiftbench.presets), under [hparams]
    steps = 300                 # any trial option declared with sweep=True (`sweep_options()`:
    checkpoint_freq = 100       # steps, precision, protocol, ...), given to every job it applies to
    precision = "bf16"
    seeding = "paired"          # paired (the shiftbench protocol's default) | domainbed (the
                                # domainbed protocol's): how each job's `seed` is derived
    da_mode = "inductive"       # uda/ssda (default: transductive with `tasks` or a DA preset)

    [hparams]                   # fixed values for every algorithm (like --hparams)
    batch_size = 32

    [algorithm.DANN.fixed]      # fixed values for one algorithm
    lambda = 0.1
    [algorithm.DANN.grid]       # a grid: every combination becomes its own job
    lr = [1e-3, 1e-4]

    [test_envs]                 # explicit test-environment sets per dataset (names or indices)
    Digits = [["mnist"], ["synth", "lowres"]]

    tasks = ["digits"]          # named source->target suites (replace test_envs/source_envs):
                                # office31, officehome, digits, visda, pacs, ..., loo
    [source_envs]               # the environments trained on, per dataset (default: all but the
    Digits = ["synth"]          # test environments); others are evaluated, never trained on

Precedence: flags given on the command line > the TOML file > the defaults below. Grid values
override fixed values, which override the preset's values, which override what the hparam seed
drew.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from shiftbench.errors import ShiftbenchError, UnknownNameError
from shiftbench.options import check_values
from shiftbench.setting import DG, check_supports
from shiftbench.sweeps.facts import dataset_facts
from shiftbench.trial_record import TrialSpec, sweep_options

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

# The sweep's own keys; with the trial options (`sweep_options()`), every key a spec may hold.
SWEEP_KEYS = ("datasets", "algorithms", "task", "n_hparams", "n_hparams_from", "n_trials",
              "single_test_envs", "hparams", "test_envs", "source_envs", "algorithm",
              "hparams_preset", "tasks", "seeding")
TOP_LEVEL_KEYS = SWEEP_KEYS + tuple(sweep_options())
ALGORITHM_KEYS = ("fixed", "grid")
SEEDINGS = ("paired", "domainbed")  # how a job's seed is derived (`shiftbench.sweeps.jobs`)


class SpecError(ShiftbenchError):
    """A sweep spec that cannot be used; the message names the file and line when known."""


@dataclass(init=False)
class SweepSpec:
    """A sweep, before it is expanded into jobs (see `shiftbench.sweeps.jobs.enumerate_jobs`).

    `trial` holds the trial options every job gets (`sweep_options()`: steps, precision, ...;
    each job keeps the default of an option that does not apply to its setting or dataset). The
    constructor takes them as keywords too: `SweepSpec(datasets=[...], steps=300)`."""

    datasets: list[str] = field(default_factory=list)
    algorithms: list[str] = field(default_factory=list)  # empty: every algorithm for the task
    task: str = DG.name
    n_hparams: int = 1
    n_hparams_from: int = 0
    n_trials: int = 3
    single_test_envs: bool = False
    hparams_preset: str | None = None  # a name in shiftbench.presets.PRESETS
    seeding: str | None = None  # paired | domainbed; None: the protocol's (SEEDINGS)
    hparams: dict[str, Any] = field(default_factory=dict)
    fixed: dict[str, dict[str, Any]] = field(default_factory=dict)
    grid: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    test_envs: dict[str, list[list[int | str]]] = field(default_factory=dict)
    source_envs: dict[str, list[int | str]] = field(default_factory=dict)
    tasks: list[str] = field(default_factory=list)  # named task suites (shiftbench.sweeps.tasks)
    trial: TrialSpec = field(default_factory=TrialSpec)

    def __init__(self, **values: Any) -> None:
        own = {f.name: f for f in fields(SweepSpec)}
        options = sweep_options()
        for name, f in own.items():
            default = f.default_factory() if f.default_factory is not MISSING else f.default
            setattr(self, name, values.pop(name, default))
        for name, value in values.items():
            if name not in options:
                raise TypeError(f"SweepSpec got an unexpected argument {name!r}; valid: "
                                + ", ".join([*own, *options]))
            setattr(self.trial, name, value)

    def sweep_datasets(self) -> list[str]:
        """`datasets`, or without them the datasets of the named task suites."""
        if self.datasets or not self.tasks:
            return list(self.datasets)
        from shiftbench.sweeps.tasks import get_task_suite

        names = []
        for name in self.tasks:
            suite = get_task_suite(name)
            if suite.dataset is None:
                raise SpecError(f"task suite {name!r} needs --datasets (it applies to any dataset)")
            if suite.dataset not in names:
                names.append(suite.dataset)
        return names

    def resolved_da_mode(self) -> str | None:
        """The jobs' `da_mode`: the one given, or its default, transductive for a uda/ssda sweep
        over named task suites or with a preset that says so (`presets.default_da_mode`)."""
        if self.trial.da_mode is not None:
            return self.trial.da_mode
        from shiftbench.presets import default_da_mode

        return default_da_mode(self.hparams_preset, self.task, from_suite=bool(self.tasks))

    def grid_points(self, algorithm: str) -> list[dict[str, Any]]:
        """The hparam overrides of each job of `algorithm` (one empty dict without a grid)."""
        grid = self.grid.get(algorithm, {})
        names = sorted(grid)
        return [dict(zip(names, values)) for values in itertools.product(*(grid[n] for n in names))]

    def overrides(self, algorithm: str, point: Mapping[str, Any],
                  dataset: str | None = None) -> dict[str, Any]:
        """The preset's values for `dataset` (if the spec names a preset), then global fixed
        values, then the algorithm's fixed values, then the grid point."""
        from shiftbench.presets import with_preset

        mine = {**self.hparams, **self.fixed.get(algorithm, {}), **point}
        if self.hparams_preset is None:
            return mine
        if dataset is None:
            raise SpecError("a sweep with an hparams preset needs the dataset to resolve it")
        return with_preset(self.hparams_preset, algorithm, dataset, mine)

    def validate(self, check_hparams: bool = True) -> None:
        """Check names, counts and hparams against the registries; raise a clear error.

        `check_hparams=False` skips the hparam values (which need the algorithm classes, hence
        torch): `sweep status` only reads the jobs' states."""
        from shiftbench.setting import get_setting
        from shiftbench.sweeps.facts import algorithm_facts, algorithm_names, dataset_names

        self.task = get_setting(self.task).name
        check_values(sweep_options(), {n: getattr(self.trial, n) for n in sweep_options()})
        if self.seeding is not None and self.seeding not in SEEDINGS:
            raise UnknownNameError("seeding", self.seeding, SEEDINGS)
        if self.trial.transductive and not get_setting(self.task).unlabeled_target:
            raise SpecError(f"da_mode transductive needs a task with an unlabeled target (uda, "
                            f"ssda), not {self.task!r}")
        if (get_setting(self.task).unlabeled_target and self.resolved_da_mode() == "transductive"
                and self.trial.uda_holdout_fraction is not None):
            raise SpecError("uda_holdout_fraction applies to da_mode inductive; the transductive "
                            "mode (the default with tasks or a DA preset) adapts on the whole "
                            "target domain")
        if self.tasks:
            from shiftbench.sweeps.tasks import suite_tasks

            if self.test_envs or self.source_envs:
                raise SpecError("tasks (named source->target suites) replace test_envs and "
                                "source_envs; give one or the other")
            suite_tasks(self.tasks, self.datasets)  # unknown suites / missing domains
        if not self.sweep_datasets():
            raise SpecError("no datasets given (--datasets, or `datasets = [...]` in the spec); "
                            f"choices: {', '.join(dataset_names())}")
        task_types = {dataset_facts(name).task_type for name in self.sweep_datasets()}
        if not self.algorithms:  # every algorithm of the setting that trains on these datasets
            self.algorithms = [a for a in algorithm_names(self.task)
                               if task_types <= set(algorithm_facts(a).task_types)]
        for name in self.algorithms:
            facts = algorithm_facts(name)
            if self.task not in facts.settings:
                check_supports(name, facts.settings, self.task, algorithm_names(self.task))
        for name in list(self.fixed) + list(self.grid):
            if name not in self.algorithms:
                raise SpecError(f"hparams are given for algorithm {name!r}, which is not in the "
                                f"sweep's algorithms ({', '.join(self.algorithms)})")
        for key in ("n_hparams", "n_trials"):
            if getattr(self, key) < 1:
                raise SpecError(f"{key} must be >= 1, got {getattr(self, key)}")
        if not 0 <= self.n_hparams_from < self.n_hparams:
            raise SpecError(f"n_hparams_from must be in [0, n_hparams={self.n_hparams}), got "
                            f"{self.n_hparams_from}")
        for algorithm, grid in self.grid.items():
            for hp, values in grid.items():
                if not isinstance(values, list) or not values:
                    raise SpecError(f"grid value of {algorithm}.{hp} must be a non-empty list, "
                                    f"got {values!r}")
        for dataset in self.sweep_datasets() if check_hparams else ():
            from shiftbench.hparams import validate_overrides
            from shiftbench.hparams_registry import hparam_space

            for algorithm in self.algorithms:
                space = hparam_space(algorithm, dataset, self.trial.protocol)
                for point in self.grid_points(algorithm):
                    validate_overrides(space, self.overrides(algorithm, point, dataset), algorithm)
        for dataset, sets in self.test_envs.items():
            if dataset not in self.datasets:
                raise SpecError(f"test_envs given for dataset {dataset!r}, which is not in the "
                                f"sweep's datasets ({', '.join(self.datasets)})")
            facts = dataset_facts(dataset)
            for envs in sets:
                resolved = {facts.env_index(e) for e in envs}
                if not resolved or len(resolved) >= len(facts.environments):
                    raise SpecError(f"test_envs set {envs} of {dataset} must hold at least one "
                                    f"and fewer than {len(facts.environments)} environments")
        for dataset, envs in self.source_envs.items():
            if dataset not in self.datasets:
                raise SpecError(f"source_envs given for dataset {dataset!r}, which is not in the "
                                f"sweep's datasets ({', '.join(self.datasets)})")
            sources = source_envs_of(self, dataset)
            if not sources:
                raise SpecError(f"source_envs of {dataset} must hold at least one environment")
            for test in held_out_sets(self, dataset):
                if set(test) & set(sources):
                    raise SpecError(f"source_envs {envs} of {dataset} overlap the held-out set "
                                    f"{test}; give [test_envs] sets disjoint from the sources")


def source_envs_of(spec: SweepSpec, dataset: str) -> list[int] | None:
    """The spec's source environments of a dataset (indices), or None: all but the test ones."""
    if dataset not in spec.source_envs:
        return None
    facts = dataset_facts(dataset)
    return sorted({facts.env_index(e) for e in spec.source_envs[dataset]})


def sweep_units(spec: SweepSpec) -> list[tuple[str, list[int] | None, list[int]]]:
    """(dataset, source_envs or None, test_envs) of every trained unit: the named task suites'
    tasks, else every dataset's held-out sets with the spec's sources."""
    if spec.tasks:
        from shiftbench.sweeps.tasks import suite_tasks

        return [(t.dataset, list(t.source_envs), list(t.test_envs))
                for t in suite_tasks(spec.tasks, spec.datasets)]
    return [(dataset, source_envs_of(spec, dataset), test_envs) for dataset in spec.datasets
            for test_envs in held_out_sets(spec, dataset)]


def held_out_sets(spec: SweepSpec, dataset: str) -> list[list[int]]:
    """The held-out sets of a dataset: the spec's own; else, with `source_envs`, each other
    environment; else each environment, plus every pair (what leave-one-domain-out selection
    needs) unless `single_test_envs` or < 3 environments."""
    facts = dataset_facts(dataset)
    if dataset in spec.test_envs:
        return [sorted({facts.env_index(e) for e in envs}) for envs in spec.test_envs[dataset]]
    n = len(facts.environments)
    sources = source_envs_of(spec, dataset)
    if sources is not None:  # each environment that is not a source, as the single target
        return [[i] for i in range(n) if i not in sources]
    sets = [[i] for i in range(n)]
    if not spec.single_test_envs and n >= 3:
        sets += [[i, j] for i, j in itertools.combinations(range(n), 2)]
    return sets


# --------------------------------------------------------------------------------------------
# TOML


def _line_of(text: str, table: Sequence[str], key: str | None) -> int | None:
    """The line (1-based) where `key` is set inside `[table]` (or the table's header line)."""
    current: tuple[str, ...] = ()
    header_line = None
    want = tuple(table)
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        m = re.match(r"^\[\s*([^\[\]]+?)\s*\]$", stripped)
        if m:
            current = tuple(p.strip().strip('"') for p in m.group(1).split("."))
            if current == want:
                header_line = number
            continue
        if key is None:
            continue
        m = re.match(r"^([A-Za-z0-9_\-\"\.\s]+?)\s*=", stripped)
        if not m:
            continue
        dotted = tuple(p.strip().strip('"') for p in m.group(1).split("."))
        if current + dotted[:-1] == want and dotted[-1] == key:
            return number
        if current + dotted == want:  # `table = {...}` written inline
            return number
    return header_line


def _check_type(value: Any, kind: type | tuple[type, ...], where: str) -> None:
    ok = isinstance(value, kind) and not (isinstance(value, bool) and kind in (int, float))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise SpecError(f"{where} must be {names}, got {value!r}")


_TYPES: dict[str, type | tuple[type, ...]] = {
    "datasets": list, "algorithms": list, "task": str, "n_hparams": int, "n_hparams_from": int,
    "n_trials": int, "single_test_envs": bool, "hparams": dict, "test_envs": dict,
    "source_envs": dict, "algorithm": dict, "hparams_preset": str, "tasks": list,
    "seeding": str,
    **{name: o.kind for name, o in sweep_options().items()},
}


def load_spec(path: str | Path, base: SweepSpec | None = None, validate: bool = True) -> SweepSpec:
    """Read a TOML sweep spec; errors name the file and line of the bad value.

    With `validate=False` only the file's syntax and types are checked (call `validate_spec`
    after merging command-line flags)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise SpecError(f"cannot read sweep spec {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        text_line = e.object[:e.start].count(b"\n") + 1
        raise SpecError(f"{path}, line {text_line}: not UTF-8 text (byte {e.object[e.start]:#04x} "
                        f"at offset {e.start}); a sweep spec must be a UTF-8 TOML file") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        message = str(e)
        if "line" not in message:  # "... (at end of document)": the error is on the last line
            line = text.count("\n") + (0 if text.endswith("\n") else 1)
            message += f" (line {max(line, 1)})"
        raise SpecError(f"{path}: invalid TOML: {message}") from None
    spec = base or SweepSpec()

    def fail(message: str, table: Sequence[str], key: str | None) -> SpecError:
        line = _line_of(text, table, key)
        return SpecError(f"{path}" + (f", line {line}" if line else "") + f": {message}")

    for key, value in data.items():
        if key not in TOP_LEVEL_KEYS:
            raise _unknown(fail, key, TOP_LEVEL_KEYS, (), key)
        try:
            _check_type(value, _TYPES[key], key)
        except SpecError as e:
            raise fail(str(e), (), key) from None
    for key in ("datasets", "algorithms"):
        for item in data.get(key, []):
            if not isinstance(item, str):
                raise fail(f"{key} must be a list of names, got {item!r}", (), key)
    for name, value in data.items():
        if name in ("hparams", "test_envs", "source_envs", "algorithm"):
            continue
        value = float(value) if _TYPES[name] is float else value
        setattr(spec.trial if name in sweep_options() else spec, name, value)
    spec.hparams = dict(data.get("hparams", spec.hparams))
    for dataset, sets in data.get("test_envs", {}).items():
        if not (isinstance(sets, list) and all(isinstance(s, list) and s for s in sets)):
            raise fail(f"test_envs.{dataset} must be a list of non-empty lists of environments "
                       f"(names or indices), e.g. [[0], [\"mnist\", 2]]; got {sets!r}",
                       ("test_envs",), dataset)
        spec.test_envs[dataset] = sets
    for dataset, envs in data.get("source_envs", {}).items():
        if not (isinstance(envs, list) and envs and all(isinstance(e, (int, str)) for e in envs)):
            raise fail(f"source_envs.{dataset} must be a non-empty list of environments (names or "
                       f"indices), e.g. [\"mnist\", 2]; got {envs!r}", ("source_envs",), dataset)
        spec.source_envs[dataset] = envs
    for algorithm, tables in data.get("algorithm", {}).items():
        if not isinstance(tables, dict):
            raise fail(f"algorithm.{algorithm} must be a table with 'fixed' and/or 'grid'",
                       ("algorithm",), algorithm)
        for sub, values in tables.items():
            if sub not in ALGORITHM_KEYS:
                raise _unknown(fail, sub, ALGORITHM_KEYS, ("algorithm", algorithm), sub,
                                          kind=f"key in [algorithm.{algorithm}]")
            if not isinstance(values, dict):
                raise fail(f"algorithm.{algorithm}.{sub} must be a table of hparams",
                           ("algorithm", algorithm), sub)
            if sub == "grid":
                for hp, vs in values.items():
                    if not isinstance(vs, list) or not vs:
                        raise fail(f"grid value of {algorithm}.{hp} must be a non-empty list, "
                                   f"got {vs!r}", ("algorithm", algorithm, "grid"), hp)
                spec.grid[algorithm] = dict(values)
            else:
                spec.fixed[algorithm] = dict(values)
    if validate:
        validate_spec(spec, path)
    return spec


def validate_spec(spec: SweepSpec, path: str | Path | None = None, check_hparams: bool = True
                  ) -> None:
    """`spec.validate()`, naming the spec file and the line an error is about when known."""
    try:
        spec.validate(check_hparams)
    except ShiftbenchError as e:
        if path is None:
            raise
        try:
            line = _locate(Path(path).read_text(encoding="utf-8"), e)
        except OSError:
            line = None
        raise SpecError(f"{path}" + (f", line {line}" if line else "") + f": {e}") from None


def _unknown(fail, name, choices, table, key, kind="key") -> SpecError:
    return fail(str(UnknownNameError(f"sweep spec {kind}", name, choices)), table, key)


def _locate(text: str, error: ShiftbenchError) -> int | None:
    """Best effort: the first line mentioning the name an error is about."""
    name = getattr(error, "name", None)
    if name is None:
        m = re.search(r"'([^']+)'", str(error)) or re.search(r"\b(n_\w+|steps|holdout_fraction)\b",
                                                             str(error))
        name = m.group(1) if m else None
    if not name:
        return None
    for number, line in enumerate(text.splitlines(), start=1):
        if re.search(rf"(^|[^\w]){re.escape(str(name))}([^\w]|$)", line.split("#")[0]):
            return number
    return None


def parse_hparams_flag(value: str | None) -> dict[str, Any]:
    """`--hparams` JSON into a dict, with a clear error."""
    if not value:
        return {}
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as e:
        raise SpecError(f"--hparams is not valid JSON ({e.msg}): {value!r}; expected an object "
                        "such as '{\"lr\": 0.001}'") from None
    if not isinstance(parsed, dict):
        raise SpecError(f"--hparams must be a JSON object, got {value!r}")
    return parsed
