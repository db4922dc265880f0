"""Hyperparameter declarations: `HParam`, the random-search distributions, `DatasetInfo`, and the
checks of override values. What an algorithm module imports to declare its search space; the
name-based API (`default_hparams(algorithm, dataset)`, ...) is `shiftbench.hparams_registry`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shiftbench.errors import ShiftbenchError, UnknownNameError
from shiftbench.trial_record import trial_options

FLOAT32_MAX = 3.4028234663852886e38  # the largest float32 (torch.finfo(torch.float32).max)

PROTOCOLS = trial_options()["protocol"].declaration.choices

# DomainBed's `algorithms.ALGORITHMS` (current main): the names `--protocol domainbed` applies to.
DOMAINBED_ALGORITHMS = (
    "ERM", "ERMPlusPlus", "Fish", "IRM", "GroupDRO", "Mixup", "MLDG", "CORAL", "MMD", "DANN",
    "CDANN", "MTL", "SagNet", "ARM", "VREx", "RSC", "SD", "ANDMask", "SANDMask", "IGA", "SelfReg",
    "Fishr", "TRM", "IB_ERM", "IB_IRM", "CAD", "CondCAD", "Transfer", "CausIRL_CORAL",
    "CausIRL_MMD", "EQRM", "RDM", "ADRMX", "URM",
)


def check_protocol(protocol: str) -> str:
    """`protocol` if it is one of `PROTOCOLS`, else a clear error naming the choices."""
    if protocol not in PROTOCOLS:
        raise UnknownNameError("protocol", protocol, PROTOCOLS)
    return protocol

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
    """A hyperparameter: its default, its random-search distribution (None = fixed), the range
    of values the algorithm accepts (`low`/`high`, inclusive) and, for a categorical one, its
    `choices` (a string hparam searched with `Choice` takes the choice's values). Overrides are
    checked against all of these, so constructors need no checks of their own.

    `variant=True` marks a switch between variants of one method: it must be fixed (no `dist`)
    and have `choices` (or be a bool). `seed_name` draws the value with another name's generator
    (DomainBed's name of a renamed hparam, so drawn configurations equal DomainBed's). A searched
    categorical (str or bool) hparam must say `variant=False`: a reviewed tuning knob, not a
    variant (a test enforces this)."""

    default: Any
    dist: Distribution | None = None
    low: float | None = None
    high: float | None = None
    choices: tuple | None = None
    variant: bool | None = None
    help: str = field(default="", compare=False)
    seed_name: str | None = None  # draw with DomainBed's name for this hparam (e.g. "mlp_width")

    def __post_init__(self) -> None:
        choices = self.choices
        if choices is None and isinstance(self.dist, Choice) and isinstance(self.default, str):
            choices = self.dist.values
        if choices is not None:
            choices = tuple(choices)
            object.__setattr__(self, "choices", choices)
            if self.default not in choices:
                raise ShiftbenchError(f"HParam default {self.default!r} is not among its "
                                      f"choices {choices}")
        if self.variant:
            if self.dist is not None:
                raise ShiftbenchError(f"variant switch (default {self.default!r}) must be fixed: "
                                      f"a random search never mixes variants; got {self.dist}")
            if choices is None and not isinstance(self.default, bool):
                raise ShiftbenchError(f"variant switch (default {self.default!r}) needs choices")

    def sample(self, rs: np.random.RandomState) -> Any:
        return self.default if self.dist is None else self.dist.sample(rs)

    def describe(self) -> str:
        space = str(self.dist) if self.dist is not None else "fixed"
        if self.variant:
            space = "variant {" + ",".join(map(str, self.choices or (False, True))) + "}"
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

    @property
    def domainbed_small(self) -> bool:
        """DomainBed's `SMALL_IMAGES` (Debug28, RotatedMNIST, ColoredMNIST): the 28x28 inputs."""
        return len(self.input_shape) == 3 and tuple(self.input_shape[1:]) == (28, 28)


def dataset_info(dataset: str | DatasetInfo) -> DatasetInfo:
    if isinstance(dataset, DatasetInfo):
        return dataset
    from shiftbench.datasets import get_dataset_class

    cls = get_dataset_class(dataset)
    return DatasetInfo(dataset, tuple(cls.INPUT_SHAPE), int(cls.NUM_CLASSES))


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


def check_choices(space: Mapping[str, HParam], hparams: Mapping[str, Any]) -> None:
    """Every categorical hparam in `hparams` is one of its declared `choices`."""
    for name, hp in space.items():
        if hp.choices is not None and name in hparams and hparams[name] not in hp.choices:
            raise UnknownNameError(f"value for hparam {name!r}", hparams[name], map(str, hp.choices))


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
        if isinstance(value, float) and abs(value) > FLOAT32_MAX:  # parameters are float32
            raise ShiftbenchError(f"hparam {name!r} must lie within float32's range "
                                  f"(|x| <= {FLOAT32_MAX:.4g}), got {value!r}")
        if (hp.low is not None and value < hp.low) or (hp.high is not None and value > hp.high):
            lo = "-inf" if hp.low is None else f"{hp.low:g}"
            hi = "inf" if hp.high is None else f"{hp.high:g}"
            raise ShiftbenchError(f"hparam {name!r} must lie in [{lo}, {hi}], got {value!r}")
    if hp.choices is not None and value not in hp.choices:
        raise UnknownNameError(f"value for hparam {name!r}", value, map(str, hp.choices))
    return value
