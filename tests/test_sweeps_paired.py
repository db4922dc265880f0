"""Paired trials (common random numbers): under the shiftbench protocol one trial seed gives
every algorithm the same seed, hence the same batches and initial weights; under the domainbed
protocol each algorithm draws its own, as DomainBed does. Sweeps made with per-algorithm seeds
before keep their hashes and resume."""

from __future__ import annotations

import json

import pytest
import torch

from shiftbench.algorithms import ALGORITHM_REGISTRY
from shiftbench.algorithms.erm import ERM
from shiftbench.errors import ShiftbenchError
from shiftbench.sweeps.jobs import enumerate_jobs, job_seed, resolve_seeding
from shiftbench.sweeps.spec import SweepSpec
from shiftbench.trainer import train


class SpyA(ERM):
    """ERM that records its first weights and the inputs `update` receives."""

    SETTINGS = ("dg", "uda")
    seen: dict[str, dict] = {}

    def update(self, minibatches, unlabeled=None):
        log = type(self).seen.setdefault(type(self).__name__, {"batches": []})
        if "weights" not in log:
            log["weights"] = [p.detach().clone() for p in self.network.parameters()]
        log["batches"].append(torch.cat([x for x, _ in minibatches]).clone())
        return super().update(minibatches, unlabeled)


class SpyB(SpyA):
    """The same, under another name (another algorithm as far as seeding is concerned)."""


@pytest.fixture
def spies(monkeypatch):
    monkeypatch.setitem(ALGORITHM_REGISTRY._items, "SpyA", SpyA)
    monkeypatch.setitem(ALGORITHM_REGISTRY._items, "SpyB", SpyB)
    SpyA.seen = {}
    yield SpyA.seen


def _run(tmp_path, protocol):
    spec = SweepSpec(datasets=["DebugVector"], algorithms=["SpyA", "SpyB"], n_trials=2, steps=3,
                     single_test_envs=True, test_envs={"DebugVector": [[0]]}, protocol=protocol,
                     hparams={"batch_size": 8})
    spec.validate()
    jobs = enumerate_jobs(spec, tmp_path / protocol)
    seen = {}
    for trial in (0, 1):
        SpyA.seen.clear()
        for job in (j for j in jobs if j.args.trial_seed == trial):
            train(job.args, log=lambda m: None, progress=False)
        seen[trial] = dict(SpyA.seen)
    return jobs, seen


def test_shiftbench_protocol_pairs_batches_and_initialisation(tmp_path, spies):
    jobs, seen = _run(tmp_path, "shiftbench")
    for trial in (0, 1):
        a, b = seen[trial]["SpyA"], seen[trial]["SpyB"]
        assert len(a["batches"]) == 3
        assert all(torch.equal(x, y) for x, y in zip(a["batches"], b["batches"]))
        assert all(torch.equal(x, y) for x, y in zip(a["weights"], b["weights"]))
    # another trial seed draws other batches
    assert not torch.equal(seen[0]["SpyA"]["batches"][0], seen[1]["SpyA"]["batches"][0])
    seeds = {(j.args.algorithm, j.args.trial_seed): j.args.seed for j in jobs}
    assert seeds[("SpyA", 0)] == seeds[("SpyB", 0)] != seeds[("SpyA", 1)]


def _indices(tmp_path, monkeypatch, protocol):
    """The batch indices each job of ERM and CORAL (both DomainBed's) draws at trial seed 0."""
    from shiftbench import data

    drawn: list[list[int]] = []
    real = data.step_indices

    def recording(*args):
        out = real(*args)
        drawn.append(out.tolist())
        return out

    monkeypatch.setattr(data, "step_indices", recording)
    spec = SweepSpec(datasets=["DebugVector"], algorithms=["ERM", "CORAL"], n_trials=1, steps=3,
                     test_envs={"DebugVector": [[0]]}, protocol=protocol,
                     hparams={"batch_size": 8})
    spec.validate()
    by_algorithm = {}
    for job in enumerate_jobs(spec, tmp_path / protocol):
        drawn.clear()
        train(job.args, log=lambda m: None, progress=False)
        by_algorithm[job.args.algorithm] = list(drawn)
    return by_algorithm


