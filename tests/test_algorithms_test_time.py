"""BN re-estimation, Tent and SHOT: mechanism invariants, and the trainer's TTA modes."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from shiftbench.algorithms import create_algorithm
from shiftbench.algorithms.test_time import Tent, batch_norms, using_batch_statistics
from shiftbench.hparams_registry import DatasetInfo
from shiftbench.trainer import TrainArgs, train

VEC = DatasetInfo("Debug", (8,), 3)
QUIET = {"log": lambda m: None, "progress": False}


def _alg(name, task="tta", steps=20, **hp):
    torch.manual_seed(0)
    hparams = {"batch_size": 16, "mlp_width": 16, "mlp_depth": 3, **hp}
    alg = create_algorithm(name, (8,), 3, 1, hparams, dataset=VEC, setting=task, total_steps=steps)
    return alg


def _train_source(alg, n=5):
    g = torch.Generator().manual_seed(1)
    for _ in range(n):
        alg.train_step([(torch.randn(16, 8, generator=g), torch.randint(3, (16,), generator=g))])
    alg.eval()


def test_bn_adapt_is_invariant_to_an_affine_shift_of_the_test_batch():
    alg = _alg("BNAdapt")
    _train_source(alg)
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(2))
    shifted = 2.5 * x + torch.linspace(-3, 3, 8)  # positive scale: every BN input is affinely shifted
    stats = [(bn.running_mean.clone(), bn.running_var.clone()) for bn in batch_norms(alg)]
    assert torch.allclose(alg.adapt(x), alg.adapt(shifted), atol=1e-3)
    with torch.no_grad():
        assert not torch.allclose(alg.predict(x), alg.predict(shifted), atol=1e-1)
    for bn, (m, v) in zip(batch_norms(alg), stats):
        assert torch.equal(bn.running_mean, m) and torch.equal(bn.running_var, v)
    assert not alg.training and not any(bn.training for bn in batch_norms(alg))  # modes restored


def test_using_batch_statistics_normalises_with_the_batch_moments():
    bn = torch.nn.BatchNorm1d(3).eval()
    bn.running_mean.fill_(5.0)
    x = torch.randn(50, 3, dtype=torch.float64)
    bn = bn.double()
    with using_batch_statistics(bn):
        out = bn(x)
    expected = (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + bn.eps)
    assert torch.allclose(out, expected) and float(bn.running_mean[0]) == 5.0


def test_tent_updates_only_bn_affine_parameters_and_reset_restores():
    alg = _alg("Tent", tent_lr=1e-2)
    _train_source(alg)
    x = torch.randn(32, 8, generator=torch.Generator().manual_seed(3)) * 2 + 1
    before = copy.deepcopy(alg.state_dict())
    with torch.no_grad(), using_batch_statistics(alg.network):
        expected = alg.network(x)
    logits = alg.adapt(x)
    assert torch.allclose(logits, expected, atol=1e-6)  # logits of the pre-update forward
    affine = {k for k, v in alg.state_dict(keep_vars=True).items()
              if any(v is q for q in alg.bn_affine_parameters())}
    after = alg.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= affine | {"num_updates"}
    assert all(s["step"] == 1 for s in alg.tent_optimizer.state_dict()["state"].values())  # 1 step
    with torch.no_grad():
        h_before = -(F.softmax(expected, 1) * F.log_softmax(expected, 1)).sum(1).mean()
        with using_batch_statistics(alg.network):
            out = alg.network(x)
        h_after = -(F.softmax(out, 1) * F.log_softmax(out, 1)).sum(1).mean()
    assert h_after < h_before  # entropy went down on this batch
    alg.reset_adaptation()
    restored = alg.state_dict()
    assert all(torch.equal(before[k], restored[k]) for k in before)
    assert alg.tent_optimizer.state_dict()["state"] == {}


def test_trainer_tta_modes_are_recorded_and_episodic_resets(tmp_path, monkeypatch):
    calls = []
    original = Tent.reset_adaptation
    monkeypatch.setattr(Tent, "reset_adaptation", lambda self: (calls.append(1), original(self)))
    counts = {}
    for mode in ("episodic", "continual"):
        calls.clear()
        records = train(TrainArgs(dataset="DebugVector", algorithm="Tent", test_envs=[0], task="tta",
                                  steps=2, tta_mode=mode, output_dir=str(tmp_path / mode),
                                  hparams='{"batch_size": 8, "mlp_width": 16}'), **QUIET)
        assert all(r["tta_mode"] == mode for r in records)
        counts[mode] = len(calls)
    assert counts["episodic"] > 0 and counts["continual"] == 0


# ---- SHOT -----------------------------------------------------------------------------------

def test_shot_centroids_relabel_noisy_predictions_by_cluster():
    alg = _alg("SHOT", task="uda")
    g = torch.Generator().manual_seed(0)
    centres = torch.eye(3, 257) * 5
    z = torch.cat([centres[c] + 0.3 * torch.randn(20, 257, generator=g) for c in range(3)])
    z = F.normalize(z, dim=1)
    truth = torch.arange(3).repeat_interleave(20)
    probs = F.one_hot(truth, 3).float() * 0.6 + 0.4 / 3
    flip = torch.arange(60) % 5 == 0  # 20% of predictions point at the wrong class
    probs[flip] = probs[flip].roll(1, dims=1)
    alg.fit_centroids(z, probs)
    assert torch.equal(alg.assign(z), truth) and bool(alg.valid.all())


def test_shot_target_phase_reads_no_source_data_and_freezes_the_head():
    alg = _alg("SHOT", task="uda", steps=4, shot_rounds=2)
    g = torch.Generator().manual_seed(0)
    xt = [torch.randn(16, 8, generator=g)]
    src = [(torch.randn(16, 8, generator=g), torch.randint(3, (16,), generator=g))]
    for _ in range(2):  # source phase
        assert alg.on_round(lambda: iter(xt)) == {}
        alg.train_step(src, xt)
    head = copy.deepcopy(alg.classifier.state_dict())
    nan_src = [(torch.full((16, 8), float("nan")), torch.zeros(16, dtype=torch.long))]
    stats = alg.on_round(lambda: iter(xt))
    assert "shot_agreement" in stats and bool(alg.valid.any())
    values = alg.train_step(nan_src, xt)
    assert values["pl_loss"] > 0
    assert all(torch.isfinite(p).all() for p in alg.parameters())  # source batch never used
    assert all(torch.equal(v, alg.classifier.state_dict()[k]) for k, v in head.items())

