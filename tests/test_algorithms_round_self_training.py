"""CBST / CRST / TPLD: thresholds, selection, regularisers, voting, schedule and checkpoints."""

from __future__ import annotations

import copy
import math
import sys

import pytest
import torch
import torch.nn.functional as F

from shiftbench.algorithms import create_algorithm
from shiftbench.algorithms.round_self_training import (
    bootstrap_loss,
    cbst_select,
    class_balanced_thresholds,
    knn_vote,
    lrent_labels,
    mrkld,
    phase_start,
    round_due,
)
from shiftbench.errors import ShiftbenchError
from shiftbench.hparams_registry import DatasetInfo

VEC = DatasetInfo("Debug", (8,), 3)


def test_thresholds_at_rank_q_within_each_predicted_class():
    conf = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.95, 0.4], dtype=torch.float64)
    pred = torch.tensor([0, 0, 0, 0, 0, 1, 1])
    lam = class_balanced_thresholds(conf, pred, 3, 0.4)
    # class 0: floor(0.4 * 5) = 2 -> 2nd largest 0.8; class 1: floor(0.8) = 0 -> 1; class 2 empty -> 1
    assert lam.tolist() == [0.8, 1.0, 1.0]
    lam = class_balanced_thresholds(conf, pred, 3, 0.5)
    assert lam.tolist() == [0.8, 0.95, 1.0]
    probs = torch.tensor([[c, (1 - c) / 2, (1 - c) / 2] for c in conf[:5]], dtype=torch.float64)
    labels, mask = cbst_select(probs, torch.tensor([0.8, 1.0, 1.0], dtype=torch.float64))
    assert mask.tolist() == [True, True, False, False, False] and labels[:2].tolist() == [0, 0]


def test_selection_uses_p_over_lambda():
    probs = torch.tensor([[0.6, 0.4, 0.0]], dtype=torch.float64)
    labels, mask = cbst_select(probs, torch.tensor([0.9, 0.3, 1.0], dtype=torch.float64))
    assert labels.tolist() == [1] and mask.tolist() == [True]  # 0.4/0.3 > 0.6/0.9, and >= 1


def test_class_balanced_selection_keeps_a_low_confidence_class_a_global_threshold_drops():
    g = torch.Generator().manual_seed(0)
    pred = torch.arange(3).repeat_interleave(100)
    conf = torch.cat([0.9 + 0.09 * torch.rand(100, generator=g), 0.9 + 0.09 * torch.rand(100, generator=g),
                      0.4 + 0.1 * torch.rand(100, generator=g)])  # class 2 is unconfident
    probs = torch.full((300, 3), 0.0)
    probs[torch.arange(300), pred] = conf
    probs[torch.arange(300), (pred + 1) % 3] = 1 - conf
    q = 0.2
    global_thr = conf.sort(descending=True).values[int(q * 300) - 1]
    global_share = (conf[pred == 2] >= global_thr).float().mean()
    _, mask = cbst_select(probs, class_balanced_thresholds(conf, pred, 3, q))
    assert global_share == 0.0
    assert [int(mask[pred == c].sum()) for c in range(3)] == [20, 20, 20]


def test_round_schedule():
    due = {s: round_due(s, 100, 0.5, 4) for s in range(100)}
    assert {s: k for s, k in due.items() if k is not None} == {50: 0, 63: 1, 76: 2, 89: 3}
    assert round_due(0, 10, 0.0, 1) == 0 and round_due(5, 10, 0.0, 1) is None


def test_progress_start_is_the_first_step_whose_progress_reaches_the_fraction():
    from shiftbench.algorithms.components import progress_start

    for total in range(1, 120):
        for fraction in (0.0, 0.1, 0.29, 0.3, 1 / 3, 0.5, 0.7, 0.999, 1.0):
            first = next(t for t in range(total + 1) if min(1.0, t / total) >= fraction)
            assert progress_start(total, fraction) == first, (total, fraction)
    assert progress_start(601, 0.5) == 301 and phase_start(601, 0.5) == 300  # the rules differ
    assert progress_start(0, 0.0) == 0 and progress_start(0, 0.5) == sys.maxsize  # progress stays 0


def test_crst_regularisers():
    p = torch.tensor([[0.7, 0.2, 0.1], [0.3, 0.3, 0.4]], dtype=torch.float64)
    u = torch.full_like(p, 1 / 3)
    kl = (u * (u.log() - p.log())).sum(1)
    assert torch.allclose(mrkld(p.log()), kl + math.log(3))
    lam = torch.tensor([0.5, 0.3, 0.9], dtype=torch.float64)
    soft, _ = lrent_labels(p, lam, 0.25)
    assert torch.allclose(soft.sum(1), torch.ones(2, dtype=torch.float64))
    sharp, _ = lrent_labels(p, lam, 1e-3)
    hard, _ = cbst_select(p, lam)
    assert torch.allclose(sharp, F.one_hot(hard, 3).double(), atol=1e-6)


