"""Hyperparameters: declared next to each algorithm, resolved here.

Each algorithm declares a search space (`Algorithm.hparam_space(dataset_info, protocol)`): a
mapping name -> `HParam(default, distribution)`. Its `HPARAMS` give the shiftbench protocol; its
`DOMAINBED_HPARAMS` (merged on top, over the whole class hierarchy) give DomainBed's values
under `protocol="domainbed"`: defaults, search distributions, fixed variant switches and the
network. Algorithms read only the resolved hparams, never the protocol.

A *variant switch* (`HParam(..., variant=True)`) selects between variants of one method (e.g.
DANN's gradient-reversal vs alternating updates). It is never searched: a random search keeps it
at its default, and only `--hparams` changes it, so one sweep never mixes variants.

This module turns a space into the two dicts DomainBed's `hparams_registry` offers, with one
deliberate difference:

* `default_hparams(algorithm, dataset)` — every default.
* `random_hparams(algorithm, dataset, seed)` — one draw of the random search. Each hparam is
  drawn from its own generator seeded by `seed_hash(seed, name)`, so adding an hparam does not
  change the others' draws (as in DomainBed). Unlike DomainBed, the trainer passes only the
  `hparams_seed` here (not a hash with the trial seed): configuration k is the same in every
  trial, which is what "k configurations x n trials" means (DomainBed issue #69).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from shiftbench.errors import ShiftbenchError
from shiftbench.hparams import (
    DOMAINBED_ALGORITHMS,
    FLOAT32_MAX,
    PROTOCOLS,
    Choice,
    DatasetInfo,
    Distribution,
    HParam,
    IntLogUniform,
    IntUniform,
    LogUniform,
    Uniform,
    check_choices,
    check_protocol,
    dataset_info,
    parse_overrides,
    validate_overrides,
)
from shiftbench.seeds import seed_hash

# The declarations (shiftbench.hparams) are importable from here too, as from DomainBed's module.
__all__ = [
    "Choice", "DOMAINBED_ALGORITHMS", "DatasetInfo", "Distribution", "FLOAT32_MAX", "HParam",
    "IntLogUniform", "IntUniform", "LogUniform", "PROTOCOLS", "Uniform", "check_choices",
    "check_protocol", "dataset_info", "default_hparams", "hparam_space", "parse_overrides",
    "random_hparams", "resolve_hparams", "validate_overrides",
]


def hparam_space(
    algorithm: str, dataset: str | DatasetInfo, protocol: str = "shiftbench"
) -> dict[str, HParam]:
    """The declared space of `algorithm` on `dataset` under `protocol`."""
    from shiftbench.algorithms import get_algorithm_class

    cls = get_algorithm_class(algorithm)
    if check_protocol(protocol) == "domainbed" and algorithm not in DOMAINBED_ALGORITHMS:
        raise ShiftbenchError(
            f"algorithm {algorithm} is not in DomainBed, so --protocol domainbed does not apply "
            f"to it; use --protocol shiftbench, or one of DomainBed's algorithms: "
            f"{', '.join(DOMAINBED_ALGORITHMS)}")
    return cls.hparam_space(dataset_info(dataset), protocol)


def default_hparams(
    algorithm: str, dataset: str | DatasetInfo, protocol: str = "shiftbench"
) -> dict[str, Any]:
    """Every hparam at its default (DomainBed's `default_hparams`)."""
    return {name: hp.default for name, hp in hparam_space(algorithm, dataset, protocol).items()}


def random_hparams(
    algorithm: str, dataset: str | DatasetInfo, seed: int, protocol: str = "shiftbench"
) -> dict[str, Any]:
    """One draw of the random search; hparam `name` is drawn with `seed_hash(seed, name)`."""
    return {
        name: hp.sample(np.random.RandomState(seed_hash(seed, hp.seed_name or name)))
        for name, hp in hparam_space(algorithm, dataset, protocol).items()
    }


def resolve_hparams(
    algorithm: str,
    dataset: str | DatasetInfo,
    hparams_seed: int = 0,
    overrides: str | Mapping[str, Any] | None = None,
    protocol: str = "shiftbench",
) -> dict[str, Any]:
    """The configuration a trial runs with: defaults (seed 0) or a random draw, then overrides."""
    if hparams_seed < 0:
        raise ShiftbenchError(f"--hparams-seed must be >= 0, got {hparams_seed}")
    space = hparam_space(algorithm, dataset, protocol)
    if hparams_seed == 0:
        hparams = {name: hp.default for name, hp in space.items()}
    else:
        hparams = random_hparams(algorithm, dataset, hparams_seed, protocol)
    hparams.update(validate_overrides(space, overrides, algorithm))
    return hparams
