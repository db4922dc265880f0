"""Self-training for segmentation: DACS (ClassMix + EMA teacher), and the round-based CBST, CRST
(MRKLD, LRENT) and TPLD, pixel-wise as in their papers.

The round-based family shares the classification CBST's schedule, snapshot and thresholds
(`RoundSelfTraining`): a source-only phase takes the first `cbst_source_fraction` of the budget,
then `cbst_rounds` rounds of equal length. At the start of each round the trainer's round hook
passes the whole unlabeled target split: the network is frozen into a snapshot (eval mode), its
pixel probabilities (every 4th pixel, as the released code subsamples) give the class-balanced
thresholds lambda_c for the round's portion q_k = min(q0 + k dq, q_max), and during the round
each incoming target batch is labelled by the snapshot through these thresholds (the labels a
pass over the split would have stored).
Departures shared with the classification versions: Adam is replaced by the papers' SGD, but
the optimiser is kept across rounds; the whole source batch is used every step (the code draws
a growing source portion); no rare-class patch mining and no flip averaging.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from shiftbench.algorithms.base import register_algorithm
from shiftbench.algorithms.base import step as gradient_step
from shiftbench.algorithms.components import EMA
from shiftbench.algorithms.round_self_training import (
    RoundSelfTraining,
    TargetLoss,
    TPLDPhases,
    bootstrap_loss,
    lrent_labels,
    mrkld,
)
from shiftbench.algorithms.seg_adversarial import (
    PatchDiscriminator,
    _disc_width,
    n_down_for,
    self_information,
)
from shiftbench.algorithms.seg_augment import dacs_augment, draw_strong_params
from shiftbench.algorithms.seg_base import SegAlgorithm, seg_loss
from shiftbench.algorithms.self_training import DACS_HPARAMS, ema_warmup_decay
from shiftbench.datasets.segmentation import IGNORE_INDEX
from shiftbench.errors import ShiftbenchError
from shiftbench.hparams import Choice, HParam, LogUniform
from shiftbench.seg_networks import upsample

# ---- DACS ---------------------------------------------------------------------------------


def classmix_masks(ys: torch.Tensor, generator: torch.Generator | None = None
                   ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """ClassMix: for each source label map pick ceil(n/2) of its n classes at random (ignore
    label excluded); mask = pixels of the picked classes. Returns (B x H x W bool, picked)."""
    masks, picked = [], []
    for y in ys:
        classes = y.unique()
        classes = classes[classes != IGNORE_INDEX]
        order = torch.randperm(len(classes), generator=generator)[: math.ceil(len(classes) / 2)]
        chosen = classes[order.to(classes.device)]
        masks.append(torch.isin(y, chosen))
        picked.append(chosen)
    return torch.stack(masks), picked


@register_algorithm
class SegDACS(SegAlgorithm):
    """DACS (Tranheden et al., WACV 2021): cross-domain ClassMix with a mean teacher.

    Per step (source x_s, y_s; target x_t paired index-wise): L = CE(f(x_s), y_s) + lambda_u L_u,
    M_i = pixels of ceil(n_i/2) random classes of y_s,i (`classmix_masks`),
    x_mix = M x_s + (1 - M) x_t, y_mix = M y_s + (1 - M) argmax f'(x_t) (teacher f' = EMA of f,
    decay min(1 - 1/(t+1), 0.99), on the un-augmented target), f sees `dacs_augment(x_mix)`;
    L_u = sum_p W_p CE_p / #valid pixels with W = 1 on source pixels and, on target pixels, the
    share of target pixels of the batch whose teacher confidence >= 0.968. Predictions: student.
    The teacher runs in train mode (`dacs_teacher_bn="train"`, as the released trainUDA.py: its
    BatchNorm normalises with the target batch's own statistics); `"eval"` uses the running
    statistics instead (many re-implementations). The strong view is `seg_augment`'s (colour
    jitter incl. hue 0.25 and blur, each decided once per iteration).
    Differs from the classification `DACS`, which pastes a CutMix box (no class regions there).
    Departure: the ignore label is never a picked class (the released code may pick it).
    """

    SAME_METHOD_AS = "DACS"
    SETTINGS = ("uda",)
    PAPER = "Tranheden et al., DACS: domain adaptation via cross-domain mixed sampling, WACV 2021"
    HPARAMS = {
        **DACS_HPARAMS,
        "dacs_teacher_bn": HParam("train", None, choices=("train", "eval"), variant=True,
                                  help="teacher BatchNorm: batch statistics (train, released "
                                       "code) or running statistics (eval)"),
    }

    def __init__(self, input_shape, num_classes, num_domains, hparams, **kwargs):
        super().__init__(input_shape, num_classes, num_domains, hparams, **kwargs)
        self.teacher = EMA(self.network)

    def update(self, minibatches, unlabeled=None):
        if not unlabeled:
            raise ShiftbenchError("SegDACS needs unlabeled target batches (--task uda)")
        hp = self.hparams
        xs, ys = self.source_batch(minibatches)
        xt = torch.cat(list(unlabeled))
        if xs.shape[-2:] != xt.shape[-2:]:
            raise ShiftbenchError(
                f"SegDACS mixes source and target images pixel by pixel, but they differ in size "
                f"({tuple(xs.shape[-2:])} vs {tuple(xt.shape[-2:])}); give both one size, e.g. "
                "crop_size (the dacs_gta5 preset crops both to 512x512)")
        sup = seg_loss(self.network.forward_all(xs).logits, ys)
        self.teacher.train(hp["dacs_teacher_bn"] == "train")
        with torch.no_grad():
            conf, yt = F.softmax(self.teacher(xt).float(), dim=1).max(dim=1)
        w_t = (conf >= hp["dacs_threshold"]).float().mean()
        pair = torch.arange(len(xt), device=xs.device) % len(xs)
        mask, _ = classmix_masks(ys[pair])
        x_mix = torch.where(mask[:, None], xs[pair], xt)
        y_mix = torch.where(mask, ys[pair], yt)
        weight = torch.where(mask, torch.ones_like(conf), w_t.expand_as(conf))
        strong = dacs_augment(x_mix, draw_strong_params(len(x_mix), hp["dacs_jitter"]))
        ce = F.cross_entropy(upsample(self.network.forward_all(strong).logits, y_mix.shape[-2:]),
                             y_mix, ignore_index=IGNORE_INDEX, reduction="none")
        valid = (y_mix != IGNORE_INDEX).float()
        mix = (weight * ce * valid).sum() / valid.sum().clamp_min(1)
        loss = sup + hp["dacs_weight"] * mix
        self.step(loss)
        self.teacher.update(self.network, ema_warmup_decay(int(self.num_updates), hp["dacs_ema"]))
        return {"loss": loss.item(), "sup_loss": sup.item(), "mix_loss": mix.item(),
                "confident_fraction": float(w_t), "mixed_source_share": mask.float().mean().item()}


# ---- CBST / CRST / TPLD --------------------------------------------------------------------


def window_vote(norm: torch.Tensor, confident: torch.Tensor, window: int, alpha: float,
                iters: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """TPLD's sliding-window voting. norm: B x K x H x W scores p_k / lambda_k; confident: B x H x W.

    For every pixel not yet labelled, its top-2 classes by own score; for each, pooled = mean of
    that class's score over the *labelled* pixels of the window x window neighbourhood (0 when
    there are none); combined = alpha * own + (1 - alpha) * pooled; the pixel takes the best
    candidate where combined >= 1 and the window holds a labelled pixel. Pixels labelled in one
    iteration vote in the next. Returns (labels B x H x W, labelled mask)."""
    labels = norm.argmax(1)
    labelled = confident.clone()
    scores = norm.clone()
    k, pad = norm.shape[1], window // 2
    ones = torch.ones(1, 1, window, window, dtype=norm.dtype, device=norm.device)
    top2 = norm.topk(min(2, k), dim=1).indices
    own = norm.gather(1, top2)
    for _ in range(iters):
        m = labelled[:, None].to(norm.dtype)
        count = F.conv2d(m, ones, padding=pad)
        sums = F.conv2d((scores * m).flatten(0, 1)[:, None], ones, padding=pad).view_as(scores)
        pooled = sums / count.clamp_min(1)
        combined = alpha * own + (1 - alpha) * pooled.gather(1, top2)
        best, pos = combined.max(1)
        new = ~labelled & (best >= 1) & (count[:, 0] > 0)
        if not bool(new.any()):
            break
        cls = top2.gather(1, pos[:, None])[:, 0]
        labels = torch.where(new, cls, labels)
        labelled = labelled | new
        upd = scores.scatter(1, cls[:, None], best[:, None])
        scores = torch.where(new[:, None], upd, scores)
    return labels, labelled


@register_algorithm
class SegCBST(RoundSelfTraining, SegAlgorithm):
    """CBST-SP (Zou et al., ECCV 2018): class-balanced self-training with spatial priors.

    Round k: lambda_c = confidence at rank floor(q_k N_c) among the snapshot's subsampled target
    pixels predicted as c (`class_balanced_thresholds`), the scores being p_c q_c(position) with
    the spatial prior q (source label frequencies per position, counted during training,
    box-smoothed over 1/8 of the image and normalised over classes with +1 smoothing [A]) when
    `SPATIAL_PRIOR`. Target pixel labels: argmax_c p_c q_c / lambda_c where that is >= 1,
    else ignored. Loss: [sum CE(source pixels) + sum CE(selected target pixels)] / #pixels counted.
    The same rule as the classification `CBST`, applied per pixel (plus the prior); both share
    the schedule, snapshot and thresholds of `RoundSelfTraining`."""

    SAME_METHOD_AS = "CBST"
    SETTINGS = ("uda",)
    PAPER = "Zou, Yu, Kumar & Wang, Unsupervised domain adaptation for semantic segmentation via " \
            "class-balanced self-training, ECCV 2018"
    SPATIAL_PRIOR = True

    def __init__(self, input_shape, num_classes, num_domains, hparams, **kwargs):
        super().__init__(input_shape, num_classes, num_domains, hparams, **kwargs)
        self.register_buffer("prior_counts", torch.zeros(num_classes, *self.input_shape[1:]))

    def spatial_prior(self) -> torch.Tensor:
        h, w = self.prior_counts.shape[-2:]
        kh, kw = max(1, h // 8) | 1, max(1, w // 8) | 1
        smooth = F.avg_pool2d(self.prior_counts[None], (kh, kw), 1, (kh // 2, kw // 2),
                              count_include_pad=False)[0] + 1.0
        return smooth / smooth.sum(0, keepdim=True)

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """The snapshot's pixel probabilities at input size (times the spatial prior)."""
        p = F.softmax(upsample(self.snapshot.forward_all(x).logits.float(), x.shape[-2:]), dim=1)
        if not self.SPATIAL_PRIOR:
            return p
        return p * upsample(self.spatial_prior()[None], p.shape[-2:])

    def label_round(self, k, target_batches):
        conf, pred = [], []
        for x in target_batches():
            c, p = self.scores(x)[..., ::2, ::2].max(dim=1)  # every 4th pixel
            conf.append(c.flatten())
            pred.append(p.flatten())
        conf, pred = torch.cat(conf), torch.cat(pred)
        self.fit_round(k, conf, pred)
        selected = (conf / self.thresholds[pred] >= 1).float().mean().item()
        return {"round_q": self.portion(k), "round_selected": selected,
                **self.after_labelling(target_batches)}

    def after_labelling(self, target_batches) -> dict[str, float]:
        return {}

    def lam(self) -> torch.Tensor:
        return self.thresholds.view(1, -1, 1, 1)

    def target_loss(self, logits, probs, xt) -> TargetLoss:
        """The target batch's loss terms, per pixel: CE to the selected pseudo-labels."""
        score, labels = (probs / self.lam()).max(dim=1)
        mask = score >= 1
        ce = F.cross_entropy(logits, labels, reduction="none")
        return TargetLoss((ce * mask).sum(), mask.sum(), 0.0, {"selected": mask.float().mean().item()})

    def update(self, minibatches, unlabeled=None):
        xs, ys = self.source_batch(minibatches)
        if self.SPATIAL_PRIOR:
            valid = ys != IGNORE_INDEX
            counts = F.one_hot(ys.clamp_max(self.num_classes - 1), self.num_classes).permute(
                0, 3, 1, 2).mul(valid[:, None]).sum(0).to(self.prior_counts.dtype)
            if counts.shape[-2:] != self.prior_counts.shape[-2:]:  # source crops: rescale
                counts = F.interpolate(counts[None], size=self.prior_counts.shape[-2:], mode="bilinear",
                                       align_corners=False)[0]
            self.prior_counts += counts
        if not self.pseudo_labelling(unlabeled):
            loss = seg_loss(self.network.forward_all(xs).logits, ys)
            self.step(loss)
            return {"loss": loss.item()}
        xt = torch.cat(list(unlabeled))
        with torch.no_grad():
            probs = self.scores(xt)
        if xs.shape[-2:] == xt.shape[-2:]:  # one forward pass (shared BatchNorm statistics)
            logits = upsample(self.network.forward_all(torch.cat([xs, xt])).logits, xs.shape[-2:])
            logits_s, logits_t = logits[: len(xs)], logits[len(xs):]
        else:  # source and target sizes differ (e.g. GTA5 1280x720, Cityscapes 1024x512)
            logits_s = upsample(self.network.forward_all(xs).logits, xs.shape[-2:])
            logits_t = upsample(self.network.forward_all(xt).logits, xt.shape[-2:])
        src = F.cross_entropy(logits_s, ys, ignore_index=IGNORE_INDEX, reduction="sum")
        target = self.target_loss(logits_t, probs, xt)
        loss = (src + target.total) / ((ys != IGNORE_INDEX).sum() + target.count).clamp_min(1) \
            + target.extra
        self.step(loss)
        if target.discriminator is not None:
            self.discriminator_step(*target.discriminator)
        return {"loss": loss.item(), **target.stats}


