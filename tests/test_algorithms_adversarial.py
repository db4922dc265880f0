"""Mechanism tests for DANN and CDANN (gradient reversal, schedule, alternation, label use)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from shiftbench.algorithms.base import create_algorithm
from shiftbench.algorithms.components import dann_schedule, grad_reverse
from shiftbench.datasets.debug import DebugVector
from shiftbench.hparams_registry import DatasetInfo
from shiftbench.trainer import TrainArgs, train

VEC = DatasetInfo("Debug", (6,), 3)
IMG = DatasetInfo("Debug", (3, 16, 16), 3)


def _make(name, task="dg", ds=VEC, seed=0, **hp):
    torch.manual_seed(seed)
    base = {"mlp_width": 16, "mlp_depth": 3, "disc_width": 16, "lr_g": 1e-3, "lr_d": 1e-3}
    base.update(hp)
    alg = create_algorithm(name, ds.input_shape, ds.num_classes, 2,
                           base if name != "ERM" else {"mlp_width": 16, "mlp_depth": 3}, dataset=ds,
                           setting=task, total_steps=10)
    return alg


def _data(ds=VEC, n=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    mbs = [(torch.randn((n, *ds.input_shape), generator=g), torch.randint(3, (n,), generator=g))
           for _ in range(2)]
    return mbs, [torch.randn((n, *ds.input_shape), generator=g)]


def _params(module):
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def test_schedule_values():
    assert dann_schedule(0.0) == 0.0
    assert math.isclose(dann_schedule(1.0), 2 / (1 + math.exp(-10)) - 1)
    assert dann_schedule(1.0) > 0.9999
    vals = [dann_schedule(p / 10) for p in range(11)]
    assert all(a < b for a, b in zip(vals, vals[1:]))
    alg = _make("DANN", **{"lambda": 2.0})
    assert alg.reversal_coeff() == 0.0  # progress 0
    alg.num_updates.fill_(10)
    assert math.isclose(alg.reversal_coeff(), 2.0 * dann_schedule(1.0))


@pytest.mark.parametrize("name", ["DANN", "CDANN"])
def test_reversal_flips_featurizer_gradient_only(name):
    alg = _make(name)
    (x0, y0), (x1, y1) = _data()[0]
    x, y = torch.cat([x0, x1]), torch.cat([y0, y1])
    d = torch.cat([torch.zeros(8), torch.ones(8)]).long()
    grads = []
    for reverse in (False, True):
        alg.zero_grad(set_to_none=True)
        z = alg.featurizer(x)
        loss = alg.disc_loss(grad_reverse(z, 1.0) if reverse else z, d, y, z[:, :3])
        loss.backward()
        grads.append(({k: p.grad.clone() for k, p in alg.featurizer.named_parameters()},
                      {k: p.grad.clone() for k, p in alg.discriminator.named_parameters()}))
    (f_plain, d_plain), (f_rev, d_rev) = grads
    for k in f_plain:
        assert torch.allclose(f_rev[k], -f_plain[k]) and f_plain[k].abs().sum() > 0
    for k in d_plain:
        assert torch.equal(d_rev[k], d_plain[k])


@pytest.mark.parametrize("scheme", ["reversal", "alternating"])
@pytest.mark.parametrize("task", ["dg", "uda"])
@pytest.mark.parametrize("name", ["DANN", "CDANN"])
@pytest.mark.parametrize("ds", [VEC, IMG], ids=["vector", "image"])
def test_lambda_zero_equals_erm(scheme, task, name, ds):
    mbs, unl = _data(ds)
    erm = _make("ERM", task=task, ds=ds)
    alg = _make(name, task=task, ds=ds, dann_scheme=scheme, beta1=0.9, **{"lambda": 0.0})
    erm.update(mbs, unl)
    alg.update(mbs, unl)
    # Same gradients on featurizer + classifier (exactly in dg) and the same parameters after
    # the step up to Adam's float rounding (DANN's Adam uses beta2 = 0.9 as DomainBed).
    ref = {k: (p.grad, p.detach()) for k, p in erm.network.named_parameters()}
    got = {**{f"0.{k}": (p.grad, p.detach()) for k, p in alg.featurizer.named_parameters()},
           **{f"1.{k}": (p.grad, p.detach()) for k, p in alg.classifier.named_parameters()}}
    assert ref.keys() == got.keys()
    for k in ref:
        if task == "dg":
            assert torch.equal(ref[k][0], got[k][0]), k
        else:  # a larger joint batch may change float summation order
            assert torch.allclose(ref[k][0], got[k][0], rtol=1e-5, atol=1e-7), k
        assert torch.allclose(ref[k][1], got[k][1], rtol=0, atol=1e-7), k


def test_alternating_updates_d_or_g_only():
    alg = _make("DANN", dann_scheme="alternating", d_steps_per_g_step=2)
    mbs, _ = _data()
    kinds = []
    for _ in range(6):
        g0, d0 = _params(torch.nn.ModuleList([alg.featurizer, alg.classifier])), _params(alg.discriminator)
        alg.train_step(mbs)
        g1, d1 = _params(torch.nn.ModuleList([alg.featurizer, alg.classifier])), _params(alg.discriminator)
        g_moved = any(not torch.equal(g0[k], g1[k]) for k in g0)
        d_moved = any(not torch.equal(d0[k], d1[k]) for k in d0)
        assert g_moved != d_moved
        kinds.append("G" if g_moved else "D")
    # DomainBed's counter c = 1, 2, ...: a D-step when c mod (k + 1) < k
    assert kinds == ["D", "G", "D", "D", "G", "D"]


def test_uda_discriminator_is_source_vs_target():
    alg = _make("DANN", task="uda")
    assert alg.discriminator[-1].out_features == 2
    dg = _make("DANN", task="dg")
    assert dg.discriminator[-1].out_features == 2  # two source domains
    mbs, unl = _data()
    out = alg.train_step(mbs, unl)
    assert out["grl_coeff"] == 0.0 and math.isfinite(out["disc_loss"])


def test_uda_never_sees_target_labels(tmp_path, monkeypatch):
    """Permuting the target domain's labels leaves the trained model bit-identical."""
    states = []
    original = DebugVector.__init__
    for permute in (False, True):
        def init(self, root, test_envs, hparams, _permute=permute):
            original(self, root, test_envs, hparams)
            if _permute:
                env = self.datasets[0]
                env.y = env.y[torch.randperm(len(env.y), generator=torch.Generator().manual_seed(3))]
        monkeypatch.setattr(DebugVector, "__init__", init)
        out = tmp_path / f"p{permute}"
        train(TrainArgs(dataset="DebugVector", algorithm="CDANN", test_envs=[0], task="uda", steps=4,
                        checkpoint_freq=4, output_dir=str(out),
                        hparams='{"batch_size": 8, "mlp_width": 16, "disc_width": 16}'),
              log=lambda m: None, progress=False)
        states.append(torch.load(out / "model.pkl", weights_only=False)["model_dict"])
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