def test_crst_rejects_unknown_regulariser():
    with pytest.raises(ShiftbenchError, match="crst_reg.*lrent, mrkld"):
        create_algorithm("CRST", (8,), 3, 1, {"crst_reg": "l2", "mlp_width": 16}, dataset=VEC)


def test_knn_vote_fills_from_confident_neighbours_only():
    bank_f = torch.tensor([[1.0, 0.0], [0.95, 0.05], [0.0, 1.0], [0.05, 0.95]])
    bank_s = torch.tensor([[1.2, 0.1, 0.0]] * 2 + [[0.1, 1.2, 0.0]] * 2)
    feats = torch.tensor([[1.0, 0.02], [0.02, 1.0]])
    own = torch.tensor([[0.95, 0.5, 0.1], [0.95, 0.5, 0.1]])  # both below every threshold
    label, score = knn_vote(feats, own, bank_f, bank_s, k=2, alpha=0.7)
    assert label[0] == 0 and score[0] == pytest.approx(0.7 * 0.95 + 0.3 * 1.2)  # >= 1: filled
    assert score[1] == pytest.approx(0.7 * 0.5 + 0.3 * 1.2) and score[1] < 1  # neighbours disagree
    label, score = knn_vote(feats, own, bank_f[:0], bank_s[:0], k=2, alpha=0.7)
    assert (score < 1).all()  # nobody to vote: nothing is filled


def test_bootstrap_loss_with_beta_one_is_ce_shifted_by_log_lambda():
    logits = torch.randn(4, 3, dtype=torch.float64)
    log_p = F.log_softmax(logits, 1)
    y = torch.tensor([0, 1, 2, 0])
    lam = torch.tensor([0.5, 0.8, 0.9], dtype=torch.float64)
    out = bootstrap_loss(log_p, F.one_hot(y, 3).double(), torch.rand(4, 3, dtype=torch.float64), lam, 1.0)
    assert torch.allclose(out, F.cross_entropy(logits, y, reduction="none") + lam[y].log())


def _run(name, steps=12, **hp):
    torch.manual_seed(0)
    hparams = {"mlp_width": 16, "mlp_depth": 3, **hp}
    alg = create_algorithm(name, (8,), 3, 1, hparams, dataset=VEC, setting="uda", total_steps=steps)
    g = torch.Generator().manual_seed(1)
    means = torch.randn(3, 8, generator=g) * 3
    pool_y = torch.randint(3, (120,), generator=g)
    pool = means[pool_y] + torch.randn(120, 8, generator=g) + 0.5
    log = []
    for _ in range(steps):
        log.append(alg.on_round(lambda: iter(pool.split(50))))
        y = torch.randint(3, (16,), generator=g)
        xs = means[y] + torch.randn(16, 8, generator=g)
        log.append(alg.train_step([(xs, y)], [pool[torch.randint(120, (16,), generator=g)]]))
    return alg, log


@pytest.mark.parametrize("name,extra", [("CBST", {}), ("CRST", {"crst_reg": "mrkld"}),
                                        ("CRST", {"crst_reg": "lrent"})])
def test_rounds_run_fix_thresholds_and_checkpoint(name, extra):
    alg, log = _run(name, cbst_rounds=3, **extra)
    qs = [v["round_q"] for v in log if "round_q" in v]
    assert qs == pytest.approx([0.2, 0.25, 0.3])  # q grows per round
    assert int(alg.round_index) == 2 and (alg.thresholds <= 1).all()
    alg.train()
    assert alg.network.training and not alg.snapshot.training  # the labeller stays in eval mode
    assert any("selected" in v for v in log)
    fresh = create_algorithm(name, (8,), 3, 1, {"mlp_width": 16, "mlp_depth": 3, "cbst_rounds": 3, **extra},
                             dataset=VEC)
    fresh.load_full_state(copy.deepcopy(alg.full_state()))
    assert torch.equal(fresh.thresholds, alg.thresholds)
    x = torch.randn(5, 8)
    assert torch.equal(fresh.snapshot(x), alg.snapshot(x))


def test_tpld_two_phases():
    alg, log = _run("TPLD", steps=14, cbst_rounds=3, tpld_hard_rounds=1, tpld_bank_size=64)
    rounds = [v for v in log if "round_q" in v]
    assert len(rounds) == 3
    assert all("densified_share" in r for r in rounds[:2]) and "easy_threshold" in rounds[2]
    assert all(r["densified_share"] >= r["confident_share"] for r in rounds[:2])
    phase2 = [v for v in log if "easy" in v]
    assert phase2 and all("adv_g" in v for v in phase2)
    assert 0 < int(alg.bank_count) <= 64


