"""ADRMX: additive disentanglement of domain features with a remix loss (Demirel et al., 2023).

Two featurizers see each input: a label featurizer phi_l and a domain featurizer phi_d. The
domain-invariant feature is their difference, z = phi_l(x) - phi_d(x). With domain labels d,
an MLP discriminator D on z, classifier heads c1, c2 (labels) and c_d (domains), all 3-layer:

    discriminator turns:  L_D = CE(D(z), d)                       (only D is updated)
    generator turns:      L_G = CE(c1(phi_l), y) + CE(c2(z), y) + dclf * CE(c_d(phi_d), d)
                                + rmxd * L_remix + cnt * (SC(phi_l) + SC(z)) - disc * CE(D(z), d)
    L_remix = (1 / C) sum_{class k} CE(c1(z_a + phi_d(x_b)), y_a),  a, b of class k, different domains

SC is a supervised contrastive loss (temperature 0.07) whose positives and negatives from the
anchor's own domain weigh 0.5 and those from other domains 1 - 0.5 (DomainBed's
SupConLossLambda). Update t (counted from 1) is a discriminator turn when
t mod (d_steps_per_g_step + 1) < d_steps_per_g_step. Prediction: c1(phi_l(x)).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from shiftbench import networks
from shiftbench.algorithms.base import Algorithm, register_algorithm, step
from shiftbench.hparams import Choice, HParam


def supcon_lambda_loss(features: torch.Tensor, labels: torch.Tensor, domains: torch.Tensor,
                       lam: float = 0.5, temperature: float = 0.07) -> torch.Tensor:
    """Domain-weighted supervised contrastive loss; anchors without a positive are skipped.

    For anchor i: s_ij = cos(f_i, f_j) / T, e_ij = w_ij exp(s_ij) with w_ij = lam for j in i's
    domain and 1 - lam otherwise (j != i); l_i = mean over positives p (same label, p != i) of
    log(e_ip / (sum_{j != i} e_ij + 1e-5) + 1e-5). Loss = -sum_i l_i / (N - skipped + 1).
    """
    n = len(features)
    unit = F.normalize(features, p=2, dim=1)
    eye = torch.eye(n, dtype=torch.bool, device=features.device)
    same_domain = domains[:, None] == domains[None, :]
    weights = torch.where(same_domain, lam, 1.0 - lam).to(features.dtype).masked_fill(eye, 0.0)
    scaled = weights * torch.exp(unit @ unit.T / temperature)
    denominator = scaled.sum(1, keepdim=True) + 1e-5
    positive = (labels[:, None] == labels[None, :]) & ~eye
    log_fraction = torch.where(positive, torch.log(scaled / denominator + 1e-5), 0.0)
    count = positive.sum(1)
    valid = count > 0
    per_anchor = log_fraction.sum(1)[valid] / count[valid]
    return -per_anchor.sum() / (int(valid.sum()) + 1)


def supcon_lambda_loss_ordered(features: torch.Tensor, labels: torch.Tensor, domains: torch.Tensor,
                               lam: float = 0.5, temperature: float = 0.07) -> torch.Tensor:
    """`supcon_lambda_loss` anchor by anchor, summing in DomainBed's order (its negatives in, out
    of domain, then its positives in, out of domain), so that the float rounding is DomainBed's.
    Adam turns rounding-level gradient differences on near-zero coordinates into visible
    parameter differences, so the DomainBed protocol uses this slower form."""
    unit = F.normalize(features, p=2, dim=1)
    sims = unit @ unit.T / temperature
    total, skipped = features.new_zeros(()), 0
    for i in range(len(features)):
        same_label, same_domain = labels == labels[i], domains == domains[i]
        pos_in = same_label & same_domain
        pos_in[i] = False
        col = sims[:, i]
        numerators = torch.cat((lam * torch.exp(col[pos_in]),
                                (1 - lam) * torch.exp(col[same_label & ~same_domain])))
        negatives = torch.cat((lam * torch.exp(col[~same_label & same_domain]),
                               (1 - lam) * torch.exp(col[~same_label & ~same_domain])))
        denominator = torch.sum(torch.cat((negatives, numerators))) + 1e-5
        term = torch.sum(torch.log(numerators / denominator + 1e-5)) / len(numerators)
        if torch.isnan(term):
            skipped += 1
            continue
        total = total - term
    return total / (len(features) - skipped + 1)


def _lr(small: bool) -> HParam:
    if small:
        return HParam(3e-3, Choice([5e-4, 1e-3, 2e-3, 3e-3]), low=0.0, help="Adam learning rate")
    return HParam(3e-5, Choice([2e-5, 3e-5, 4e-5, 5e-5]), low=0.0, help="Adam learning rate")


_VARIANT_HELP = "remix pairs: two samples of one class (paper) or DomainBed's indexing"


@register_algorithm
class ADRMX(Algorithm):
    """ADRMX (Demirel, Aptoula & Ozkan, 2023), as DomainBed; equations in the module docstring.

    Defaults (shiftbench = DomainBed; DomainBed searches only lr and mlp_depth): cnt_lambda 1,
    dclf_lambda 1, disc_lambda 0.75, rmxd_lambda 1, d_steps_per_g_step 2, beta1 0.5 (both Adams
    use betas (beta1, 0.9), no weight decay: `weight_decay` is unused, as DomainBed);
    discriminator MLP mlp_width 256, mlp_depth 9 / choice{8,9,10}, mlp_dropout 0; lr 3e-3 /
    choice{5e-4,1e-3,2e-3,3e-3} on small inputs, else 3e-5 / choice{2e-5,3e-5,4e-5,5e-5}.
    `adrmx_variant`: "paper" (shiftbench default) remixes two samples of class k from different
    domains (the paper mixes samples of different domains; same domain only if class k has no
    other in the batch);
    "domainbed" (DomainBed protocol) reproduces DomainBed's code, which draws two positions
    within class k's index list but uses them as positions in the whole batch (so the pair is
    two of the first n_k samples, of any class, labelled by the first one's label), and sums
    the contrastive and remix losses term by term in DomainBed's order (same rounding: with
    Adam, rounding-level gradient differences on near-zero coordinates otherwise show). Both
    draw the pairs with torch's global generator in the same order as DomainBed.
    """

    SETTINGS = ("dg",)
    PAPER = ("Demirel, Aptoula & Ozkan, ADRMX: Additive Disentanglement of Domain Features with Remix "
             "Loss, arXiv:2308.06624, 2023")
    HPARAMS = {
        "cnt_lambda": HParam(1.0, None, low=0.0, help="weight of the two contrastive losses"),
        "dclf_lambda": HParam(1.0, None, low=0.0, help="weight of the domain classifier's CE"),
        "disc_lambda": HParam(0.75, None, low=0.0, help="weight of the adversarial term"),
        "rmxd_lambda": HParam(1.0, None, low=0.0, help="weight of the remix loss"),
        "d_steps_per_g_step": HParam(2, None, low=1, help="discriminator turns per generator turn"),
        "beta1": HParam(0.5, None, low=0.0, high=1.0, help="Adam beta1 (beta2 = 0.9)"),
        "mlp_width": HParam(256, None, low=1, help="discriminator width (and vector featurizers')"),
        "mlp_depth": HParam(9, Choice([8, 9, 10]), low=2, help="discriminator depth"),
        "mlp_dropout": HParam(0.0, None, low=0.0, high=1.0),
        "lr": lambda ds: _lr(ds.small_images or ds.is_vector),
        "adrmx_variant": HParam("paper", None, choices=("paper", "domainbed"), variant=True,
                                help=_VARIANT_HELP),
    }
    DOMAINBED_HPARAMS = {
        "lr": lambda ds: _lr(ds.domainbed_small or ds.is_vector),
        "adrmx_variant": HParam("domainbed", None, choices=("paper", "domainbed"), variant=True,
                                help=_VARIANT_HELP),
    }

    def __init__(self, input_shape, num_classes, num_domains, hparams, **kwargs):
        super().__init__(input_shape, num_classes, num_domains, hparams, **kwargs)
        self.featurizer_label = networks.Featurizer(input_shape, self.hparams)
        self.featurizer_domain = networks.Featurizer(input_shape, self.hparams)
        n = self.featurizer_label.n_outputs
        self.discriminator = networks.MLP(n, num_domains, self.hparams)
        self.classifier_label_1 = networks.Classifier(n, num_classes, nonlinear=True)
        self.classifier_label_2 = networks.Classifier(n, num_classes, nonlinear=True)
        self.classifier_domain = networks.Classifier(n, num_domains, nonlinear=True)
        self.network = torch.nn.Sequential(self.featurizer_label, self.classifier_label_1)
        betas = (float(self.hparams["beta1"]), 0.9)
        self.disc_opt = torch.optim.Adam(self.discriminator.parameters(), lr=self.hparams["lr"], betas=betas)
        generator = [self.featurizer_label, self.featurizer_domain, self.classifier_label_1,
                     self.classifier_label_2, self.classifier_domain]
        self.opt = torch.optim.Adam([p for m in generator for p in m.parameters()], lr=self.hparams["lr"],
                                    betas=betas)

    def remix_pairs(self, y: torch.Tensor, d: torch.Tensor) -> list[tuple[int, int]]:
        """One (a, b) pair per class with at least two samples, from one torch.randperm per class."""
        pairs = []
        for k in range(self.num_classes):
            members = torch.nonzero(y == k)[:, 0]
            order = torch.randperm(len(members))
            if len(order) < 2:
                continue
            if self.hparams["adrmx_variant"] == "domainbed":
                pairs.append((int(order[0]), int(order[1])))
                continue
            a = int(members[order[0]])
            others = [int(members[j]) for j in order[1:] if d[members[j]] != d[a]]
            pairs.append((a, others[0] if others else int(members[order[1]])))
        return pairs

    def remix_loss(self, z: torch.Tensor, f_domain: torch.Tensor, y: torch.Tensor, d: torch.Tensor
                   ) -> torch.Tensor:
        """(1 / C) sum over remix pairs (a, b) of CE(c1(z_a + phi_d(x_b)), y_a)."""
        pairs = self.remix_pairs(y, d)
        if not pairs:
            return z.new_zeros(())
        if self.hparams["adrmx_variant"] == "domainbed":  # one pair at a time: DomainBed's rounding
            return sum(F.cross_entropy(self.classifier_label_1((z[a] + f_domain[b])[None]), y[a:a + 1])
                       for a, b in pairs) / self.num_classes
        a, b = torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])
        logits = self.classifier_label_1(z[a] + f_domain[b])
        return F.cross_entropy(logits, y[a], reduction="sum") / self.num_classes

    def update(self, minibatches, unlabeled=None):
        x = torch.cat([b for b, _ in minibatches])
        y = torch.cat([t for _, t in minibatches])
        d = torch.cat([torch.full((len(b),), i, dtype=torch.long, device=x.device)
                       for i, (b, _) in enumerate(minibatches)])
        f_label, f_domain = self.featurizer_label(x), self.featurizer_domain(x)
        z = f_label - f_domain
        disc_loss = F.cross_entropy(self.discriminator(z), d)
        steps = int(self.hparams["d_steps_per_g_step"])
        if (int(self.num_updates) + 1) % (steps + 1) < steps:
            step(disc_loss, self.disc_opt)
            return {"loss_disc": disc_loss.item()}

        hp = self.hparams
        clf_domain = F.cross_entropy(self.classifier_domain(f_domain), d)
        clf_int = F.cross_entropy(self.classifier_label_1(f_label), y)
        supcon = supcon_lambda_loss_ordered if hp["adrmx_variant"] == "domainbed" else supcon_lambda_loss
        cnt_int = supcon(f_label, y, d)
        clf_fin = F.cross_entropy(self.classifier_label_2(z), y)
        cnt_fin = supcon(z, y, d)
        remix = self.remix_loss(z, f_domain, y, d)
        loss = (clf_int + clf_fin + hp["dclf_lambda"] * clf_domain + hp["rmxd_lambda"] * remix
                + hp["cnt_lambda"] * (cnt_int + cnt_fin) - hp["disc_lambda"] * disc_loss)
        self.disc_opt.zero_grad(set_to_none=True)  # D only relays the gradient of -disc * L_D
        step(loss, self.opt)
        return {"loss_total": loss.item(), "loss_cnt_int": cnt_int.item(), "loss_cnt_final": cnt_fin.item(),
                "loss_clf_int": clf_int.item(), "loss_clf_fin": clf_fin.item(), "loss_dmn": clf_domain.item(),
                "loss_disc": disc_loss.item(), "loss_remixed": remix.item()}

    def predict(self, x):
        return self.network(x)


__all__ = ["ADRMX", "supcon_lambda_loss"]
