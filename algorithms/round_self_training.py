"""Round-based self-training for UDA: CBST, CRST and TPLD (Zou et al. 2018/2019; Shin et al. 2020).

Shared schedule: a source-only phase takes the first `cbst_source_fraction` of the budget
(its steps count), then `cbst_rounds` rounds of equal length. At the start of every round the
round hook (`on_round`, which iterates over the whole unlabeled target split) freezes a snapshot
of the network (eval mode), predicts the whole split and fits the class-balanced thresholds.
Pseudo-labels are then the snapshot's predictions passed through the round's thresholds: each
incoming unlabeled batch is labelled by the frozen snapshot, which gives exactly the labels a
pass over the split would have stored (the trainer's batches carry no example indices, and the
snapshot and thresholds are buffers/submodules, so they checkpoint). Departures from the
segmentation papers, for classification: one decision per example instead of per pixel (no
spatial prior, no rare-class patch mining, no flip averaging), the full source batch every step
instead of a growing random source portion, and Adam kept across rounds (the code re-creates SGD).
"""

from __future__ import annotations

import copy
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from shiftbench.algorithms.base import concat_minibatches, register_algorithm, step
from shiftbench.algorithms.components import (  # noqa: F401 - phase_start, round_due re-exported
    Discriminator,
    PhaseSchedule,
    phase_start,
    round_due,
)
from shiftbench.algorithms.erm import ERM
from shiftbench.hparams import Choice, HParam, LogUniform, Uniform


def class_balanced_thresholds(conf: torch.Tensor, pred: torch.Tensor, num_classes: int,
                              q: float) -> torch.Tensor:
    """CBST's lambda_c: among examples predicted as c, the confidence at rank floor(q * N_c)
    (1-indexed, sorted in decreasing order); 1 when that rank is 0 (including empty classes)."""
    lam = torch.ones(num_classes, dtype=conf.dtype, device=conf.device)
    for c in range(num_classes):
        values = conf[pred == c].sort(descending=True).values
        rank = int(math.floor(q * len(values)))
        if rank > 0:
            lam[c] = values[rank - 1]
    return lam


class TargetLoss(NamedTuple):
    """What `target_loss` gives `update` for one target batch: `total`, the sum of the
    per-example (per-pixel) target losses over the `count` examples counted, averaged with the
    source loss; `extra`, added outside that average; `stats` to report; and `discriminator`,
    the detached (easy, hard) inputs of the discriminator step that `update` takes right after
    the network's step (TPLD's phase 2, `discriminator_step`), or None."""

    total: torch.Tensor
    count: torch.Tensor | int
    extra: torch.Tensor | float
    stats: dict[str, float]
    discriminator: tuple[torch.Tensor, torch.Tensor] | None = None