def test_tpld_steps_its_discriminator_after_the_network_in_phase_2_only(monkeypatch):
    from shiftbench.algorithms.round_self_training import TPLD

    calls = []
    original = TPLD.discriminator_step

    def spy(self, easy, hard):
        probe = next(self.network.parameters())
        stepped = not torch.equal(probe, self.before)  # the network's step came first
        calls.append((self.hard_phase(), len(easy) + len(hard), stepped,
                      easy.requires_grad or hard.requires_grad))
        original(self, easy, hard)

    def update(self, minibatches, unlabeled=None):
        self.before = next(self.network.parameters()).detach().clone()
        return original_update(self, minibatches, unlabeled)

    original_update = TPLD.update
    monkeypatch.setattr(TPLD, "discriminator_step", spy)
    monkeypatch.setattr(TPLD, "update", update)
    _, log = _run("TPLD", steps=14, cbst_rounds=3, tpld_hard_rounds=1, tpld_bank_size=64)
    phase2 = [v for v in log if "easy" in v]
    assert calls and len(calls) == len(phase2)  # one step per phase-2 update, none before
    assert all(hard and n == 16 and stepped and not grad for hard, n, stepped, grad in calls)


@pytest.mark.parametrize("name,hp", [
    ("CBST", {"cbst_source_fraction": 0.3, "cbst_rounds": 2}),
    ("TPLD", {"cbst_source_fraction": 0.3, "cbst_rounds": 2, "tpld_hard_rounds": 1}),
    ("SHOT", {"shot_source_fraction": 0.3, "shot_rounds": 2}),
])
def test_interrupted_round_training_resumes_identically(tmp_path, monkeypatch, name, hp):
    """Snapshot, thresholds, bank and centroids checkpoint: rounds start at steps 3 and 6, the
    crash is at step 6 and the run resumes at step 5, inside the first round."""
    import json

    from helpers import stable_records

    from shiftbench.algorithms.base import Algorithm
    from shiftbench.trainer import TrainArgs, train

    def args(out):
        return TrainArgs(dataset="DebugVector", algorithm=name, test_envs=[0], task="uda", steps=9,
                         checkpoint_freq=2, output_dir=str(tmp_path / out),
                         hparams=json.dumps({"batch_size": 8, "mlp_width": 16, **hp}))

    quiet = {"log": lambda m: None, "progress": False}
    train(args("reference"), **quiet)
    original, calls = Algorithm.train_step, {"n": 0}

    def crash_at_7th(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 7:
            raise RuntimeError("simulated crash")
        return original(self, *a, **k)

    monkeypatch.setattr(Algorithm, "train_step", crash_at_7th)
    with pytest.raises(RuntimeError, match="simulated"):
        train(args("crashed"), **quiet)
    monkeypatch.setattr(Algorithm, "train_step", original)
    train(args("crashed"), **quiet)
    assert stable_records(tmp_path / "crashed") == stable_records(tmp_path / "reference")


@pytest.mark.parametrize("name", ["ADDA", "GAM", "CBST", "CRST", "TPLD", "SHOT", "SegGAM", "SegCBST",
                                  "SegCRST", "SegCRSTLRENT", "SegTPLD"])
def test_methods_with_phases_declare_one_phase_schedule(name):
    from shiftbench.algorithms import get_algorithm_class
    from shiftbench.algorithms.components import PhaseSchedule

    cls = get_algorithm_class(name)
    seg = "segmentation" in cls.TASK_TYPES
    ds = DatasetInfo("Tiny", (3, 32, 64), 4) if seg else VEC
    assert isinstance(cls.PHASES, PhaseSchedule)
    space = cls.hparam_space(ds)
    assert cls.PHASES.source_fraction in space
    assert cls.PHASES.rounds is None or cls.PHASES.rounds in space
    hparams = {"seg_width": 4} if seg else {"mlp_width": 16}
    alg = create_algorithm(name, ds.input_shape, ds.num_classes, 1, hparams, dataset=ds, setting="uda",
                           total_steps=10)
    switches = hasattr(alg, "start_adaptation")  # a source network copied at the switch
    phases = [cls.PHASES.in_source_phase(alg)]
    assert not (switches and cls.PHASES.adapting(alg))
    alg.num_updates.fill_(cls.PHASES.start(alg))
    phases.append(cls.PHASES.in_source_phase(alg))
    assert phases == [True, False] and cls.PHASES.round_starting(alg) == 0
    assert not switches or (cls.PHASES.adapting(alg) and bool(alg.adapting))
