"""Hyperparameters: declared next to each algorithm, resolved here.

Each algorithm declares a search space (`Algorithm.hparam_space(dataset_info)`): a mapping
name -> `HParam(default, distribution)`. This module turns it into the two dicts DomainBed's
`hparams_registry` offers, with one deliberate difference:

* `default_hparams(algorithm, dataset)` — every default.
* `random_hparams(algorithm, dataset, seed)` — one draw of the random search. Each hparam is
  drawn from its own generator seeded by `seed_hash(seed, name)`, so adding an hparam does not
  change the others' draws (as in DomainBed). Unlike DomainBed, the trainer passes only the
  `hparams_seed` here (not a hash with the trial seed): configuration k is the same in every
  trial, which is what "k configurations x n trials" means (DomainBed issue #69).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shiftbench.errors import ShiftbenchError, UnknownNameError
from shiftbench.seeds import seed_hash

# --------------------------------------------------------------------------------------------
# Distributions of the random search


class Distribution:
    """A random-search distribution; `sample` must use only the generator it is given."""

    def sample(self, rs: np.random.RandomState) -> Any:
        raise NotImplementedError


@dataclass(frozen=True)
class LogUniform(Distribution):
    """`base ** U(low, high)` (DomainBed writes this `10**r.uniform(low, high)`)."""

    low: float
    high: float
    base: float = 10.0

    def sample(self, rs: np.random.RandomState) -> float:
        return float(self.base ** rs.uniform(self.low, self.high))

    def __str__(self) -> str:
        return f"{self.base:g}^U({self.low:g},{self.high:g})"


@dataclass(frozen=True)
class IntLogUniform(Distribution):
    """`int(base ** U(low, high))`, e.g. DomainBed's batch sizes `int(2**U(3, 9))`."""

    low: float
    high: float
    base: float = 2.0

    def sample(self, rs: np.random.RandomState) -> int:
        return int(self.base ** rs.uniform(self.low, self.high))

    def __str__(self) -> str:
        return f"int({self.base:g}^U({self.low:g},{self.high:g}))"


@dataclass(frozen=True)
class Uniform(Distribution):
    low: float
    high: float

    def sample(self, rs: np.random.RandomState) -> float:
        return float(rs.uniform(self.low, self.high))

    def __str__(self) -> str:
        return f"U({self.low:g},{self.high:g})"


@dataclass(frozen=True)
class IntUniform(Distribution):
    """`int(U(low, high))`."""

    low: float
    high: float

    def sample(self, rs: np.random.RandomState) -> int:
        return int(rs.uniform(self.low, self.high))

    def __str__(self) -> str:
        return f"int(U({self.low:g},{self.high:g}))"


@dataclass(frozen=True)
class Choice(Distribution):
    values: tuple

    def __init__(self, values: Sequence[Any]):
        object.__setattr__(self, "values", tuple(values))

    def sample(self, rs: np.random.RandomState) -> Any:
        value = self.values[rs.choice(len(self.values))]
        return value.item() if hasattr(value, "item") else value

    def __str__(self) -> str:
        return "choice{" + ",".join(map(str, self.values)) + "}"


# --------------------------------------------------------------------------------------------
# One hyperparameter


@dataclass(frozen=True)
class HParam:
    """A hyperparameter: its default, its random-search distribution (None = fixed) and the
    range of values the algorithm accepts (`low`/`high`, inclusive, checked for overrides)."""

    default: Any
    dist: Distribution | None = None
    low: float | None = None
    high: float | None = None
    help: str = field(default="", compare=False)

    def sample(self, rs: np.random.RandomState) -> Any:
        return self.default if self.dist is None else self.dist.sample(rs)

    def describe(self) -> str:
        space = str(self.dist) if self.dist is not None else "fixed"
        return f"{self.default!r} / {space}"


@dataclass(frozen=True)
class DatasetInfo:
    """What an hparam space may depend on: the dataset's name and shape."""

    name: str
    input_shape: tuple[int, ...]
    num_classes: int

    @property
    def small_images(self) -> bool:
        """28x28 or smaller inputs (DomainBed's `SMALL_IMAGES`: the MNIST-sized datasets)."""
        return len(self.input_shape) == 3 and self.input_shape[-1] <= 32

    @property
    def is_vector(self) -> bool:
        return len(self.input_shape) == 1


