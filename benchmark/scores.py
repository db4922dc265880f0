"""Label-free scores of predictions on the unlabeled target split, for the uda selection rules.

The trainer calls `validator_scores` at each checkpoint for a held-out environment t and stores
the returned keys in the record; the rules `entropy`, `im`, `snd` and `dev` of
`shiftbench.results.selection` read them:

* `env{t}_uda_entropy` — mean over target examples of the prediction entropy H(p(y|x)) (lower
  is better; the entropy criterion of e.g. Morerio et al. 2018).
* `env{t}_uda_marginal_entropy` — H of the mean prediction, H(E_x p(y|x)); with the former it
  gives information maximisation IM = H(E p) - E H(p) (higher is better; Shi & Sha 2012,
  Liang et al. 2020).
* `env{t}_uda_snd` — soft neighbourhood density (Saito et al., ICCV 2021): softmax outputs are
  L2-normalised, pairwise cosine similarities (self excluded) are turned into a distribution
  per example with a softmax at temperature 0.05, and SND is the mean entropy of those
  distributions (higher is better: dense neighbourhoods).
* `env{t}_uda_dev` — deep embedded validation (You et al., ICML 2019): a domain classifier
  (logistic regression) separates source and target features; on the source validation set each
  example's loss is weighted by the density ratio w = (n_s / n_t) d(x) / (1 - d(x)) with d the
  predicted target probability, and the weighted mean loss is corrected with the control variate
  eta = -Cov(w l, w) / Var(w): DEV = mean(w l) + eta mean(w) - eta (lower is better).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from shiftbench.trial_record import record_key

SND_TEMPERATURE = 0.05


def _probs(logits: torch.Tensor) -> torch.Tensor:
    logits = torch.as_tensor(logits, dtype=torch.float64)
    if logits.ndim != 2 or len(logits) == 0:
        raise ValueError(f"expected non-empty [n, classes] logits, got shape {tuple(logits.shape)}")
    return F.softmax(logits, dim=1)


def _entropy(p: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return -(p * torch.log(p.clamp_min(1e-12))).sum(dim)


def prediction_entropy(logits: torch.Tensor) -> float:
    """Mean entropy of the predicted class distributions (nats)."""
    return float(_entropy(_probs(logits)).mean())


def marginal_entropy(logits: torch.Tensor) -> float:
    """Entropy of the mean predicted class distribution (nats)."""
    return float(_entropy(_probs(logits).mean(0)))


def information_maximization(logits: torch.Tensor) -> float:
    """H(mean prediction) - mean H(prediction): confident and diverse predictions score high."""
    return marginal_entropy(logits) - prediction_entropy(logits)


def soft_neighborhood_density(logits: torch.Tensor, temperature: float = SND_TEMPERATURE) -> float:
    """SND of the softmax outputs (needs at least 2 examples)."""
    p = F.normalize(_probs(logits), dim=1)
    if len(p) < 2:
        raise ValueError("SND needs at least 2 target examples")
    sim = p @ p.T
    sim.fill_diagonal_(float("-inf"))
    neighbours = F.softmax(sim / temperature, dim=1)
    return float(_entropy(neighbours).mean())


def dev_risk(source_features: np.ndarray, target_features: np.ndarray,
             source_val_features: np.ndarray, source_val_losses: np.ndarray, seed: int = 0) -> float:
    """Deep embedded validation risk of a model (lower is better).

    `source_features`/`target_features` train the domain classifier (source training examples
    and unlabeled target examples); `source_val_features`/`source_val_losses` are the features
    and per-example losses of the model on the labeled source validation examples.
    """
    from sklearn.linear_model import LogisticRegression

    xs, xt = np.asarray(source_features, float), np.asarray(target_features, float)
    xv, lv = np.asarray(source_val_features, float), np.asarray(source_val_losses, float)
    if min(len(xs), len(xt), len(xv)) == 0:
        raise ValueError("DEV needs source, target and source validation examples")
    x = np.concatenate([xs, xt])
    d = np.concatenate([np.zeros(len(xs)), np.ones(len(xt))])
    clf = LogisticRegression(max_iter=1000, random_state=seed).fit(x, d)
    p_target = np.clip(clf.predict_proba(xv)[:, 1], 1e-6, 1 - 1e-6)
    w = (len(xs) / len(xt)) * p_target / (1 - p_target)
    wl = w * lv
    var_w = np.var(w, ddof=1) if len(w) > 1 else 0.0
    eta = -np.cov(wl, w, ddof=1)[0, 1] / var_w if var_w > 0 else 0.0
    return float(np.mean(wl) + eta * np.mean(w) - eta)


def validator_scores(env: int, target_logits: torch.Tensor, *,
                     source_features: np.ndarray | None = None,
                     target_features: np.ndarray | None = None,
                     source_val_features: np.ndarray | None = None,
                     source_val_losses: np.ndarray | None = None) -> dict[str, float]:
    """The record keys for held-out environment `env` (DEV only when its inputs are given)."""
    scores = {record_key(env, "uda", "entropy"): prediction_entropy(target_logits),
              record_key(env, "uda", "marginal_entropy"): marginal_entropy(target_logits)}
    if len(target_logits) >= 2:
        scores[record_key(env, "uda", "snd")] = soft_neighborhood_density(target_logits)
    dev_inputs = (source_features, target_features, source_val_features, source_val_losses)
    if all(v is not None for v in dev_inputs):
        scores[record_key(env, "uda", "dev")] = dev_risk(*dev_inputs)
    return scores
