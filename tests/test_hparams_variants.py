"""A name means one algorithm: a random search never mixes variants of one method.

Variant switches are found generically (`HParam(variant=True)`), so a new algorithm's switch is
covered without editing this file; a searched categorical hparam must be declared a tuning knob
(`variant=False`) explicitly.
"""

from __future__ import annotations

import pytest

from shiftbench.algorithms import get_algorithm_class, list_algorithms
from shiftbench.hparams_registry import (
    DOMAINBED_ALGORITHMS,
    DatasetInfo,
    hparam_space,
    random_hparams,
    resolve_hparams,
)

DATASETS = [DatasetInfo("RotatedMNIST", (1, 28, 28), 10), DatasetInfo("DigitFive", (3, 32, 32), 10),
            DatasetInfo("PACS", (3, 224, 224), 7), DatasetInfo("DomainNet", (3, 224, 224), 345),
            DatasetInfo("DebugVector", (8,), 3)]


def _cases():
    for name in list_algorithms():
        for protocol in ("shiftbench", "domainbed"):
            if protocol == "domainbed" and name not in DOMAINBED_ALGORITHMS:
                continue
            yield name, protocol


@pytest.mark.parametrize("name,protocol", list(_cases()))
def test_random_search_never_changes_a_variant_switch(name, protocol):
    checked = 0
    for ds in DATASETS:
        space = hparam_space(name, ds, protocol)
        for key, hp in space.items():
            searched_categorical = hp.dist is not None and isinstance(hp.default, (str, bool))
            assert not (searched_categorical and hp.variant is not False), (
                f"{name}.{key} is a searched categorical hparam: declare it variant=True (and "
                f"fix it) or variant=False (a reviewed tuning knob)")
        switches = {k: hp.default for k, hp in space.items() if hp.variant}
        for seed in range(1, 21):
            drawn = random_hparams(name, ds, seed, protocol)
            assert {k: drawn[k] for k in switches} == switches, (name, ds.name, seed)
        checked += len(switches)
    if name in ("DANN", "CDANN", "CDAN", "MixStyle", "CRST", "EQRM", "SagNet"):
        assert checked > 0  # these have variants; the marker must not disappear


def test_dann_variants_are_fixed_and_reachable_by_override():
    space = get_algorithm_class("DANN").hparam_space(DATASETS[0])
    assert space["dann_scheme"].variant and space["dann_optimizer"].variant
    hp = resolve_hparams("DANN", DATASETS[0], 7, {"dann_scheme": "alternating"})
    assert hp["dann_scheme"] == "alternating" and hp["dann_optimizer"] == "adam"


@pytest.mark.parametrize("protocol", ["shiftbench", "domainbed"])
def test_a_sweep_of_20_configurations_never_mixes_variants(protocol):
    """`--n-hparams 20`: every job of one algorithm runs the same variant."""
    from shiftbench.sweeps.jobs import enumerate_jobs
    from shiftbench.sweeps.spec import SweepSpec

    algorithms = ["DANN", "CDANN", "MixStyle", "SagNet", "EQRM", "CAD"]
    if protocol == "domainbed":
        algorithms = ["DANN", "CDANN", "SagNet", "EQRM", "CAD", "MTL", "MLDG", "GroupDRO"]
    spec = SweepSpec(datasets=["RotatedMNIST"], algorithms=algorithms, n_hparams=20, n_trials=1,
                     protocol=protocol)
    spec.test_envs = {"RotatedMNIST": [[0]]}
    spec.validate()
    jobs = enumerate_jobs(spec, "/nonexistent/sweep")
    seen: dict[str, set] = {a: set() for a in algorithms}
    for job in jobs:
        a = job.args
        assert a.protocol == protocol
        space = hparam_space(a.algorithm, a.dataset, protocol)
        hp = resolve_hparams(a.algorithm, a.dataset, a.hparams_seed, a.hparams, protocol=protocol)
        seen[a.algorithm].add(tuple(sorted((k, hp[k]) for k, h in space.items() if h.variant)))
    assert {a: len(v) for a, v in seen.items()} == {a: 1 for a in algorithms}
    assert len({job.args.hparams_seed for job in jobs}) == 20