def dataset_info(dataset: str | DatasetInfo) -> DatasetInfo:
    if isinstance(dataset, DatasetInfo):
        return dataset
    from shiftbench.datasets import get_dataset_class

    cls = get_dataset_class(dataset)
    return DatasetInfo(dataset, tuple(cls.INPUT_SHAPE), int(cls.NUM_CLASSES))


def hparam_space(algorithm: str, dataset: str | DatasetInfo) -> dict[str, HParam]:
    from shiftbench.algorithms import get_algorithm_class

    return get_algorithm_class(algorithm).hparam_space(dataset_info(dataset))


def default_hparams(algorithm: str, dataset: str | DatasetInfo) -> dict[str, Any]:
    """Every hparam at its default (DomainBed's `default_hparams`)."""
    return {name: hp.default for name, hp in hparam_space(algorithm, dataset).items()}


def random_hparams(algorithm: str, dataset: str | DatasetInfo, seed: int) -> dict[str, Any]:
    """One draw of the random search; hparam `name` is drawn with `seed_hash(seed, name)`."""
    return {
        name: hp.sample(np.random.RandomState(seed_hash(seed, name)))
        for name, hp in hparam_space(algorithm, dataset).items()
    }


def resolve_hparams(
    algorithm: str,
    dataset: str | DatasetInfo,
    hparams_seed: int = 0,
    overrides: str | Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The configuration a trial runs with: defaults (seed 0) or a random draw, then overrides."""
    if hparams_seed < 0:
        raise ShiftbenchError(f"--hparams-seed must be >= 0, got {hparams_seed}")
    space = hparam_space(algorithm, dataset)
    if hparams_seed == 0:
        hparams = {name: hp.default for name, hp in space.items()}
    else:
        hparams = random_hparams(algorithm, dataset, hparams_seed)
    hparams.update(validate_overrides(space, overrides, algorithm))
    return hparams


def parse_overrides(overrides: str | Mapping[str, Any] | None) -> dict[str, Any]:
    if overrides is None or overrides == "":
        return {}
    if isinstance(overrides, Mapping):
        return dict(overrides)
    try:
        parsed = json.loads(overrides)
    except json.JSONDecodeError as e:
        raise ShiftbenchError(
            f"--hparams is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}): "
            f"{overrides!r}; expected an object such as '{{\"lr\": 0.001}}'"
        ) from None
    if not isinstance(parsed, dict):
        raise ShiftbenchError(
            f"--hparams must be a JSON object such as '{{\"lr\": 0.001}}', got {overrides!r}"
        )
    return parsed


def validate_overrides(
    space: Mapping[str, HParam], overrides: str | Mapping[str, Any] | None, algorithm: str = ""
) -> dict[str, Any]:
    """Check each override's name, type and range against the declared space."""
    checked: dict[str, Any] = {}
    for name, value in parse_overrides(overrides).items():
        if name not in space:
            where = f" for {algorithm}" if algorithm else ""
            raise UnknownNameError(f"hparam{where}", name, space)
        checked[name] = _check_value(name, value, space[name])
    return checked


def _type_name(value: Any) -> str:
    return {bool: "bool", int: "int", float: "float", str: "str"}.get(type(value), type(value).__name__)


def _check_value(name: str, value: Any, hp: HParam) -> Any:
    default = hp.default
    ok = True
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            value = float(value)
    elif isinstance(default, str):
        ok = isinstance(value, str)
    if not ok:
        raise ShiftbenchError(
            f"hparam {name!r} must be of type {_type_name(default)} (default {default!r}), "
            f"got {value!r} of type {_type_name(value)}"
        )
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            raise ShiftbenchError(f"hparam {name!r} must be finite, got {value!r}")
        if (hp.low is not None and value < hp.low) or (hp.high is not None and value > hp.high):
            lo = "-inf" if hp.low is None else f"{hp.low:g}"
            hi = "inf" if hp.high is None else f"{hp.high:g}"
            raise ShiftbenchError(f"hparam {name!r} must lie in [{lo}, {hi}], got {value!r}")
    if isinstance(hp.dist, Choice) and isinstance(default, str) and value not in hp.dist.values:
        raise UnknownNameError(f"value for hparam {name!r}", value, map(str, hp.dist.values))
    return value