def cbst_select(probs: torch.Tensor, lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels argmax_c p_c / lambda_c, selected where max_c p_c / lambda_c >= 1."""
    score, labels = (probs / lam).max(dim=1)
    return labels, score >= 1


class RoundSelfTraining:
    """CBST's round machinery, mixed in before the `Algorithm` (which owns `self.network`) of
    the classification (`CBST`) and the segmentation (`SegCBST`) families: the schedule
    `PHASES`, the frozen labeller `snapshot` (always in eval mode), the round's thresholds
    lambda_c and index (buffers, so they checkpoint) and the portion q_k = min(q0 + k dq, q_max)."""

    PHASES = PhaseSchedule("cbst_source_fraction", "cbst_rounds")
    HPARAMS = {
        "cbst_source_fraction": HParam(0.5, Choice([0.3, 0.5]), low=0.0, high=1.0,
                                       help="share of the budget for source-only pretraining"),
        "cbst_rounds": HParam(4, Choice([3, 4, 5]), low=1, help="self-training rounds"),
        "cbst_q0": HParam(0.2, Choice([0.1, 0.2, 0.3]), low=0.0, high=1.0, help="first portion q"),
        "cbst_dq": HParam(0.05, Choice([0.05, 0.1]), low=0.0, high=1.0, help="q increase per round"),
        "cbst_qmax": HParam(0.5, None, low=0.0, high=1.0, help="largest portion q"),
    }

    def __init__(self, input_shape, num_classes, num_domains, hparams, **kwargs):
        super().__init__(input_shape, num_classes, num_domains, hparams, **kwargs)
        self.snapshot = copy.deepcopy(self.network).requires_grad_(False)
        self.register_buffer("thresholds", torch.ones(num_classes))
        self.register_buffer("round_index", torch.full((), -1, dtype=torch.long))

    def train(self, mode: bool = True):
        super().train(mode)
        self.snapshot.eval()  # the frozen labeller always predicts in eval mode
        return self

    def portion(self, k: int) -> float:
        hp = self.hparams
        return min(hp["cbst_q0"] + k * hp["cbst_dq"], hp["cbst_qmax"])

    def round_interval(self) -> int:
        return 1  # on_round decides which steps start a round (PHASES.round_starting)

    @torch.no_grad()
    def on_round(self, target_batches):
        """At a round start: the snapshot takes the network's weights, then `label_round`."""
        k = self.PHASES.round_starting(self)
        if k is None:
            return {}
        self.snapshot.load_state_dict(self.network.state_dict())
        self.snapshot.eval()
        return self.label_round(k, target_batches)

    def label_round(self, k: int, target_batches) -> dict[str, float]:
        """Round k's pass over the target split with the snapshot: `fit_round`, statistics."""
        raise NotImplementedError

    def fit_round(self, k: int, conf: torch.Tensor, pred: torch.Tensor) -> None:
        """Round k's lambda_c = `class_balanced_thresholds` of the snapshot's confidences and
        predicted classes at the portion q_k."""
        self.thresholds.copy_(class_balanced_thresholds(conf, pred, self.num_classes, self.portion(k)))
        self.round_index.fill_(k)

    def discriminator_step(self, easy: torch.Tensor, hard: torch.Tensor) -> None:
        """One step of an alignment discriminator on the `discriminator` inputs a `TargetLoss`
        carries, taken by `update` after the network's step; only TPLD returns such inputs."""
        raise NotImplementedError(f"{type(self).__name__} has no discriminator")

    def pseudo_labelling(self, unlabeled) -> bool:
        """Whether this update trains on pseudo-labels: adaptation phase, a target batch at hand
        and a round's thresholds fitted."""
        return not self.PHASES.in_source_phase(self) and bool(unlabeled) and int(self.round_index) >= 0


@register_algorithm
class CBST(RoundSelfTraining, ERM):
    """CBST (Zou et al., ECCV 2018): self-training with class-balanced confidence thresholds.

    Round k uses the portion q_k = min(q0 + k dq, q_max); lambda_c = `class_balanced_thresholds`
    of the snapshot's predictions on the target split. Loss in the target phase:
    L = [sum_{source} CE(f(x), y) + sum_{t: max p_t/lambda >= 1} CE(f(x_t), argmax_c p_tc/lambda_c)]
        / (n_source + n_selected),
    the average over the valid examples of the mixed batch (as the released code averages over
    valid pixels). See the module docstring for the schedule and the departures.
    """

    SETTINGS = ("uda",)
    KEEPS_FEATURES = False  # whether the round pass keeps the split's features (TPLD's voting)
    PAPER = "Zou, Yu, Kumar & Wang, Unsupervised domain adaptation for semantic segmentation via " \
            "class-balanced self-training, ECCV 2018"

    def label_round(self, k, target_batches):
        feats, probs = [], []
        for x in target_batches():
            f = self.snapshot[0](x)
            if self.KEEPS_FEATURES:
                feats.append(f)
            probs.append(F.softmax(self.snapshot[1](f), dim=1))
        probs = torch.cat(probs)
        feats = torch.cat(feats) if feats else probs.new_zeros(len(probs), 0)
        self.fit_round(k, *probs.max(dim=1))
        _, selected = cbst_select(probs, self.thresholds)
        stats = {"round_q": self.portion(k), "round_selected": selected.float().mean().item()}
        stats.update(self.after_labelling(feats, probs))
        return stats

    def after_labelling(self, feats: torch.Tensor, probs: torch.Tensor) -> dict[str, float]:
        """Extra round-start work of subclasses (TPLD)."""
        return {}

    def target_loss(self, logits: torch.Tensor, probs: torch.Tensor, xt: torch.Tensor
                    ) -> TargetLoss:
        """The target batch's loss terms: CE to the selected pseudo-labels."""
        labels, mask = cbst_select(probs, self.thresholds)
        ce = F.cross_entropy(logits, labels, reduction="none")
        return TargetLoss((ce * mask).sum(), mask.sum(), 0.0, {})

    def update(self, minibatches, unlabeled=None):
        x, y = concat_minibatches(minibatches)
        if not self.pseudo_labelling(unlabeled):
            return super().update(minibatches)
        xt = torch.cat(list(unlabeled))
        with torch.no_grad():
            probs = F.softmax(self.snapshot(xt), dim=1)
        logits = self.network(torch.cat([x, xt]))
        src = F.cross_entropy(logits[: len(x)], y, reduction="sum")
        target = self.target_loss(logits[len(x):], probs, xt)
        loss = (src + target.total) / (len(x) + target.count) + target.extra
        step(loss, self.optimizer)
        if target.discriminator is not None:
            self.discriminator_step(*target.discriminator)
        return {"loss": loss.item(), "src_loss": src.item() / len(x),
                "selected": float(target.count) / len(xt), **target.stats}


CRST_REGULARISERS = ("mrkld", "lrent")


@register_algorithm
class CRST(CBST):
    """CRST (Zou et al., ICCV 2019): CBST plus a confidence regulariser (`crst_reg`).

    * mrkld (model regularisation): per selected target example
      CE(y^, p) + alpha * (-(1/K) sum_k log p_k)   [= alpha (KL(u || p) + log K)], alpha 0.1;
    * lrent (label regularisation): soft label y^_k proportional to (p_k / lambda_k)^(1/alpha),
      alpha 0.25, kept iff sum_k [-y^_k log p_k + alpha y^_k log y^_k] < -sum_k y^_k log lambda_k,
      trained with the soft cross-entropy -sum_k y^_k log p_k. Here p is the snapshot's prediction
      (the label), while log p in the loss is the current network's.
    """

    PAPER = "Zou, Yu, Liu, Kumar & Wang, Confidence regularized self-training, ICCV 2019"
    HPARAMS = {
        "crst_reg": HParam("mrkld", None, choices=tuple(CRST_REGULARISERS), variant=True,
                           help="mrkld | lrent"),
        "crst_mrkld_weight": HParam(0.1, LogUniform(-2, 0), low=0.0, help="MRKLD alpha"),
        "crst_lrent_alpha": HParam(0.25, Choice([0.1, 0.25, 0.5]), low=1e-6, help="LRENT alpha"),
    }

    def __init__(self, input_shape, num_classes, num_domains, hparams, **kwargs):
        super().__init__(input_shape, num_classes, num_domains, hparams, **kwargs)

    def target_loss(self, logits, probs, xt):
        log_p = F.log_softmax(logits, dim=1)
        if self.hparams["crst_reg"] == "mrkld":
            labels, mask = cbst_select(probs, self.thresholds)
            per = F.nll_loss(log_p, labels, reduction="none") \
                + self.hparams["crst_mrkld_weight"] * mrkld(log_p)
            return TargetLoss((per * mask).sum(), mask.sum(), 0.0, {})
        soft, mask = lrent_labels(probs, self.thresholds, self.hparams["crst_lrent_alpha"])
        return TargetLoss((-(soft * log_p).sum(1) * mask).sum(), mask.sum(), 0.0, {})


def mrkld(log_p: torch.Tensor) -> torch.Tensor:
    """Per example `-(1/K) sum_k log p_k` (= KL(uniform || p) + log K)."""
    return -log_p.mean(dim=1)


def lrent_labels(probs: torch.Tensor, lam: torch.Tensor, alpha: float):
    """CRST's LRENT soft labels (rows sum to 1) and the keep mask (computed on the snapshot p)."""
    soft = F.softmax(torch.log(probs / lam) / alpha, dim=1)
    log_p, log_soft = torch.log(probs.clamp_min(1e-12)), torch.log(soft.clamp_min(1e-12))
    lhs = (-soft * log_p + alpha * soft * log_soft).sum(1)
    keep = lhs < -(soft * torch.log(lam)).sum(1)
    return soft, keep


def knn_vote(feats: torch.Tensor, norm_scores: torch.Tensor, bank_feats: torch.Tensor,
             bank_scores: torch.Tensor, k: int, alpha: float):
    """TPLD's voting, with feature-space neighbours instead of a spatial window.

    For each example: its top-2 classes by own normalised score p_c / lambda_c; for each, the mean
    score of that class over its k nearest (cosine) neighbours in the bank of *confident* target
    examples; combined = alpha * own + (1 - alpha) * pooled. Returns (label, combined score); the
    example is densified where the combined score >= 1.
    """
    if len(bank_feats) == 0:
        score, label = norm_scores.max(dim=1)
        return label, score
    sim = F.normalize(feats, dim=1) @ F.normalize(bank_feats, dim=1).T
    idx = sim.topk(min(k, len(bank_feats)), dim=1).indices            # (B, k)
    pooled = bank_scores[idx].mean(dim=1)                               # (B, K)
    top2 = norm_scores.topk(min(2, norm_scores.shape[1]), dim=1).indices
    combined = alpha * norm_scores.gather(1, top2) + (1 - alpha) * pooled.gather(1, top2)
    best, pos = combined.max(dim=1)
    return top2.gather(1, pos[:, None])[:, 0], best


def bootstrap_loss(log_p: torch.Tensor, target: torch.Tensor, norm: torch.Tensor,
                   lam: torch.Tensor, beta: float) -> torch.Tensor:
    """TPLD's per-example L_boot = -sum_k [beta y_k + (1 - beta) p_k/lambda_k] log(p_k/lambda_k);
    the weights use the (detached) snapshot scores `norm`, the log the current network's p."""
    weights = beta * target + (1 - beta) * norm
    return -(weights * (log_p - torch.log(lam))).sum(dim=1)


class TPLDPhases:
    """TPLD's hparams and its two phases, mixed in by the classification (`TPLD`) and the
    segmentation (`SegTPLD`) forms: voting densification in all but the last `tpld_hard_rounds`
    of the `cbst_rounds` rounds, then the easy/hard split."""

    HPARAMS = {
        "cbst_rounds": HParam(6, Choice([4, 6, 8]), low=1, help="self-training rounds (both phases)"),
        "tpld_hard_rounds": HParam(2, Choice([1, 2, 3]), low=0, help="final rounds in phase 2"),
        "tpld_beta": HParam(0.9, Uniform(0.7, 1.0), low=0.0, high=1.0, help="bootstrapping beta"),
        "tpld_vote_alpha": HParam(0.7, Choice([0.5, 0.7, 0.9]), low=0.0, high=1.0,
                                  help="weight of the own score in the vote"),
        "tpld_vote_iters": HParam(3, None, low=1, help="voting iterations"),
        "tpld_easy_share": HParam(0.3, Choice([0.2, 0.3, 0.4]), low=0.0, high=1.0),
        "tpld_gamma": HParam(2.0, Choice([1.0, 2.0, 3.0]), low=0.0, help="soft-label sharpening"),
        "tpld_adv_weight": HParam(1e-3, LogUniform(-4, -2), low=0.0, help="hard->easy alignment"),
    }

    def hard_phase(self) -> bool:
        """Whether the current round is one of the last `tpld_hard_rounds` (phase 2)."""
        hp = self.hparams
        return int(self.round_index) >= int(hp["cbst_rounds"]) - int(hp["tpld_hard_rounds"])


@register_algorithm
class TPLD(TPLDPhases, CBST):
    """TPLD (Shin et al., ECCV 2020): two-phase pseudo-label densification on top of CBST.

    Both phases train the target with the bootstrapping loss `bootstrap_loss` (beta `tpld_beta`,
    snapshot scores detached) instead of plain CE. Phase 1 (all but the last `tpld_hard_rounds`
    rounds), voting densification: an example below every CBST threshold takes its top-2 classes,
    pools each one's normalised score p_c/lambda_c over neighbours among the *confident* target
    examples, combines alpha * own + (1 - alpha) * pooled and is labelled where that reaches 1.
    The sliding window over pixels has no counterpart for whole images, so neighbours are the k
    nearest confident examples in the snapshot's feature space (cosine), from a bank built at the
    round start; the voting is iterated `tpld_vote_iters` times there (newly labelled examples join
    the bank), and incoming batches vote against the final bank. Phase 2, easy/hard split: the
    example score max_c p_c/lambda_c (the image score of the paper with one "pixel"); the top
    `tpld_easy_share` of the split (threshold at rank ceil(share * N)) is easy. Easy examples get
    dense labels — one-hot where confident, else (p/lambda)^gamma normalised — with L_boot; hard
    examples are aligned to easy ones adversarially on the entropy vector I = -p * log p: the network
    with weight `tpld_adv_weight` to make D(I_hard) -> 1, then (`discriminator_step`, after the
    network's step, as ADVENT's loop) D trained easy -> 1, hard -> 0 (Adam 1e-4).
    Phase-1 voting is a departure (no official code; details from secondary descriptions).
    """

    KEEPS_FEATURES = True
    PAPER = "Shin, Woo, Pan & Kweon, Two-phase pseudo label densification for self-training based " \
            "domain adaptation, ECCV 2020"
    HPARAMS = {
        "tpld_neighbours": HParam(5, Choice([3, 5, 9]), low=1, help="k of the k-NN vote"),
        "tpld_bank_size": HParam(2048, None, low=1, help="confident examples kept for voting"),
    }

    def __init__(self, input_shape, num_classes, num_domains, hparams, **kwargs):
        super().__init__(input_shape, num_classes, num_domains, hparams, **kwargs)
        m, d = int(self.hparams["tpld_bank_size"]), self.featurizer.n_outputs
        self.register_buffer("bank_feats", torch.zeros(m, d))
        self.register_buffer("bank_scores", torch.zeros(m, num_classes))
        self.register_buffer("bank_count", torch.zeros((), dtype=torch.long))
        self.register_buffer("easy_threshold", torch.ones(()))
        self.discriminator = Discriminator(num_classes, 1, width=64, depth=3)
        self.d_optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=1e-4, betas=(0.9, 0.99))

    def bank(self):
        n = int(self.bank_count)
        return self.bank_feats[:n], self.bank_scores[:n]

    def after_labelling(self, feats, probs):
        hp = self.hparams
        norm = probs / self.thresholds
        score = norm.max(dim=1).values
        if self.hard_phase():
            rank = min(len(score), max(1, math.ceil(hp["tpld_easy_share"] * len(score))))
            self.easy_threshold.fill_(score.sort(descending=True).values[rank - 1])
            return {"easy_threshold": float(self.easy_threshold)}
        labelled = score >= 1
        bank_f, bank_s = feats[labelled], norm[labelled]
        for _ in range(int(hp["tpld_vote_iters"])):
            rest = ~labelled
            label, comb = knn_vote(feats[rest], norm[rest], bank_f, bank_s,
                                   int(hp["tpld_neighbours"]), hp["tpld_vote_alpha"])
            new = comb >= 1
            if not bool(new.any()):
                break
            new_scores = norm[rest][new].clone()
            new_scores.scatter_(1, label[new, None], comb[new, None])
            bank_f, bank_s = torch.cat([bank_f, feats[rest][new]]), torch.cat([bank_s, new_scores])
            idx = rest.nonzero()[:, 0][new]
            labelled[idx] = True
        keep = torch.randperm(len(bank_f))[: len(self.bank_feats)]
        self.bank_count.fill_(len(keep))
        self.bank_feats[: len(keep)] = bank_f[keep]
        self.bank_scores[: len(keep)] = bank_s[keep]
        return {"confident_share": (score >= 1).float().mean().item(),
                "densified_share": labelled.float().mean().item()}

    def target_loss(self, logits, probs, xt):
        hp, lam = self.hparams, self.thresholds
        norm = probs / lam
        labels, confident = cbst_select(probs, lam)
        log_p = F.log_softmax(logits, dim=1)
        onehot = F.one_hot(labels, self.num_classes).to(probs.dtype)
        if not self.hard_phase():
            with torch.no_grad():
                voted, comb = knn_vote(self.snapshot[0](xt), norm, *self.bank(),
                                       int(hp["tpld_neighbours"]), hp["tpld_vote_alpha"])
            target = torch.where(confident[:, None], onehot, F.one_hot(voted, self.num_classes).to(onehot))
            mask = confident | (comb >= 1)
            per = bootstrap_loss(log_p, target, norm, lam, hp["tpld_beta"])
            return TargetLoss((per * mask).sum(), mask.sum(), 0.0,
                              {"densified": mask.float().mean().item()})
        easy = norm.max(dim=1).values >= self.easy_threshold
        soft = norm.pow(hp["tpld_gamma"])
        soft = soft / soft.sum(dim=1, keepdim=True)
        target = torch.where(confident[:, None], onehot, soft)
        per = bootstrap_loss(log_p, target, norm, lam, hp["tpld_beta"])
        info = -(log_p.exp() * log_p)
        adv = logits.new_zeros(())
        if bool((~easy).any()):
            d_hard = self.discriminator(info[~easy])
            adv = F.binary_cross_entropy_with_logits(d_hard, torch.ones_like(d_hard))
        return TargetLoss((per * easy).sum(), easy.sum(), hp["tpld_adv_weight"] * adv,
                          {"easy": easy.float().mean().item(), "adv_g": adv.item()},
                          discriminator=(info[easy].detach(), info[~easy].detach()))

    def discriminator_step(self, easy, hard):
        """D on the entropy vectors: BCE(D(I_easy), 1) + BCE(D(I_hard), 0), averaged."""
        d_easy, d_hard = self.discriminator(easy), self.discriminator(hard)
        d_loss = (F.binary_cross_entropy_with_logits(d_easy, torch.ones_like(d_easy), reduction="sum")
                  + F.binary_cross_entropy_with_logits(d_hard, torch.zeros_like(d_hard), reduction="sum"))
        d_loss = d_loss / max(1, len(easy) + len(hard))
        step(d_loss, self.d_optimizer)
