"""MME: cosine classifier, the sign of the minimax entropy, and ERM as the S+T baseline."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from shiftbench.algorithms import create_algorithm
from shiftbench.algorithms.few_shot import CosineClassifier, adversarial_entropy
from shiftbench.hparams_registry import DatasetInfo


def _entropy(classifier, feats):
    p = F.softmax(classifier(feats), dim=1)
    return -(p * torch.log(p + 1e-5)).sum(1).mean()


def test_cosine_classifier_is_scale_invariant_and_uses_temperature():
    torch.manual_seed(0)
    clf = CosineClassifier(6, 3, temperature=0.05)
    f = torch.randn(4, 6)
    assert torch.allclose(clf(f), clf(7.0 * f), atol=1e-5)
    assert clf(f).abs().max() <= 1 / 0.05 + 1e-4


def test_minimax_entropy_signs():
    """Descending the loss raises the entropy through C and lowers it through F."""
    torch.manual_seed(0)
    clf = CosineClassifier(6, 3, temperature=0.1)
    feats = torch.randn(10, 6, requires_grad=True)
    g_w, g_f = torch.autograd.grad(adversarial_entropy(clf, feats, 0.1), (clf.weight, feats))
    h_w, h_f = torch.autograd.grad(_entropy(clf, feats), (clf.weight, feats))
    assert torch.allclose(g_w, -0.1 * h_w, atol=1e-6)   # C: minimise -lambda H
    assert torch.allclose(g_f, 0.1 * h_f, atol=1e-6)    # F (through the GRL): minimise +lambda H
    with torch.no_grad():
        h0 = _entropy(clf, feats)
        clf.weight -= 1e-3 * g_w / g_w.norm()
        assert _entropy(clf, feats) > h0


def test_mme_entropy_step_and_erm_is_s_plus_t():
    ds = DatasetInfo("Debug", (8,), 3)
    torch.manual_seed(0)
    alg = create_algorithm("MME", (8,), 3, 1, {"mlp_width": 16}, dataset=ds, setting="ssda", total_steps=5)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, 8, generator=g), torch.randint(3, (8,), generator=g)) for _ in range(2)]
    values = alg.train_step(batches, [torch.randn(8, 8, generator=g)])
    assert values["neg_entropy_loss"] < 0  # lambda * sum p log p = -lambda H <= 0
    # ERM in ssda pools the labeled target batch with the sources ("S+T")
    torch.manual_seed(0)
    erm = create_algorithm("ERM", (8,), 3, 1, {"mlp_width": 16}, dataset=ds, setting="ssda", total_steps=5)
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    expected = F.cross_entropy(erm.predict(x), y).item()
    assert abs(erm.train_step(batches, None)["loss"] - expected) < 1e-6
