"""How a trial option is declared: one `option(...)` per `TrialSpec` field, whose metadata generates
the `train` flags, the sweep flags and spec keys, the validation, the identity rule and what
records carry (see docs/architecture.md, "Adding a trial option"). Torch-free.
"""

from __future__ import annotations

import argparse
import numbers
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any, Literal

from shiftbench.errors import ShiftbenchError, UnknownNameError

# What a field's value does to a trial's identity (`shiftbench.trial_record.identity`).
ALWAYS = "always"  # always part of it
CHANGED = "changed"  # part of it only when it differs from the default (old hashes never move)
NEVER = "never"  # where things live or run, what is merely saved
IdentityRule = Literal["always", "changed", "never"]

_METADATA_KEY = "shiftbench.option"


@dataclass(frozen=True)
class Option:
    """The declaration of one trial option (the metadata of a `TrialSpec` field)."""

    help: str
    identity: IdentityRule = CHANGED
    choices: tuple[str, ...] = ()  # the valid values of a string option
    minimum: float | None = None  # inclusive lower bound of a number
    below: float | None = None  # exclusive upper bound of a number
    flag: bool = True  # `shiftbench train --name`
    sweep: bool = False  # a sweep flag and spec key; its value goes into every job it applies to
    # Where the option means something: sweeps give other settings' (datasets') jobs the default,
    # so their hashes do not depend on it; `recorded` options are copied to records only there.
    in_settings: Callable[[Any], bool] | None = None  # called with a `Setting`
    in_datasets: Callable[[Any], bool] | None = None  # called with `sweeps.facts.DatasetFacts`
    recorded: bool = False  # copied to the top level of every record where it applies
    environments: bool = False  # a list of environments, given by index or name
    canonical: Callable[[Any], Any] | None = None  # the value's canonical form in the identity
    metavar: str | None = None


def option(default: Any = None, help: str = "", *, factory: Callable[[], Any] | None = None,
           **declaration: Any) -> Any:
    """A `TrialSpec` field with its declaration (`Option`'s fields as keywords)."""
    metadata = {_METADATA_KEY: Option(help, **declaration)}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class TrialOption:
    """A declared field: its name, default, value type and declaration."""

    name: str
    default: Any
    kind: type  # bool, int, float, str or list (the value's type without None)
    optional: bool  # None is allowed
    declaration: Option

    @property
    def flag_names(self) -> list[str]:
        """`--test-envs` plus DomainBed's `--test_envs` when the two differ."""
        return flag_names(self.name)

    @property
    def label(self) -> str:
        return "--" + self.name.replace("_", "-")


def flag_names(name: str) -> list[str]:
    dashed = "--" + name.replace("_", "-")
    underscored = "--" + name.replace("-", "_")
    return [dashed] if dashed == underscored else [dashed, underscored]


def declared_options(spec_class: type) -> dict[str, TrialOption]:
    """The declared fields of a dataclass (`TrialSpec`), in order."""
    hints = typing.get_type_hints(spec_class)
    out = {}
    for f in fields(spec_class):
        if _METADATA_KEY not in f.metadata:
            raise TypeError(f"{spec_class.__name__}.{f.name} is not declared with option(...)")
        kind, optional = _kind(hints[f.name])
        out[f.name] = TrialOption(f.name, _default(f), kind, optional, f.metadata[_METADATA_KEY])
    return out


def _default(f: Field) -> Any:
    return f.default_factory() if f.default_factory is not MISSING else f.default


def _kind(hint: Any) -> tuple[type, bool]:
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        kind, _ = _kind(rest[0])
        return kind, len(rest) < len(args)
    origin = typing.get_origin(hint)
    return (origin or hint), False


# --------------------------------------------------------------------------------------------
# Validation


def check_value(opt: TrialOption, value: Any, label: str | None = None) -> None:
    """Raise a clear error naming the value and what is valid, unless `value` fits `opt`."""
    label = label or opt.name
    d = opt.declaration
    if value is None:
        if not opt.optional:
            raise ShiftbenchError(f"{label} must be given (got None)")
        return
    if opt.kind is bool:
        ok = isinstance(value, bool)
    elif opt.kind is int:
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    elif opt.kind is float:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    else:
        ok = isinstance(value, (list, tuple) if opt.kind is list else opt.kind)
    if not ok:
        raise ShiftbenchError(f"{label} must be {_type_name(opt)}, got {value!r}")
    if d.choices and value not in d.choices:
        raise UnknownNameError(opt.name, value, d.choices)
    if d.minimum is not None and d.below is not None and not d.minimum <= value < d.below:
        raise ShiftbenchError(f"{label} must lie in [{d.minimum:g}, {d.below:g}), got {value}")
    if d.minimum is not None and value < d.minimum:
        raise ShiftbenchError(f"{label} must be >= {d.minimum:g}, got {value}")


def _type_name(opt: TrialOption) -> str:
    name = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
            list: "a list"}.get(opt.kind, opt.kind.__name__)
    return name + (" or None" if opt.optional else "")


def check_values(options: Mapping[str, TrialOption], values: Mapping[str, Any],
                 flags: bool = False) -> None:
    """`check_value` for every declared name in `values`; `flags` names them as flags."""
    for name, value in values.items():
        if name in options:
            opt = options[name]
            check_value(opt, value, opt.label if flags else opt.name)


# --------------------------------------------------------------------------------------------
# Command-line flags


def _help(opt: TrialOption, sweep: bool) -> str | None:
    text = opt.declaration.help
    if sweep and opt.declaration.identity == CHANGED and opt.default not in (None, False):
        text += f" (default {opt.default}; part of a job's identity only when changed)"
    return text or None


def add_flag(parser: argparse.ArgumentParser, opt: TrialOption, sweep: bool = False) -> None:
    """The flag of one option. `sweep`: its default is None (not given, so a spec file's value
    stands) and choices are checked by the spec's validation, which names the file's line."""
    d = opt.declaration
    kwargs: dict[str, Any] = {"help": _help(opt, sweep), "default": None if sweep else opt.default}
    if opt.kind is bool:
        kwargs["action"] = "store_true"
    elif opt.kind is list:
        kwargs.update(nargs="+", metavar=d.metavar or ("ENV" if d.environments else None))
    else:
        kwargs["type"] = opt.kind
        if d.choices:
            kwargs["metavar"] = "{" + ",".join(d.choices) + "}"
            if not sweep:
                kwargs["choices"] = d.choices
        elif d.metavar:
            kwargs["metavar"] = d.metavar
    parser.add_argument(*opt.flag_names, **kwargs)


def add_flags(parser: argparse.ArgumentParser, options: Iterable[TrialOption],
              sweep: bool = False) -> None:
    for opt in options:
        add_flag(parser, opt, sweep)
