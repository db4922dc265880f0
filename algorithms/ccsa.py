"""CCSA: classification and contrastive semantic alignment (Motiian et al., ICCV 2017).

With g the featurizer (the embedding) and h the classifier:

    L = (1 - alpha) * CE(h(g(x)), y) + alpha * L_CSA
    L_CSA = mean over pairs (a, b) of  [y_a == y_b] * d_ab^2 + [y_a != y_b] * max(0, m - d_ab)^2,
    d_ab = ||g(x_a) - g(x_b)||_2   (sqrt of max(sum of squares, 1e-8), as the official code)

Pairs join examples of different domains: every same-class pair, plus `ccsa_neg_per_pos` times as
many different-class pairs drawn at random (all of them if fewer exist; the official code uses 3).
A pair of batches without any same-class pair still contributes `ccsa_neg_per_pos` random
different-class pairs, so the separation term never silently vanishes.
Defaults alpha = 0.25, margin m = 1.

Settings: ``sda`` (the paper's supervised DA): pairs between the pooled source batch and the few
labeled target examples (`split_minibatches`); ``dg`` (the paper's DG variant): pairs between every
two source domains. The CE term covers every labeled example of the step (sources and, in sda, the
labeled targets). Departure: the official code makes two optimizer steps per pair batch (one
classifying the source side, one the target side); we make one step whose CE covers both sides,
so alpha = 0 is exactly the pooled ERM ("S+T") update.
"""

from __future__ import annotations

import torch

from shiftbench.algorithms.base import concat_minibatches, cross_entropy, register_algorithm, step
from shiftbench.algorithms.erm import ERM
from shiftbench.hparams import Choice, HParam, Uniform


def ccsa_pairs(y_a: torch.Tensor, y_b: torch.Tensor, neg_per_pos: int
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Indices (i, j) into y_a, y_b of all same-class pairs and at most `neg_per_pos` x as many
    random different-class pairs (x 1 when there is no same-class pair); returns (i, j, same)
    with `same` a float 0/1 mask."""
    same = y_a[:, None] == y_b[None, :]
    pos = same.nonzero()
    neg = (~same).nonzero()
    n_neg = min(len(neg), neg_per_pos * max(len(pos), 1))
    neg = neg[torch.randperm(len(neg), device=neg.device)[:n_neg]]
    pairs = torch.cat([pos, neg])
    flags = torch.cat([torch.ones(len(pos)), torch.zeros(n_neg)]).to(y_a.device)
    return pairs[:, 0], pairs[:, 1], flags


def csa_loss(e_a: torch.Tensor, e_b: torch.Tensor, same: torch.Tensor, margin: float) -> torch.Tensor:
    """Contrastive semantic alignment: pull same-class pairs together, push others >= margin apart."""
    if len(same) == 0:
        return e_a.new_zeros(())
    d = (e_a - e_b).pow(2).sum(1).clamp_min(1e-8).sqrt()
    return (same * d.pow(2) + (1 - same) * (margin - d).clamp_min(0).pow(2)).mean()


@register_algorithm
class CCSA(ERM):
    """(1 - alpha) CE + alpha contrastive semantic alignment over cross-domain pairs (see module)."""

    SETTINGS = ("sda", "dg")
    PAPER = "Motiian et al., Unified Deep Supervised Domain Adaptation and Generalization, ICCV 2017"
    HPARAMS = {
        "ccsa_alpha": HParam(0.25, Uniform(0.1, 0.5), low=0.0, high=1.0, help="weight of the CSA loss"),
        "ccsa_margin": HParam(1.0, Choice([0.5, 1.0, 2.0]), low=0.0, help="margin m of the hinge"),
        "ccsa_neg_per_pos": HParam(3, Choice([1, 3]), low=0, help="different-class pairs per same-class"),
    }

    def update(self, minibatches, unlabeled=None):
        sources, targets = self.split_minibatches(minibatches)
        x, y = concat_minibatches(sources + targets)
        z = self.featurizer(x)
        # groups of examples that are paired with each other (offsets into x)
        if self.setting.few_shot_target and targets:
            n_src = sum(len(b) for _, b in sources)
            groups = [(0, n_src), (n_src, len(y))]
        else:
            bounds = torch.tensor([0] + [len(b) for _, b in sources]).cumsum(0).tolist()
            groups = list(zip(bounds[:-1], bounds[1:]))
        ia, ib, same = [], [], []
        for gi, (a0, a1) in enumerate(groups):
            for b0, b1 in groups[gi + 1:]:
                i, j, s = ccsa_pairs(y[a0:a1], y[b0:b1], self.hparams["ccsa_neg_per_pos"])
                ia.append(i + a0)
                ib.append(j + b0)
                same.append(s)
        if ia:
            ia, ib, same = torch.cat(ia), torch.cat(ib), torch.cat(same)
        else:  # a single domain: nothing to pair
            ia = ib = torch.zeros(0, dtype=torch.long, device=y.device)
            same = z.new_zeros(0)
        csa = csa_loss(z[ia], z[ib], same, self.hparams["ccsa_margin"])
        ce = cross_entropy(self.classifier(z), y)
        alpha = self.hparams["ccsa_alpha"]
        loss = (1 - alpha) * ce + alpha * csa
        step(loss, self.optimizer)
        return {"loss": loss.item(), "ce": ce.item(), "csa": csa.item(), "pairs": float(len(same)),
                "positive_pairs": float(same.sum())}
