"""Every algorithm of DomainBed's ALGORITHMS list is registered, listed and runs under its protocol."""

from __future__ import annotations

import json

import pytest
import torch

from shiftbench.algorithms import create_algorithm
from shiftbench.cli import main
from shiftbench.hparams_registry import DOMAINBED_ALGORITHMS, default_hparams

# DomainBed's `domainbed/algorithms.py` ALGORITHMS, current main (commit b93c22a), in its order.
DOMAINBED = ["ERM", "ERMPlusPlus", "Fish", "IRM", "GroupDRO", "Mixup", "MLDG", "CORAL", "MMD", "DANN",
             "CDANN", "MTL", "SagNet", "ARM", "VREx", "RSC", "SD", "ANDMask", "SANDMask", "IGA", "SelfReg",
             "Fishr", "TRM", "IB_ERM", "IB_IRM", "CAD", "CondCAD", "Transfer", "CausIRL_CORAL", "CausIRL_MMD",
             "EQRM", "RDM", "ADRMX", "URM"]
NINE = ["ARM", "Fishr", "TRM", "IB_ERM", "IB_IRM", "RDM", "ADRMX", "URM", "ERMPlusPlus"]


def test_shiftbench_list_algorithms_shows_every_domainbed_name(capsys):
    assert main(["list", "algorithms", "--format", "json"]) == 0
    listed = {row["algorithm"] for row in json.loads(capsys.readouterr().out)}
    assert [n for n in DOMAINBED if n not in listed] == []
    assert list(DOMAINBED_ALGORITHMS) == DOMAINBED


@pytest.mark.parametrize("name", NINE)
def test_runs_with_domainbed_defaults_on_28x28_images(name):
    hp = default_hparams(name, "ColoredMNIST", protocol="domainbed")
    hp["batch_size"] = 4
    if name == "TRM":
        hp["iters"] = 0  # reach the transfer-risk phase within the three updates
    torch.manual_seed(0)
    alg = create_algorithm(name, (2, 28, 28), 2, 2, hp, setting="dg", total_steps=3)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        mbs = [(torch.rand(4, 2, 28, 28, generator=g), torch.tensor([0, 1, 0, 1])) for _ in range(2)]
        values = alg.train_step(mbs)
        assert values and all(torch.isfinite(torch.tensor(v)) for v in values.values())
    alg.eval()
    with torch.no_grad():
        assert alg.predict(mbs[0][0]).shape == (4, 2)
