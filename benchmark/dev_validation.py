"""What deep embedded validation (DEV; You et al., ICML 2019) needs, computed at a checkpoint.

DEV estimates the target risk from labeled *source validation* examples, each loss weighted by
the density ratio w(x) = p_target(x) / p_source(x) of its features, estimated by a domain
classifier trained on source and target features (`shiftbench.scores.dev_risk`
does the estimation). At each checkpoint the trainer passes the model and the splits here:

* features: the algorithm's `featurizer` output when it has one (the embedding DEV is defined
  on), else its logits (`predict`);
* domain classifier: features of at most `DEV_MAX_EXAMPLES` training examples of the source
  domains (a fixed subset per trial seed) against the unlabeled target split the algorithm
  adapts to (at most as many, also fixed);
* validation: every example of the sources' validation (`out`) splits, with its cross-entropy.

No target label is read. The result is the record key `env{t}_uda_dev` (lower is better) that
`--selection dev` reads.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from shiftbench.data import eval_batches
from shiftbench.seeds import seed_hash
from shiftbench.trial_record import record_key

DEV_MAX_EXAMPLES = 1000


def embed(algorithm: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, logits) of a batch: the featurizer's output, or the logits without one."""
    logits = algorithm.predict(x)
    featurizer = getattr(algorithm, "featurizer", None)
    features = featurizer(x) if isinstance(featurizer, torch.nn.Module) else logits
    return features.flatten(1).float(), logits.float()


def _subset(idx: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    if len(idx) <= n:
        return idx
    g = torch.Generator().manual_seed(seed)
    return idx[torch.randperm(len(idx), generator=g)[:n]].sort().values


def _pass(algorithm, env, idx, device, batch_size: int, with_loss: bool):
    feats, losses = [], []
    for x, y in eval_batches(env, idx, batch_size):
        f, logits = embed(algorithm, x.to(device))
        feats.append(f.cpu())
        if with_loss:
            losses.append(F.cross_entropy(logits, y.to(device), reduction="none").cpu())
    features = torch.cat(feats).double().numpy() if feats else np.zeros((0, 1))
    return features, (torch.cat(losses).double().numpy() if losses else None)


@torch.no_grad()
def dev_score(algorithm: torch.nn.Module, datasets: Sequence, splits: Sequence, source_envs:
              Sequence[int], target_env: int, trial_seed: int, device: torch.device,
              batch_size: int = 128) -> dict[str, float]:
    """`{env{t}_uda_dev: risk}` for target `target_env` (empty when a split is missing)."""
    from shiftbench.scores import dev_risk

    target = _subset(splits[target_env].uda, DEV_MAX_EXAMPLES,
                     seed_hash(trial_seed, target_env, "dev"))
    if len(target) == 0 or not source_envs:
        return {}
    per_source = max(1, DEV_MAX_EXAMPLES // len(source_envs))
    src_feats, val_feats, val_losses = [], [], []
    for i in source_envs:
        train_idx = _subset(splits[i].in_, per_source, seed_hash(trial_seed, i, "dev"))
        src_feats.append(_pass(algorithm, datasets[i], train_idx, device, batch_size, False)[0])
        f, loss = _pass(algorithm, datasets[i], splits[i].out, device, batch_size, True)
        if loss is not None:
            val_feats.append(f)
            val_losses.append(loss)
    if not val_feats:
        return {}
    tgt_feats = _pass(algorithm, datasets[target_env], target, device, batch_size, False)[0]
    risk = dev_risk(np.concatenate(src_feats), tgt_feats, np.concatenate(val_feats),
                    np.concatenate(val_losses), seed=trial_seed)
    return {record_key(target_env, "uda", "dev"): risk} if np.isfinite(risk) else {}