@register_algorithm
class SegCRST(SegCBST):
    """CRST-MRKLD (Zou et al., ICCV 2019): CBST's pixel selection (no spatial prior, as the
    released crst_seg.py) plus the model regulariser on the selected target pixels T:
    L = [sum_src CE + sum_T CE(y^, p)] / (#src + #T) + a * sum_T (-(1/K) sum_k log p_k) / #T,
    i.e. the regulariser is normalised by the target pixels only (released `reg_loss_calc`).
    The released code weights it twice with alpha (`--mr-weight-kld 0.1` is both the dataset's
    per-image reg weight and the loss factor), so a = alpha^2 (`crst_mrkld_scale="released"`,
    default); `"paper"` uses a = alpha, the paper's equation. The per-pixel form of the
    classification `CRST` with `crst_reg=mrkld`."""

    SAME_METHOD_AS = "CRST"
    PAPER = "Zou, Yu, Liu, Kumar & Wang, Confidence regularized self-training, ICCV 2019"
    SPATIAL_PRIOR = False
    HPARAMS = {
        "crst_mrkld_weight": HParam(0.1, LogUniform(-2, 0), low=0.0, help="MRKLD alpha"),
        "crst_mrkld_scale": HParam("released", None, choices=("released", "paper"), variant=True,
                                   help="regulariser weight alpha^2 (released code) or alpha"),
    }

    def mrkld_weight(self) -> float:
        alpha = self.hparams["crst_mrkld_weight"]
        return alpha * alpha if self.hparams["crst_mrkld_scale"] == "released" else alpha

    def mrkld_term(self, log_p: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """a * mean over the labelled target pixels of -(1/K) sum_k log p_k."""
        return self.mrkld_weight() * (mrkld(log_p) * mask).sum() / mask.sum().clamp_min(1)

    def target_loss(self, logits, probs, xt):
        score, labels = (probs / self.lam()).max(dim=1)
        mask = score >= 1
        log_p = F.log_softmax(logits, dim=1)
        ce = F.nll_loss(log_p, labels, reduction="none")
        return TargetLoss((ce * mask).sum(), mask.sum(), self.mrkld_term(log_p, mask),
                          {"selected": mask.float().mean().item()})


@register_algorithm(name="SegCRSTLRENT")
class SegCRSTLRENT(SegCBST):
    """CRST-LRENT (Zou et al., ICCV 2019): soft pseudo-labels y^_k proportional to
    (p_k / lambda_k)^(1/alpha), alpha 0.25, kept where sum_k [-y^_k log p_k + alpha y^_k log y^_k]
    < -sum_k y^_k log lambda_k (p the snapshot's), trained with soft CE. The per-pixel form of
    the classification `CRST` with `crst_reg=lrent`; no spatial prior (released code)."""

    PAPER = SegCRST.PAPER
    SPATIAL_PRIOR = False
    HPARAMS = {"crst_lrent_alpha": HParam(0.25, Choice([0.1, 0.25, 0.5]), low=1e-6, help="LRENT alpha")}

    def target_loss(self, logits, probs, xt):
        soft, keep = lrent_labels(probs.clamp_min(1e-12), self.lam(), self.hparams["crst_lrent_alpha"])
        per = -(soft * F.log_softmax(logits, dim=1)).sum(1)
        return TargetLoss((per * keep).sum(), keep.sum(), 0.0, {"selected": keep.float().mean().item()})


def image_confidence(norm: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """TPLD's image score (1/K') sum_{k present} (N_k* / N_k) (1 / lambda_k): N_k pixels predicted
    k, N_k* of them with p_k >= lambda_k, K' the classes present. norm: B x K x H x W = p / lambda."""
    k = norm.shape[1]
    pred = norm.argmax(1)
    above = norm.gather(1, pred[:, None])[:, 0] >= 1
    onehot = F.one_hot(pred, k).flatten(1, 2).to(norm.dtype)             # B x HW x K
    n = onehot.sum(1)
    n_star = (onehot * above.flatten(1)[..., None]).sum(1)
    present = n > 0
    ratio = torch.where(present, n_star / n.clamp_min(1), torch.zeros_like(n)) / lam.view(1, -1)
    return ratio.sum(1) / present.sum(1).clamp_min(1)


@register_algorithm
class SegTPLD(TPLDPhases, SegCRST):
    """TPLD (Shin, Woo, Pan & Kweon, ECCV 2020) on top of CRST-MRKLD, per pixel.

    Target loss: the bootstrapped L_boot = -sum_k [beta y_k + (1 - beta) p_k/lambda_k] log(p_k/lambda_k)
    (snapshot scores detached) plus CRST's MRKLD term, over the labelled target pixels.
    Phase 1 (all but the last `tpld_hard_rounds` rounds): pixels below every threshold are
    densified by `window_vote` (window `tpld_window`, alpha 0.7, 3 iterations) from the confident
    pixels of their window. Phase 2: images are easy when `image_confidence` is in the top
    `tpld_easy_share` of the target split (threshold fitted at the round start); easy images get
    dense labels (confident pixels one-hot, the rest (p/lambda)^gamma normalised, gamma 2) with
    L_boot; hard images are aligned to easy ones on the self-information maps I = -p log p by a
    patch discriminator, the segmenter with weight 1e-3 pushing D(I_hard) to 1, then D
    (`discriminator_step`, after the segmenter's step) trained easy 1, hard 0 (Adam 1e-4).
    The classification `TPLD` votes with feature-space neighbours instead of a window.
    Departures: no official code (details from the paper's description [R/A]); beta 0.9.
    """

    SAME_METHOD_AS = "TPLD"
    PAPER = "Shin, Woo, Pan & Kweon, Two-phase pseudo label densification for self-training based " \
            "domain adaptation, ECCV 2020"
    HPARAMS = {
        "tpld_window": HParam(5, Choice([3, 5]), low=1, help="voting window (odd)"),
        "disc_width": _disc_width,
    }

    def __init__(self, input_shape, num_classes, num_domains, hparams, **kwargs):
        super().__init__(input_shape, num_classes, num_domains, hparams, **kwargs)
        if int(self.hparams["tpld_window"]) % 2 == 0:
            raise ShiftbenchError(f"tpld_window must be odd, got {self.hparams['tpld_window']}")
        self.register_buffer("easy_threshold", torch.ones(()))
        self.discriminator = PatchDiscriminator(num_classes, int(self.hparams["disc_width"]),
                                                n_down_for(*self.input_shape[1:], 4))
        self.d_optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=1e-4, betas=(0.9, 0.99))

    def after_labelling(self, target_batches):
        if not self.hard_phase():
            return {}
        scores = torch.cat([image_confidence(self.scores(x) / self.lam(), self.thresholds)
                            for x in target_batches()])
        rank = min(len(scores), max(1, math.ceil(self.hparams["tpld_easy_share"] * len(scores))))
        self.easy_threshold.fill_(scores.sort(descending=True).values[rank - 1])
        return {"easy_threshold": float(self.easy_threshold)}

    def target_loss(self, logits, probs, xt):
        hp, lam = self.hparams, self.lam()
        norm = probs / lam
        labels = norm.argmax(1)
        confident = norm.max(1).values >= 1
        log_p = F.log_softmax(logits, dim=1)
        if not self.hard_phase():
            labels, mask = window_vote(norm, confident, int(hp["tpld_window"]), hp["tpld_vote_alpha"],
                                       int(hp["tpld_vote_iters"]))
            target = F.one_hot(labels, self.num_classes).permute(0, 3, 1, 2).to(norm.dtype)
            per = bootstrap_loss(log_p, target, norm, lam, hp["tpld_beta"])
            return TargetLoss((per * mask).sum(), mask.sum(), self.mrkld_term(log_p, mask),
                              {"labelled": mask.float().mean().item()})
        easy = image_confidence(norm, self.thresholds) >= self.easy_threshold
        soft = norm.pow(hp["tpld_gamma"])
        soft = soft / soft.sum(1, keepdim=True).clamp_min(1e-12)
        onehot = F.one_hot(labels, self.num_classes).permute(0, 3, 1, 2).to(norm.dtype)
        target = torch.where(confident[:, None], onehot, soft)
        per = bootstrap_loss(log_p, target, norm, lam, hp["tpld_beta"])[easy]
        reg = self.mrkld_term(log_p, easy[:, None, None].expand_as(labels))
        info = self_information(logits)
        adv = logits.new_zeros(())
        if bool((~easy).any()):
            adv = F.binary_cross_entropy_with_logits(*_ones(self.discriminator(info[~easy])))
        return TargetLoss(per.sum(), per.numel(), reg + hp["tpld_adv_weight"] * adv,
                          {"easy": easy.float().mean().item(), "adv_g": adv.item()},
                          discriminator=(info[easy].detach(), info[~easy].detach()))

    def discriminator_step(self, easy, hard):
        """The patch discriminator on self-information maps: BCE(D(I_easy), 1) + BCE(D(I_hard),
        0), averaged over its outputs (an empty set adds nothing)."""
        d_loss, n = 0.0, 0
        for maps, label in zip((easy, hard), (1.0, 0.0)):
            if len(maps):
                out = self.discriminator(maps)
                d_loss = d_loss + F.binary_cross_entropy_with_logits(out, torch.full_like(out, label),
                                                                     reduction="sum")
                n += out.numel()
        gradient_step(d_loss / max(1, n), self.d_optimizer)


def _ones(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return logits, torch.ones_like(logits)
