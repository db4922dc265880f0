"""Source→target tasks: `source_envs` decides which domains are trained on; the others are
evaluated and recorded, never trained on; target labels reach only settings entitled to them."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from shiftbench.algorithms import ALGORITHM_REGISTRY
from shiftbench.algorithms.erm import ERM
from shiftbench.cli import main
from shiftbench.datasets.base import DATASETS, MultiDomainDataset, TensorDomain
from shiftbench.errors import ShiftbenchError
from shiftbench.sweeps.jobs import enumerate_jobs, job_hash, job_identity
from shiftbench.sweeps.spec import SpecError, SweepSpec
from shiftbench.trainer import TrainArgs, train

QUIET = {"log": lambda msg: None, "progress": False}
MARK = 7  # feature 7 of every input holds its domain's index (NaN for the poisoned domain)
INDEX = 6  # feature 6 holds the example's index within its domain


class Marked(MultiDomainDataset):
    """4 domains of 8-d vectors, 3 classes; domain 2 is all NaN (poison), feature 7 = domain."""

    ENVIRONMENTS = ("a", "b", "poison", "d")
    INPUT_SHAPE = (8,)
    NUM_CLASSES = 3
    N_STEPS = 4
    CHECKPOINT_FREQ = 2

    def __init__(self, root, test_envs, hparams):
        super().__init__(root, test_envs, hparams)
        g = torch.Generator().manual_seed(0)
        self.datasets = []
        for e in range(4):
            y = torch.arange(60) % 3
            x = torch.randn((60, 8), generator=g) + y[:, None]
            x[:, MARK] = float(e)
            x[:, INDEX] = torch.arange(60, dtype=torch.float)
            if e == 2:
                x[:] = float("nan")
            self.datasets.append(TensorDomain(x, y, name=self.ENVIRONMENTS[e]))


class Spy(ERM):
    """ERM that records the domain marks of every input `update` receives."""

    SETTINGS = ("dg", "uda", "ssda", "sda")
    seen: list[dict] = []

    def update(self, minibatches, unlabeled=None):
        Spy.seen.append({
            "num_domains": self.num_domains,
            "labeled": [sorted(set(x[:, MARK].tolist())) for x, _ in minibatches],
            "unlabeled": [sorted(set(x[:, MARK].tolist())) for x in unlabeled or []],
            "finite": all(torch.isfinite(x).all() for x, _ in minibatches)
            and all(torch.isfinite(x).all() for x in unlabeled or []),
        })
        return super().update(minibatches, unlabeled)


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(DATASETS._items, "Marked", Marked)
    monkeypatch.setitem(ALGORITHM_REGISTRY._items, "Spy", Spy)
    Spy.seen = []
    yield


def _args(tmp_path, **kw) -> TrainArgs:
    base = dict(dataset="Marked", algorithm="Spy", source_envs=[0], test_envs=[1], steps=4,
                checkpoint_freq=2, output_dir=str(tmp_path / "o"), hparams='{"batch_size": 8}',
                target_shots=2)
    base.update(kw)
    return TrainArgs(**base)


@pytest.mark.parametrize("task", ["dg", "uda", "ssda", "sda"])
def test_only_source_domain_reaches_the_algorithm(tmp_path, registered, task):
    records = train(_args(tmp_path, task=task), **QUIET)
    assert len(Spy.seen) == 4
    few_shot = task in ("ssda", "sda")
    unlabeled = task in ("uda", "ssda")
    for call in Spy.seen:
        assert call["finite"], "an input of the poisoned domain reached the algorithm"
        assert call["num_domains"] == 1
        # labeled batches: the source domain, then (few-shot settings only) the target's shots
        assert call["labeled"] == [[0.0]] + ([[1.0]] if few_shot else [])
        assert call["unlabeled"] == ([[1.0]] if unlabeled else [])
    last = records[-1]
    assert last["args"]["source_envs"] == [0]
    assert last["unused_envs"] == [2, 3]
    # unused domains are evaluated on both splits, like a test domain; the source's in-split is not
    for env in (2, 3):
        assert f"env{env}_in_acc" in last and f"env{env}_out_acc" in last
    assert "env0_in_acc" not in last and "env0_out_acc" in last
    assert "env1_in_acc" in last
    assert all(torch.isfinite(p).all() for p in _model_params(tmp_path))


def _model_params(tmp_path):
    state = torch.load(tmp_path / "o" / "model.pkl", weights_only=True)
    assert state["model_num_domains"] == 1
    return list(state["model_dict"].values())


def test_default_trains_on_all_but_test_envs(tmp_path, registered):
    # the poisoned domain is held out, every other domain is a source
    records = train(_args(tmp_path, source_envs=None, test_envs=[2], hparams='{"batch_size": 4}'),
                    **QUIET)
    assert {tuple(map(tuple, c["labeled"])) for c in Spy.seen} == {((0.0,), (1.0,), (3.0,))}
    assert all(c["num_domains"] == 3 for c in Spy.seen)
    assert "unused_envs" not in records[-1] and records[-1]["args"]["source_envs"] is None


def test_names_resolve_and_bad_sources_are_refused(tmp_path, registered):
    records = train(_args(tmp_path, source_envs=["a", "d"], test_envs=["b"]), **QUIET)
    assert records[-1]["args"]["source_envs"] == [0, 3] and records[-1]["unused_envs"] == [2]
    with pytest.raises(ShiftbenchError, match=r"both --source-envs \[0, 1\] and --test-envs \[1\]"):
        train(_args(tmp_path, source_envs=[0, 1], output_dir=str(tmp_path / "x")), **QUIET)
    with pytest.raises(ShiftbenchError, match="needs at least one"):
        train(_args(tmp_path, source_envs=[], output_dir=str(tmp_path / "y")), **QUIET)
    with pytest.raises(ShiftbenchError, match="did you mean 'poison'"):
        train(_args(tmp_path, source_envs=["poisn"], output_dir=str(tmp_path / "z")), **QUIET)
    assert not (tmp_path / "x").exists() and not (tmp_path / "z").exists()


def test_cli_source_envs(tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(["train", "--dataset", "DebugVector", "--algorithm", "ERM", "--source-envs", "0",
                 "--test-envs", "1", "--task", "uda", "--steps", "2", "--output-dir", str(out),
                 "--hparams", '{"batch_size": 8}', "--no-progress"])
    assert code == 0
    last = json.loads((out / "results.jsonl").read_text().splitlines()[-1])
    assert last["args"]["source_envs"] == [0] and last["unused_envs"] == [2]
    assert last["args"]["task"] == "uda" and "env2_in_acc" in last
    code = main(["train", "--dataset", "DebugVector", "--source-envs", "1", "--test-envs", "1",
                 "--output-dir", str(tmp_path / "bad")])
    assert code == 2 and "both --source-envs" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_identity_counts_source_envs_and_protocol_only_when_given():
    base = TrainArgs(dataset="DebugVector", test_envs=[0], steps=3)
    assert "source_envs" not in job_identity(base) and "protocol" not in job_identity(base)
    sourced = TrainArgs(dataset="DebugVector", test_envs=[0], steps=3, source_envs=[1])
    assert job_identity(sourced)["source_envs"] == [1]
    assert job_hash(sourced) != job_hash(base)
    domainbed = TrainArgs(dataset="DebugVector", test_envs=[0], steps=3, protocol="domainbed")
    assert job_identity(domainbed)["protocol"] == "domainbed"
    assert len({job_hash(base), job_hash(sourced), job_hash(domainbed)}) == 3


def test_sweep_source_envs_enumerate_targets(tmp_path, registered):
    spec = SweepSpec(datasets=["Marked"], algorithms=["Spy"], task="uda", n_trials=1, steps=2,
                     source_envs={"Marked": ["a"]}, protocol="shiftbench")
    spec.validate()
    jobs = enumerate_jobs(spec, tmp_path)
    assert [(j.args.source_envs, j.args.test_envs) for j in jobs] == [([0], [1]), ([0], [2]),
                                                                       ([0], [3])]
    assert all("--source-envs" in j.train_command() for j in jobs)
    bad = SweepSpec(datasets=["Marked"], algorithms=["Spy"], source_envs={"Marked": [0]},
                    test_envs={"Marked": [[0]]})
    with pytest.raises(SpecError, match="overlap the held-out set"):
        bad.validate()
    with pytest.raises(ShiftbenchError, match="unknown protocol"):
        SweepSpec(datasets=["Marked"], algorithms=["Spy"], protocol="domainbd").validate()


def test_sweep_toml_source_envs_and_protocol(tmp_path, registered):
    from shiftbench.sweeps.spec import load_spec

    path = tmp_path / "s.toml"
    path.write_text('datasets = ["Marked"]\nalgorithms = ["Spy"]\nprotocol = "domainbed"\n'
                    '[source_envs]\nMarked = ["b", "d"]\n')
    spec = load_spec(path, validate=False)
    assert spec.trial.protocol == "domainbed" and spec.source_envs == {"Marked": ["b", "d"]}
    path.write_text('datasets = ["Marked"]\n[source_envs]\nMarked = "b"\n')
    with pytest.raises(SpecError, match="line 3"):
        load_spec(path, validate=False)


# --------------------------------------------------------------------------------------------
# Round hooks: what `on_round(target_batches)` receives is checked like what `update` receives.

ROUND_ALGORITHMS = {  # every round-based uda algorithm, with hparams that make a round happen
    "CBST": {"cbst_source_fraction": 0.5, "cbst_rounds": 2},
    "CRST": {"cbst_source_fraction": 0.5, "cbst_rounds": 2},
    "TPLD": {"cbst_source_fraction": 0.5, "cbst_rounds": 2, "tpld_hard_rounds": 1},
    "SHOT": {"shot_source_fraction": 0.5, "shot_rounds": 2},
    "AdaBN": {},
}


def _round_spy(monkeypatch, name: str) -> tuple[list[dict], dict]:
    """Patch `name`'s `on_round` to record the domain marks, example indices and finiteness of
    every batch its `target_batches()` yields (then run the real hook on the same batches), and
    capture the trial the trainer builds (its splits say what the hook may see)."""
    from shiftbench import trial as trial_module
    from shiftbench.algorithms import get_algorithm_class

    cls = get_algorithm_class(name)
    real_hook = cls.on_round
    calls: list[dict] = []

    def on_round(self, target_batches):
        seen = {"marks": set(), "indices": [], "finite": True, "tensors": True}

        def recorded():
            for x in target_batches():
                seen["tensors"] &= isinstance(x, torch.Tensor)
                if isinstance(x, torch.Tensor):
                    seen["finite"] &= bool(torch.isfinite(x).all())
                    seen["marks"] |= set(x[:, MARK].tolist())
                    seen["indices"] += x[:, INDEX].long().tolist()
                yield x

        out = real_hook(self, recorded)
        calls.append(seen)
        return out

    monkeypatch.setattr(cls, "on_round", on_round)
    built: dict = {}
    real_build = trial_module.build_trial

    def build(spec):
        built["trial"] = real_build(spec)
        return built["trial"]

    monkeypatch.setattr(trial_module, "build_trial", build)
    return calls, built


def check_round_inputs(calls: list[dict], trial) -> None:
    """The hook saw only the unlabeled target split, all of it, as input tensors: no source or
    unused domain, no held-out target example, no labels."""
    used = [c for c in calls if c["indices"]]
    assert used, "no round hook iterated over the target batches"
    uda = sorted(trial.splits[1].uda.tolist())
    for call in used:
        assert call["tensors"], "a round hook received something other than input tensors"
        assert call["finite"], "an input of the poisoned domain reached a round hook"
        assert call["marks"] == {1.0}, f"round hook saw domains {sorted(call['marks'])}"
        # the whole split, each example as often as the others (AdaBN passes once per BN layer)
        counts = Counter(call["indices"])
        assert sorted(counts) == uda and len(set(counts.values())) == 1, \
            "round hook saw other examples than the uda split"


@pytest.mark.parametrize("name", sorted(ROUND_ALGORITHMS))
def test_round_hooks_see_only_the_unlabeled_target(tmp_path, registered, monkeypatch, name):
    calls, built = _round_spy(monkeypatch, name)
    hparams = {"batch_size": 8, "mlp_width": 16, **ROUND_ALGORITHMS[name]}
    train(_args(tmp_path, algorithm=name, task="uda", steps=6, hparams=json.dumps(hparams)),
          **QUIET)
    check_round_inputs(calls, built["trial"])


@pytest.mark.parametrize("leak", ["source domain", "unused domain", "held-out target", "labels"])
def test_a_leak_in_the_round_hook_supply_is_caught(tmp_path, registered, monkeypatch, leak):
    """The check above fails on a leak planted where round hooks get their batches."""
    from shiftbench import loop
    from shiftbench.data import eval_batches

    def leaky(trial, batch_size):
        yield from loop_target_batches(trial, batch_size)
        env, split = {"source domain": (0, "in_"), "unused domain": (3, "in_"),
                      "held-out target": (1, "in_"), "labels": (1, "uda")}[leak]
        for x, y in eval_batches(trial.dataset[env], getattr(trial.splits[env], split), 256):
            yield (x, y) if leak == "labels" else x

    loop_target_batches = loop._target_batches
    monkeypatch.setattr(loop, "_target_batches", leaky)
    calls, built = _round_spy(monkeypatch, "CBST")
    hparams = {"batch_size": 8, "mlp_width": 16, **ROUND_ALGORITHMS["CBST"]}
    try:
        train(_args(tmp_path, algorithm="CBST", task="uda", steps=6, hparams=json.dumps(hparams)),
              **QUIET)
    except Exception:  # noqa: BLE001 - a leak the algorithm chokes on is caught as well
        return
    with pytest.raises(AssertionError):
        check_round_inputs(calls, built["trial"])
