"""Model selection rules (a registry), with DomainBed's definitions for its three rules.

Vocabulary (DomainBed's): a *group* is every record of one (task, dataset, algorithm, held-out
environment t, trial_seed); a run held out on `[t, v]` belongs to the groups of t and of v. A
*run* is the records of one hyperparameter configuration within a group: its `hparams_seed`
and its fixed overrides `args["hparams"]` (`config_key`), so a sweep's grid points, which share
the seed, are separate runs.
A rule scores a run (`run_acc` -> validation and test accuracy, or None when it cannot), then the
run with the best validation score wins the group (`sweep_acc`). Selection is per trial; tables
then average the per-trial winners over trials.

Rules:
* `iid` — training-domain validation (DomainBed's IIDAccuracySelectionMethod): runs held out on
  `[t]` only; at each checkpoint val = mean of `env{i}_out_acc` over every i != t, test =
  `env{t}_in_acc`; the best checkpoint (early stopping), then the best run.
* `loo` — leave-one-domain-out cross-validation (LeaveOneOutSelectionMethod): at each step where
  the run held out on `[t]` and, for every other environment v, the run held out on `[t, v]` all
  logged, val = mean over v of the pair run's `env{v}_in_acc` (a model trained without v, tested
  on v), test = the `[t]` run's `env{t}_in_acc`; steps with a missing pair run are skipped; the
  best step, then the best run.
* `oracle` — test-domain validation (OracleSelectionMethod): runs held out on `[t]`, the **last**
  checkpoint only; val = `env{t}_out_acc`, test = `env{t}_in_acc`; the best run.
* `target` — few labeled target examples (ssda/sda): as `iid` with val = `env{t}_lab_val_acc`,
  the accuracy on the `lab_val` split: `target_shots` labeled examples per class drawn disjoint
  from the training shots (`lab`) and from the test split, fixed by the trial seed.
* Unsupervised validators on the unlabeled target split (uda/ssda), early stopping over
  checkpoints like `iid`; each reads one per-checkpoint score the trainer must record for a
  held-out environment t:
  - `entropy`: `env{t}_uda_entropy` = mean prediction entropy (lower is better);
  - `im`: information maximisation, `env{t}_uda_marginal_entropy - env{t}_uda_entropy`
    (entropy of the mean prediction minus mean entropy; higher is better);
  - `snd`: `env{t}_uda_snd` = soft neighbourhood density (Saito et al., ICCV 2021; higher better);
  - `dev`: `env{t}_uda_dev` = deep embedded validation risk (You et al., ICML 2019; lower better).
  A rule asked for when no record carries its keys raises a ShiftbenchError naming them.

Phased algorithms (`shiftbench.phases`): only checkpoints from after the adaptation phase's first
step are candidates, for every rule (a run with none is not scored).

Ties: between checkpoints of a run the earliest step wins (DomainBed takes the first maximum in
file order, i.e. by step); between runs the smallest `hparams_seed` wins (DomainBed's order there
depends on directory listing order), then the smallest canonical overrides string.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from shiftbench.errors import ShiftbenchError, UnknownNameError
from shiftbench.phases import adapted_only
from shiftbench.registry import Registry
from shiftbench.results.reading import Sweep, as_records
from shiftbench.setting import all_settings, setting_names
from shiftbench.trial_record import config_key, record_key

SELECTION_RULES: Registry[type[SelectionRule]] = Registry("selection rule")
ALL_TASKS = setting_names()
# The settings whose records hold what a rule reads: few labeled target examples; an unlabeled
# target split (label-free scores).
FEW_SHOT_TASKS = tuple(s.name for s in all_settings() if s.few_shot_target)
UNLABELED_TARGET_TASKS = tuple(s.name for s in all_settings() if s.unlabeled_target)


def register_selection_rule(cls: type[SelectionRule]) -> type[SelectionRule]:
    """Class decorator registering a rule under its `NAME`."""
    return SELECTION_RULES.register(cls.NAME)(cls)


@dataclass
class RunChoice:
    """A run's score under a rule: the chosen checkpoint's validation and test accuracy."""

    val_acc: float
    test_acc: float
    step: int
    record: dict[str, Any]


@dataclass
class Selected:
    """The winner of one group (one trial of one algorithm on one held-out environment)."""

    rule: str
    task: str
    dataset: str
    algorithm: str
    test_env: int
    trial_seed: int
    hparams_seed: int
    step: int
    val_acc: float
    test_acc: float
    n_configs: int  # hyperparameter configurations with at least one record in the group
    n_scored: int  # ... of which the rule could score
    job_dir: str | None
    hparams: dict[str, Any]
    source_envs: tuple[int, ...] | None = None  # explicit sources (a source->target task)
    health: tuple[str, ...] = ()  # the run's health flags (`results.health.annotate`)
    overrides: str = ""  # the run's fixed hparams overrides (`trial_record.overrides_key`)

    @property
    def config(self) -> tuple[int, str]:
        """The selected run's configuration, as `config_key` names it."""
        return self.hparams_seed, self.overrides

    def to_dict(self) -> dict[str, Any]:
        """The fields, less `overrides` (`job_dir` and the resolved `hparams` name the
        configuration already), so outputs of one-configuration-per-seed sweeps are unchanged."""
        out = asdict(self)
        del out["overrides"]
        return out


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def single_test_records(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records of runs held out on exactly one environment, by step."""
    return sorted((r for r in records if len(r["args"]["test_envs"]) == 1), key=lambda r: r["step"])


class SelectionRule:
    """Base class: subclasses define how a run is scored (`run_acc`)."""

    NAME = ""
    TITLE = ""  # the name printed in table headers (DomainBed's for its rules)
    TASKS: tuple[str, ...] = ALL_TASKS  # the settings the rule applies to
    REQUIRED_KEYS: tuple[str, ...] = ()  # per-checkpoint keys, with {t} for the held-out env

    def run_acc(self, records: Sequence[dict[str, Any]], test_env: int) -> RunChoice | None:
        raise NotImplementedError

    def check(self, records: Sequence[dict[str, Any]]) -> None:
        """Raise a clear error when no record carries the keys this rule reads."""
        if not self.REQUIRED_KEYS or not records:
            return
        for r in records:
            envs = r["args"]["test_envs"]
            if len(envs) == 1 and all(k.format(t=envs[0]) in r for k in self.REQUIRED_KEYS):
                return
        keys = ", ".join(k.replace("{t}", "<t>") for k in self.REQUIRED_KEYS)
        raise ShiftbenchError(
            f"selection rule {self.NAME!r} needs the per-checkpoint key(s) {keys} (t = the held-out "
            f"environment) in the records, and none of the {len(records)} records of tasks "
            f"{', '.join(self.TASKS)} has them; the trainer must record these scores on the "
            "unlabeled target split for this rule to work")

    def hparams_accs(self, records: Sequence[dict[str, Any]], test_env: int
                     ) -> list[tuple[tuple[int, str], RunChoice]]:
        """Every scorable run of a group with its `config_key`, best first (ties: smallest
        hparams_seed, then overrides). A phased algorithm's checkpoints from before its
        adaptation are never candidates (`shiftbench.phases`)."""
        runs: dict[tuple[int, str], list[dict[str, Any]]] = defaultdict(list)
        for r in adapted_only(records):
            runs[config_key(r["args"])].append(r)
        scored = []
        for config in sorted(runs):
            choice = self.run_acc(runs[config], test_env)
            if choice is not None:
                scored.append((config, choice))
        scored.sort(key=lambda sc: -sc[1].val_acc)  # stable: keeps the smaller key first
        return scored


class CheckpointRule(SelectionRule):
    """Early stopping over the checkpoints of the run held out on [t], by a validation score.
    With `SKIP_INITIAL` the untrained model (step 0) is not a candidate: label-free scores can
    prefer it (an untrained network's features have the highest neighbourhood density)."""

    SKIP_INITIAL = False

    def val_score(self, record: dict[str, Any], test_env: int) -> float | None:
        raise NotImplementedError

    def run_acc(self, records, test_env):
        best = None
        for r in single_test_records(records):
            if self.SKIP_INITIAL and r.get("step") == 0:
                continue
            val = self.val_score(r, test_env)
            test = r.get(record_key(test_env, "in"))
            if not (_finite(val) and _finite(test)):
                continue
            if best is None or val > best.val_acc:
                best = RunChoice(float(val), float(test), r["step"], r)
        return best


@register_selection_rule
class IIDAccuracySelectionMethod(CheckpointRule):
    """Training-domain validation: mean out-split accuracy of the training (source) domains;
    environments a trial did not train on (`unused_envs`) are left out."""

    NAME = "iid"
    TITLE = "training-domain validation set"

    def val_score(self, record, test_env):
        accs = []
        sources = record["args"].get("source_envs")
        i = 0
        while record_key(i, "out") in record:
            if i != test_env and (sources is None or i in sources):
                accs.append(record[record_key(i, "out")])
            i += 1
        if not accs or not all(_finite(a) for a in accs):
            return None
        return sum(accs) / len(accs)


@register_selection_rule
class LeaveOneOutSelectionMethod(SelectionRule):
    """Leave-one-domain-out cross-validation from the runs held out on pairs [t, v]."""

    NAME = "loo"
    TITLE = "leave-one-domain-out cross-validation"

    def step_acc(self, records: Sequence[dict[str, Any]], test_env: int) -> RunChoice | None:
        singles = [r for r in records if r["args"]["test_envs"] == [test_env]]
        if len(singles) != 1:
            return None
        test_record = singles[0]
        n_envs = 0
        while record_key(n_envs, "out") in test_record:
            n_envs += 1
        val: dict[int, float] = {}
        for r in records:
            envs = r["args"]["test_envs"]
            if len(envs) != 2 or test_env not in envs:
                continue
            v = envs[0] if envs[1] == test_env else envs[1]
            acc = r.get(record_key(v, "in"))
            if _finite(acc):
                val[v] = acc
        others = [v for v in range(n_envs) if v != test_env]
        test = test_record.get(record_key(test_env, "in"))
        if n_envs < 2 or any(v not in val for v in others) or not _finite(test):
            return None
        return RunChoice(sum(val[v] for v in others) / len(others), float(test),
                         test_record["step"], test_record)

    def run_acc(self, records, test_env):
        by_step: dict[Any, list[dict[str, Any]]] = defaultdict(list)
        for r in records:
            by_step[r["step"]].append(r)
        best = None
        for step in sorted(by_step):
            choice = self.step_acc(by_step[step], test_env)
            if choice is not None and (best is None or choice.val_acc > best.val_acc):
                best = choice
        return best


@register_selection_rule
class OracleSelectionMethod(SelectionRule):
    """Test-domain validation (oracle): the last checkpoint, scored on the test domain's out split."""

    NAME = "oracle"
    TITLE = "test-domain validation set (oracle)"

    def run_acc(self, records, test_env):
        singles = single_test_records(records)
        if not singles:
            return None
        last = singles[-1]
        val, test = last.get(record_key(test_env, "out")), last.get(record_key(test_env, "in"))
        if not (_finite(val) and _finite(test)):
            return None
        return RunChoice(float(val), float(test), last["step"], last)


class KeyRule(CheckpointRule):
    """Early stopping on one recorded per-checkpoint score (sign set by `HIGHER_IS_BETTER`)."""

    HIGHER_IS_BETTER = True

    def val_score(self, record, test_env):
        value = record.get(self.REQUIRED_KEYS[0].format(t=test_env))
        if not _finite(value):
            return None
        return value if self.HIGHER_IS_BETTER else -value


@register_selection_rule
class TargetLabeledSelection(KeyRule):
    """Validation on few labeled target examples disjoint from the training shots (ssda/sda)."""

    NAME = "target"
    TITLE = "few labeled target examples"
    TASKS = FEW_SHOT_TASKS
    REQUIRED_KEYS = ("env{t}_lab_val_acc",)


@register_selection_rule
class EntropySelection(KeyRule):
    """Lowest mean prediction entropy on the unlabeled target split."""

    NAME = "entropy"
    TITLE = "target entropy (unsupervised)"
    TASKS = UNLABELED_TARGET_TASKS
    REQUIRED_KEYS = ("env{t}_uda_entropy",)
    SKIP_INITIAL = True
    HIGHER_IS_BETTER = False


@register_selection_rule
class InfoMaxSelection(CheckpointRule):
    """Information maximisation: H(mean prediction) - mean H(prediction), highest wins."""

    NAME = "im"
    TITLE = "target information maximisation (unsupervised)"
    TASKS = UNLABELED_TARGET_TASKS
    REQUIRED_KEYS = ("env{t}_uda_marginal_entropy", "env{t}_uda_entropy")
    SKIP_INITIAL = True

    def val_score(self, record, test_env):
        marginal = record.get(record_key(test_env, "uda", "marginal_entropy"))
        cond = record.get(record_key(test_env, "uda", "entropy"))
        if not (_finite(marginal) and _finite(cond)):
            return None
        return marginal - cond


@register_selection_rule
class SNDSelection(KeyRule):
    """Soft neighbourhood density of target features, highest wins."""

    NAME = "snd"
    TITLE = "target soft neighbourhood density (unsupervised)"
    TASKS = UNLABELED_TARGET_TASKS
    REQUIRED_KEYS = ("env{t}_uda_snd",)
    SKIP_INITIAL = True


@register_selection_rule
class DEVSelection(KeyRule):
    """Deep embedded validation risk, lowest wins."""

    NAME = "dev"
    TITLE = "deep embedded validation (unsupervised)"
    TASKS = UNLABELED_TARGET_TASKS
    REQUIRED_KEYS = ("env{t}_uda_dev",)
    SKIP_INITIAL = True
    HIGHER_IS_BETTER = False


CLASSIC_RULES = ("iid", "loo", "oracle")
ALIASES = {
    "IIDAccuracySelectionMethod": "iid", "training-domain": "iid", "training_domain": "iid",
    "LeaveOneOutSelectionMethod": "loo", "leave-one-out": "loo", "leave_one_out": "loo",
    "OracleSelectionMethod": "oracle", "test-domain": "oracle", "test_domain": "oracle",
    "information-maximization": "im", "infomax": "im",
}


def get_selection_rule(name: str | SelectionRule) -> SelectionRule:
    """A rule instance by name (or DomainBed class name); unknown names list the choices."""
    if isinstance(name, SelectionRule):
        return name
    canonical = ALIASES.get(name, name)
    if canonical not in SELECTION_RULES:
        raise UnknownNameError("selection rule", name, SELECTION_RULES.names())
    return SELECTION_RULES.get(canonical)()


def list_selection_rules() -> list[str]:
    return SELECTION_RULES.names()


def source_key(args: dict[str, Any]) -> tuple[int, ...] | None:
    """The run's explicit source environments, sorted (None: all but the held-out ones)."""
    sources = args.get("source_envs")
    return None if sources is None else tuple(sorted(int(i) for i in sources))


def group_records(records: Iterable[dict[str, Any]]
                  ) -> dict[tuple[str, str, str, int, int, tuple[int, ...] | None],
                            list[dict[str, Any]]]:
    """(task, dataset, algorithm, test_env, trial_seed, source_envs) -> records; a pair run joins
    two groups; runs of different explicit sources (source->target tasks) never share one."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        a = r["args"]
        for t in a["test_envs"]:
            groups[(a["task"], a["dataset"], a["algorithm"], int(t), int(a["trial_seed"]),
                    source_key(a))].append(r)
    return groups


def select(data: Sweep | Iterable[dict[str, Any]], rule: str | SelectionRule,
           *, strict: bool = True) -> list[Selected]:
    """The winner of every group the rule can decide, per trial (not yet averaged).

    With `strict`, a rule whose per-checkpoint keys no record carries raises; otherwise it
    selects nothing.
    """
    rule = get_selection_rule(rule)
    records = [r for r in as_records(data) if r["args"]["task"] in rule.TASKS]
    try:
        rule.check(records)
    except ShiftbenchError:
        if strict:
            raise
        return []
    out = []
    groups = group_records(records)
    for key in sorted(groups, key=lambda k: (*k[:5], k[5] or ())):
        (task, dataset, algorithm, test_env, trial, sources), group = key, groups[key]
        ranked = rule.hparams_accs(group, test_env)
        if not ranked:
            continue
        (seed, overrides), choice = ranked[0]
        n_configs = len({config_key(r["args"]) for r in group})
        out.append(Selected(
            rule.NAME, task, dataset, algorithm, test_env, trial, seed, choice.step,
            choice.val_acc, choice.test_acc, n_configs, len(ranked),
            choice.record.get("_job_dir", choice.record["args"].get("output_dir")),
            dict(choice.record.get("hparams", {})), sources, overrides=overrides))
    return out


def applicable_rules(data: Sweep | Iterable[dict[str, Any]]) -> list[str]:
    """Rules that can select something in these records (the default of `shiftbench collect`)."""
    records = as_records(data)
    tasks = {r["args"]["task"] for r in records}
    names = []
    for name in SELECTION_RULES.names():
        rule = get_selection_rule(name)
        subset = [r for r in records if r["args"]["task"] in rule.TASKS]
        if not tasks & set(rule.TASKS) or not subset:
            continue
        try:
            rule.check(subset)
        except ShiftbenchError:
            continue
        names.append(name)
    return names