@pytest.mark.parametrize("scheme", ["reversal", "alternating"])
def test_gradient_penalty_runs_and_d_steps_leave_featurizer(scheme):
    alg = _make("CDANN", dann_scheme=scheme, grad_penalty=1.0)
    mbs, _ = _data()
    for _ in range(3):
        before = _params(alg.featurizer)
        out = alg.train_step(mbs)
        assert all(math.isfinite(v) for v in out.values())
        if "gen_disc_loss" not in out and scheme == "alternating":
            assert all(torch.equal(before[k], v) for k, v in _params(alg.featurizer).items())


def test_sgd_option_anneals_the_learning_rate():
    alg = _make("DANN", dann_optimizer="sgd", lr_g=0.01, lr_d=0.02)
    assert isinstance(alg.gen_opt, torch.optim.SGD) and alg.gen_opt.param_groups[0]["momentum"] == 0.9
    mbs, _ = _data()
    alg.num_updates.fill_(5)  # progress 0.5
    alg.train_step(mbs)
    assert math.isclose(alg.gen_opt.param_groups[0]["lr"], 0.01 * 6 ** -0.75)
    assert math.isclose(alg.disc_opt.param_groups[0]["lr"], 0.02 * 6 ** -0.75)
    with pytest.raises(Exception, match="dann_optimizer"):
        _make("DANN", dann_optimizer="rmsprop")


