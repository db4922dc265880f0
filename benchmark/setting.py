"""The settings a trial runs in: what exists, what an algorithm may see, how it is evaluated.

A `Setting` is the single place that says what `dg`, `uda`, `ssda`, `sda` and `tta` mean. Every
other part of the engine asks it questions instead of comparing setting names:

* splits: `unlabeled_target` (each target environment gives an unlabeled `uda` split, streamed
  to the algorithm as `x` batches and held out from the test split), `few_shot_target` (each
  target environment gives `k` labeled examples per class, the `lab` split, streamed as `(x, y)`
  batches after the source batches);
* label sources: `label_sources`, written to every record; the only labels an algorithm ever
  receives are the source domains' and, when `few_shot_target`, the `lab` split's;
* evaluation: `evaluation` is "predict" (the model as trained) or "adapt" (the test stream is fed
  to `adapt(x)`, test-time adaptation).

What is predicted and how it is scored is a separate axis: the dataset's task type
("classification" today; dense prediction such as segmentation, with label maps and mIoU, adds
its evaluator under its own task type). A setting never branches on the task type, and the
evaluator never branches on the setting beyond `evaluation`.

Settings are registered once, here; DomainBed's task names are resolved by `get_setting`. This
module imports nothing heavy (no torch), so specs and records can use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from shiftbench.errors import ShiftbenchError, UnknownNameError

SOURCE_LABELED = "source_labeled"
TARGET_UNLABELED = "target_unlabeled"
TARGET_FEW_LABELED = "target_few_labeled"
TEST_STREAM_UNLABELED = "test_stream_unlabeled"

EVALUATIONS = ("predict", "adapt")


@dataclass(frozen=True)
class Setting:
    """One setting: the splits and streams it has, the labels it hands out, its evaluation."""

    name: str
    description: str
    title: str = ""  # how tables and headlines name it
    unlabeled_target: bool = False
    few_shot_target: bool = False
    evaluation: str = "predict"

    def __post_init__(self) -> None:
        if self.evaluation not in EVALUATIONS:
            raise ValueError(f"evaluation {self.evaluation!r} is not one of {EVALUATIONS}")

    def __str__(self) -> str:
        return self.name

    @property
    def label_sources(self) -> list[str]:
        """What an algorithm receives, in the order records list it."""
        sources = [SOURCE_LABELED]
        if self.few_shot_target:
            sources.append(TARGET_FEW_LABELED)
        if self.unlabeled_target:
            sources.append(TARGET_UNLABELED)
        if self.adapts_at_test:
            sources.append(TEST_STREAM_UNLABELED)
        return sources

    @property
    def adapts_at_test(self) -> bool:
        """Evaluation feeds the test stream to `adapt(x)` instead of calling `predict(x)`."""
        return self.evaluation == "adapt"

    @property
    def default_uda_fraction(self) -> float:
        """The share of a target environment's `in` split that becomes the unlabeled split."""
        return 0.5 if self.unlabeled_target else 0.0

    @property
    def primary_rule(self) -> str:
        """The model-selection rule a headline uses: validation on the few labeled target
        examples where the setting has them, else on the training (source) domains."""
        return "target" if self.few_shot_target else "iid"


_SETTINGS: dict[str, Setting] = {}
ALIASES = {"domain_generalization": "dg", "domain_adaptation": "uda"}  # DomainBed's task names


def register_setting(setting: Setting) -> Setting:
    """Add a setting (an extension point for new protocols; the five below are built in)."""
    if setting.name in _SETTINGS and _SETTINGS[setting.name] != setting:
        raise ValueError(f"setting {setting.name!r} is already registered")
    _SETTINGS[setting.name] = setting
    return setting


DG = register_setting(Setting("dg", "domain generalization: labeled sources only",
                             "Domain generalization"))
UDA = register_setting(Setting(
    "uda", "unsupervised domain adaptation: plus unlabeled target batches",
    "Unsupervised domain adaptation", unlabeled_target=True))
SSDA = register_setting(Setting(
    "ssda", "semi-supervised DA: plus k labeled target examples per class and unlabeled target",
    "Semi-supervised domain adaptation", unlabeled_target=True, few_shot_target=True))
SDA = register_setting(Setting(
    "sda", "supervised DA: plus k labeled target examples per class, no unlabeled target",
    "Supervised domain adaptation", few_shot_target=True))
TTA = register_setting(Setting(
    "tta", "test-time adaptation: sources at training, adapt(x) on the test stream",
    "Test-time adaptation", evaluation="adapt"))


def get_setting(name: str | Setting) -> Setting:
    """The setting of a name (DomainBed's `domain_generalization`/`domain_adaptation` included)."""
    if isinstance(name, Setting):
        return name
    key = ALIASES.get(name, name) if isinstance(name, str) else name
    try:
        return _SETTINGS[key]
    except (KeyError, TypeError):
        raise UnknownNameError("task", name, _SETTINGS) from None


def canonical_name(name: str | Setting) -> str:
    """`get_setting(name).name`: the one spelling records and hashes use."""
    return get_setting(name).name


def setting_names() -> tuple[str, ...]:
    return tuple(_SETTINGS)


def all_settings() -> tuple[Setting, ...]:
    return tuple(_SETTINGS.values())


def check_supports(algorithm: str, supported: Sequence[str], setting: str,
                   alternatives: Sequence[str] = ()) -> None:
    """The one check that an algorithm declaring `supported` settings runs in `setting` (made by
    the CLI from the catalog, by `normalize`, by a sweep spec and by `Algorithm` itself); the
    error names what it supports and, when given, the algorithms that run in `setting`."""
    if setting in supported:
        return
    message = (f"algorithm {algorithm} does not support --task {setting}; it supports: "
               f"{', '.join(supported)}")
    if alternatives:
        message += f". Algorithms for {setting}: {', '.join(alternatives)}"
    raise ShiftbenchError(message)
