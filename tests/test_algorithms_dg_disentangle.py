"""Mechanism tests for ADRMX (algorithms/dg_disentangle.py)."""

from __future__ import annotations

import math

import pytest
import torch
from dg_testing import batches, build

from shiftbench.algorithms.dg_disentangle import supcon_lambda_loss, supcon_lambda_loss_ordered
from shiftbench.hparams_registry import default_hparams

SMALL = {"mlp_width": 16, "mlp_depth": 3}


def _slow_supcon(f, y, d, lam=0.5, t=0.07):
    """The definition, anchor by anchor, in plain Python floats."""
    n = len(f)
    u = [row / row.norm() for row in f]
    total, skipped = 0.0, 0
    for i in range(n):
        others = [j for j in range(n) if j != i]
        e = {j: (lam if d[j] == d[i] else 1 - lam) * math.exp(float(u[i] @ u[j]) / t) for j in others}
        denom = sum(e.values()) + 1e-5
        positives = [j for j in e if y[j] == y[i]]
        if not positives:
            skipped += 1
            continue
        total -= sum(math.log(e[j] / denom + 1e-5) for j in positives) / len(positives)
    return total / (n - skipped + 1)


def test_supcon_lambda_matches_the_per_anchor_definition():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(9, 4, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 0, 2, 1, 0, 1, 0, 1])  # class 2 has a single sample: skipped anchor
    d = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    for lam in (0.5, 0.8):
        expected = _slow_supcon(f, y, d, lam)
        assert supcon_lambda_loss(f, y, d, lam).item() == pytest.approx(expected, rel=1e-10)
        assert supcon_lambda_loss_ordered(f, y, d, lam).item() == pytest.approx(expected, rel=1e-10)


def test_turns_alternate_as_domainbed_and_update_only_their_modules():
    alg = build("ADRMX", SMALL)
    kinds = []
    for step in range(6):
        disc = [p.detach().clone() for p in alg.discriminator.parameters()]
        gen = [p.detach().clone() for p in alg.featurizer_label.parameters()]
        out = alg.train_step(batches(seed=step))
        kind = "gen" if "loss_total" in out else "disc"
        kinds.append(kind)
        disc_moved = any(not torch.equal(a, b) for a, b in zip(disc, alg.discriminator.parameters()))
        gen_moved = any(not torch.equal(a, b) for a, b in zip(gen, alg.featurizer_label.parameters()))
        assert (disc_moved, gen_moved) == ((False, True) if kind == "gen" else (True, False))
    # updates 1, 2, ... with d_steps_per_g_step 2: t mod 3 < 2 is a discriminator turn
    assert kinds == ["disc", "gen", "disc", "disc", "gen", "disc"]


def test_generator_loss_is_the_weighted_sum_of_its_terms():
    hp = {**SMALL, "d_steps_per_g_step": 1, "cnt_lambda": 0.3, "dclf_lambda": 0.7, "disc_lambda": 0.2,
          "rmxd_lambda": 1.5}
    alg = build("ADRMX", hp)
    torch.manual_seed(3)
    out = alg.train_step(batches(seed=1))  # t = 1: 1 mod 2 = 1, not < 1: a generator turn
    expected = (out["loss_clf_int"] + out["loss_clf_fin"] + 0.7 * out["loss_dmn"] + 1.5 * out["loss_remixed"]
                + 0.3 * (out["loss_cnt_int"] + out["loss_cnt_final"]) - 0.2 * out["loss_disc"])
    assert out["loss_total"] == pytest.approx(expected, rel=1e-10)
    assert out["loss_remixed"] > 0 and out["loss_cnt_int"] > 0


@pytest.mark.parametrize("variant", ["paper", "domainbed"])
def test_remix_pairs(variant):
    alg = build("ADRMX", {**SMALL, "adrmx_variant": variant})
    y = torch.tensor([2, 2, 2, 0, 1, 0, 2, 1, 2, 2])
    d = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 1, 2])  # every class spans two domains or more
    counts = {k: int((y == k).sum()) for k in range(3)}
    torch.manual_seed(0)
    pairs = alg.remix_pairs(y, d)
    assert len(pairs) == 3
    for k, (a, b) in enumerate(pairs):
        assert a != b
        if variant == "paper":
            assert y[a] == k and y[b] == k and d[a] != d[b]
        else:  # DomainBed: positions within class k's list, used as batch positions
            assert a < counts[k] and b < counts[k]
    # the remix loss is the CE of the remixed features, summed over classes, divided by C
    mbs = batches(seed=4)
    yy = torch.cat([t for _, t in mbs])
    x = torch.cat([b for b, _ in mbs])
    dd = torch.arange(3).repeat_interleave(8)
    torch.manual_seed(5)
    pairs = alg.remix_pairs(yy, dd)
    with torch.no_grad():
        fl, fd = alg.featurizer_label(x), alg.featurizer_domain(x)
        remixed = [alg.classifier_label_1((fl - fd)[a:a + 1] + fd[b:b + 1]) for a, b in pairs]
        expected = sum(torch.nn.functional.cross_entropy(lg, yy[a:a + 1]).item()
                       for lg, (a, _) in zip(remixed, pairs)) / 3
    alg.hparams["d_steps_per_g_step"] = 0  # every update a generator turn
    torch.manual_seed(5)
    assert alg.train_step(mbs)["loss_remixed"] == pytest.approx(expected, rel=1e-10)


def test_protocol_defaults():
    for protocol in ("shiftbench", "domainbed"):
        hp = default_hparams("ADRMX", "PACS", protocol=protocol)
        assert (hp["lr"], hp["mlp_depth"], hp["disc_lambda"]) == (3e-5, 9, 0.75)
        assert default_hparams("ADRMX", "ColoredMNIST", protocol=protocol)["lr"] == 3e-3
    assert default_hparams("ADRMX", "PACS")["adrmx_variant"] == "paper"
    assert default_hparams("ADRMX", "PACS", protocol="domainbed")["adrmx_variant"] == "domainbed"