def test_sgd_checkpoint_from_before_the_base_schedule_resumes_exactly():
    """DANN's SGD was annealed by DANN itself until it used the base's `dann` schedule, so its
    checkpoints keep no `initial_lr`: resumed, they anneal from lr_g / lr_d as before."""
    mbs, _ = _data()
    hp = {"dann_optimizer": "sgd", "lr_g": 0.01, "lr_d": 0.02}
    ref = _make("DANN", **hp)
    for _ in range(3):
        ref.train_step(mbs)
    state = copy.deepcopy(ref.full_state())
    for opt_state in state["optimizers"].values():  # the old format
        for group in opt_state["param_groups"]:
            del group["initial_lr"]
    resumed = _make("DANN", seed=1, **hp)
    resumed.load_full_state(state)
    for _ in range(3):
        assert ref.train_step(mbs) == resumed.train_step(mbs)
    assert resumed.gen_opt.param_groups[0]["initial_lr"] == 0.01
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(),
                                                 resumed.state_dict().values()))


def test_domainbed_protocol_gives_domainbeds_dann():
    from shiftbench.hparams_registry import default_hparams, random_hparams

    mnist = DatasetInfo("RotatedMNIST", (1, 28, 28), 10)
    pacs = DatasetInfo("PACS", (3, 224, 224), 7)
    db = default_hparams("DANN", mnist, protocol="domainbed")
    assert db["dann_scheme"] == "alternating" and db["dann_optimizer"] == "adam"
    assert (db["lr_g"], db["lr_d"], db["beta1"], db["d_steps_per_g_step"]) == (1e-3, 1e-3, 0.5, 1)
    assert default_hparams("DANN", mnist)["dann_scheme"] == "reversal"
    for seed in range(1, 15):
        r = random_hparams("CDANN", pacs, seed, protocol="domainbed")
        assert r["dann_scheme"] == "alternating" and r["beta1"] in (0.0, 0.5)
        assert 10 ** -5 <= r["lr_g"] <= 10 ** -3.5 and 10 ** -6 <= r["weight_decay_g"] <= 10 ** -2
        assert 1 <= r["d_steps_per_g_step"] <= 7 and 10 ** -2 <= r["grad_penalty"] <= 10
    alg = create_algorithm("DANN", (6,), 3, 2, {"mlp_width": 16}, dataset=VEC, protocol="domainbed")
    assert alg.gen_opt.defaults["betas"] == (0.5, 0.9)


@pytest.mark.parametrize("name", ["ADDA", "GAM"])
def test_two_phase_adversaries_share_one_setup(name):
    """S's optimizer holds every parameter but T's and D's; T and D get their own Adams."""
    from shiftbench.algorithms.adversarial import TwoPhaseAdversary

    torch.manual_seed(0)
    hp = {"mlp_width": 8, "beta1": 0.9, "lr_d": 1e-3, "lr_target": 3e-4}
    alg = create_algorithm(name, (5,), 3, 1, hp, dataset=None, setting="uda", total_steps=4)
    assert isinstance(alg, TwoPhaseAdversary)
    source, target = alg.pair()
    held = {k: {id(p) for g in opt.param_groups for p in g["params"]}
            for k, opt in alg.optimizers().items()}
    assert held["target_optimizer"] == {id(p) for p in target.parameters()}
    assert held["disc_optimizer"] == {id(p) for p in alg.adversary().parameters()}
    assert held["optimizer"] == ({id(p) for p in alg.parameters()}
                                 - held["target_optimizer"] - held["disc_optimizer"])
    assert {id(p) for p in source.parameters()} <= held["optimizer"]
    assert alg.target_optimizer.defaults["betas"] == alg.disc_optimizer.defaults["betas"] == (0.9, 0.999)
    assert (alg.target_optimizer.defaults["lr"], alg.disc_optimizer.defaults["lr"]) == (3e-4, 1e-3)
