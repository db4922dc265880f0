"""DEV (deep embedded validation) recorded by the trainer, and the few-label `target` rule on
its disjoint labeled validation split."""

from __future__ import annotations

import math

import numpy as np
import torch

from shiftbench.datasets.base import TensorDomain
from shiftbench.dev_validation import dev_score, embed
from shiftbench.results.selection import select
from shiftbench.scores import dev_risk
from shiftbench.splits import make_splits
from shiftbench.trainer import TrainArgs, train


def _run(tmp_path, **kw):
    args = dict(dataset="Debug28", algorithm="DANN", task="uda", test_envs=[2], steps=3,
                checkpoint_freq=1, output_dir=str(tmp_path / "o"), skip_model_save=True,
                hparams='{"batch_size": 8}')
    args.update(kw)
    return train(TrainArgs(**args), log=lambda m: None, progress=False)


def test_trainer_records_dev_and_the_dev_rule_selects(tmp_path):
    records = _run(tmp_path)
    assert all(math.isfinite(r["env2_uda_dev"]) for r in records)
    chosen = select(records, "dev")
    assert len(chosen) == 1 and chosen[0].step > 0  # the untrained model is not a candidate
    best = min((r for r in records if r["step"] > 0), key=lambda r: r["env2_uda_dev"])
    assert chosen[0].step == best["step"]


def _domains(n=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [TensorDomain(torch.randn(n, 3, 28, 28, generator=g) + i, torch.arange(n) % 2)
            for i in range(3)]


class _Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.featurizer = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 28 * 28, 4))
        self.classifier = torch.nn.Linear(4, 2)

    def predict(self, x):
        return self.classifier(self.featurizer(x))


def test_dev_reads_no_target_label_and_matches_its_formula():
    domains = _domains()
    splits = make_splits([d.y for d in domains], [2], trial_seed=0, holdout_fraction=0.2,
                         task="uda", uda_holdout_fraction=0.5)
    model = _Model().eval()
    score = dev_score(model, domains, splits, [0, 1], 2, 0, torch.device("cpu"))
    shuffled = list(domains)
    shuffled[2] = TensorDomain(domains[2].x, 1 - domains[2].y)
    assert dev_score(model, shuffled, splits, [0, 1], 2, 0, torch.device("cpu")) == score
    # by hand: every source training/validation example here (fewer than the subset cap)
    with torch.no_grad():
        def feats(d, idx):
            return embed(model, domains[d].x[idx].float())

        src = np.concatenate([feats(i, splits[i].in_)[0].double().numpy() for i in (0, 1)])
        tgt = feats(2, splits[2].uda)[0].double().numpy()
        val_f, losses = [], []
        for i in (0, 1):
            f, logits = feats(i, splits[i].out)
            val_f.append(f.double().numpy())
            losses.append(torch.nn.functional.cross_entropy(
                logits, domains[i].y[splits[i].out], reduction="none").double().numpy())
    expected = dev_risk(src, tgt, np.concatenate(val_f), np.concatenate(losses), seed=0)
    assert score["env2_uda_dev"] == expected


def test_target_rule_validates_on_the_disjoint_labeled_split(tmp_path):
    records = _run(tmp_path, dataset="DebugVector", algorithm="ERM", task="ssda", test_envs=[0],
                   target_shots=2, hparams='{"batch_size": 6, "mlp_width": 16}')
    assert all("env0_lab_val_acc" in r and "env0_lab_acc" in r for r in records)
    chosen = select(records, "target")
    assert len(chosen) == 1
    best = max((r for r in records), key=lambda r: r["env0_lab_val_acc"])
    assert chosen[0].val_acc == best["env0_lab_val_acc"]