def test_two_algorithms_draw_the_same_batch_indices_only_under_shiftbench(tmp_path, monkeypatch):
    paired = _indices(tmp_path, monkeypatch, "shiftbench")
    assert len(paired["ERM"]) == 3 * 2  # 3 steps x 2 source domains
    assert paired["ERM"] == paired["CORAL"]
    domainbed = _indices(tmp_path, monkeypatch, "domainbed")
    assert len(domainbed["ERM"]) == len(domainbed["CORAL"]) == 6
    assert domainbed["ERM"] != domainbed["CORAL"]
    assert job_seed("domainbed", "DebugVector", "ERM", [0], None, 0, 0) != \
        job_seed("domainbed", "DebugVector", "CORAL", [0], None, 0, 0)


def test_paired_seed_ignores_algorithm_and_hparams_seed_only():
    base = job_seed("paired", "D", "ERM", [0], None, 0, 0)
    assert base == job_seed("paired", "D", "DANN", [0], None, 5, 0)
    assert len({base, job_seed("paired", "D", "ERM", [1], None, 0, 0),
                job_seed("paired", "D", "ERM", [0], [2], 0, 0),
                job_seed("paired", "D", "ERM", [0], None, 0, 1),
                job_seed("paired", "E", "ERM", [0], None, 0, 0)}) == 5
    with pytest.raises(ShiftbenchError, match="unknown seeding 'pairs'; valid: paired, domainbed"):
        job_seed("pairs", "D", "ERM", [0], None, 0, 0)


def test_seeding_is_checked_and_explicit(tmp_path):
    bad = SweepSpec(datasets=["DebugVector"], algorithms=["ERM"], seeding="pairs")
    with pytest.raises(ShiftbenchError, match="seeding"):
        bad.validate()
    spec = SweepSpec(datasets=["DebugVector"], algorithms=["ERM", "DANN"], task="uda", n_trials=1,
                     steps=2, test_envs={"DebugVector": [[1]]}, single_test_envs=True)
    spec.validate()
    out = tmp_path / "s"
    old = enumerate_jobs(spec, out, seeding="domainbed")
    new = enumerate_jobs(spec, out)
    assert {j.hash for j in old}.isdisjoint({j.hash for j in new})
    assert resolve_seeding(spec, out) == ("paired", None)  # nothing there yet
    old[0].dir.mkdir(parents=True)
    seeding, note = resolve_seeding(spec, out)  # a sweep made before: continued as it was made
    assert seeding == "domainbed" and "not paired" in note
    spec.seeding = "paired"  # said explicitly: no guessing
    assert resolve_seeding(spec, out) == ("paired", None)
    spec.seeding = None
    new[0].dir.mkdir(parents=True)
    with pytest.raises(ShiftbenchError, match="under both seedings"):
        resolve_seeding(spec, out)


def test_records_keep_their_seed(tmp_path, spies):
    jobs, _ = _run(tmp_path, "shiftbench")
    for job in jobs:
        last = json.loads((job.dir / "results.jsonl").read_text().splitlines()[-1])
        assert last["args"]["seed"] == job.args.seed


class _Noisy(torch.utils.data.Dataset):
    """A lazily decoded dataset whose 'augmentation' is a draw from torch's global generator."""

    def __len__(self):
        return 20

    def __getitem__(self, i):
        return torch.tensor([float(i), torch.rand(()).item()]), i % 2


@pytest.mark.parametrize("workers", [0, 1])
def test_augmentation_draws_depend_on_the_batch_alone(workers):
    from shiftbench.data import BatchStream

    split = torch.arange(20)

    def batches(noise_draws):
        stream = BatchStream(_Noisy(), split, 4, seed=7, role="train", env=0, start_step=0,
                             num_workers=workers)
        out = []
        for _ in range(3):
            torch.rand(noise_draws)  # what an algorithm draws between steps differs
            out.append(stream.next()[0])
        return out

    a, b = batches(1), batches(5)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert len({float(x[0, 1]) for x in a}) == 3  # the draws still vary from batch to batch
    resumed = BatchStream(_Noisy(), split, 4, seed=7, role="train", env=0, start_step=2,
                          num_workers=workers).next()[0]
    assert torch.equal(resumed, a[2])  # a resumed stream draws what the uninterrupted one did
