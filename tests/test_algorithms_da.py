"""Conformance and invariant tests for the DA algorithms (DeepCORAL)."""

import copy

import pytest
import torch

from shiftbench.algorithms.base import create_algorithm
from shiftbench.algorithms.components import coral_distance


def _algo():
    torch.manual_seed(0)
    a = create_algorithm("DeepCORAL", (5,), 3, 2, {"mlp_width": 8}, dataset=None,
                         setting="uda", total_steps=2)
    return a


def test_deepcoral_conformance():
    a = _algo()
    mbs = [(torch.randn(4, 5), torch.randint(0, 3, (4,))) for _ in range(2)]
    for _ in range(2):
        out = a.train_step(mbs, [torch.randn(4, 5)])
        assert all(torch.isfinite(torch.tensor(v)) for v in out.values())
    x = torch.randn(6, 5)
    before = copy.deepcopy(a.state_dict())
    assert a.predict(x).shape == (6, 3)
    assert all(torch.equal(before[k], v) for k, v in a.state_dict().items())
    b = _algo()
    b.load_full_state(a.full_state())
    assert torch.equal(a.predict(x), b.predict(x))


def test_coral_distance_invariants():
    x = torch.randn(50, 4)
    assert coral_distance(x, x).item() == 0.0
    assert coral_distance(x, x + 3.0).item() < 1e-5  # covariance ignores a mean shift
    assert coral_distance(x, 2 * x).item() > 0.0


def test_deepcoral_aligns_the_layer_its_switch_names():
    xs, ys, xt = torch.randn(6, 5), torch.randint(0, 3, (6,)), torch.randn(6, 5) * 3 + 1
    for layer in ("features", "logits"):
        torch.manual_seed(0)
        a = create_algorithm("DeepCORAL", (5,), 3, 2, {"mlp_width": 8, "coral_layer": layer},
                             dataset=None, setting="uda", total_steps=2)
        with torch.no_grad():
            fs, ft = a.featurizer(xs), a.featurizer(xt)
            if layer == "logits":
                fs, ft = a.classifier(fs), a.classifier(ft)
            expected = coral_distance(fs, ft).item()
        assert fs.shape[1] == (3 if layer == "logits" else a.featurizer.n_outputs)
        assert a.update([(xs, ys)], [xt])["coral"] == pytest.approx(expected, rel=1e-5)
