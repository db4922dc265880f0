"""Evaluation of a trial on a segmentation dataset: mIoU and per-class IoU per split.

For every split the classification evaluator would score, the confusion matrix is accumulated
over all its images (`shiftbench.seg_metrics.SegmentationScores`) and recorded as
`env{i}_{split}_miou` and `env{i}_{split}_iou_<class>`; the unlabeled target split also gets the
label-free `env{i}_uda_entropy` / `env{i}_uda_marginal_entropy` (pixel averages) for the entropy
and IM selection rules. Settings that adapt at test time feed the test stream to `adapt(x)` on a
copy of the model, batch by batch (episodic mode resets after each batch).
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from shiftbench.data import eval_batches
from shiftbench.seg_metrics import SegmentationScores
from shiftbench.setting import get_setting

EVAL_BATCH = 32


def evaluate_segmentation(trial: Any) -> dict[str, float]:
    """The segmentation record entries of one checkpoint of `trial` (a trainer `Trial`)."""
    from shiftbench.trainer import autocast

    algorithm, args, dataset = trial.algorithm, trial.args, trial.dataset
    setting = get_setting(args.task)
    names = list(dataset.CLASSES or [])
    out: dict[str, float] = {}
    was_training = algorithm.training
    algorithm.eval()
    for i, env in enumerate(dataset.datasets):
        is_test = i in args.test_envs
        for split_name, idx in trial.splits[i].named().items():
            if len(idx) == 0 or (split_name == "in" and not is_test and args.eval_splits == "selection"):
                continue
            scores = SegmentationScores(dataset.num_classes, names, dataset.IGNORE_INDEX,
                                        entropy=is_test and split_name == "uda")
            if is_test and setting.adapts_at_test and split_name in ("in", "out"):
                _adapt_stream(trial, env, idx, i, split_name, scores)
            else:
                with torch.inference_mode(), autocast(trial):
                    for x, y in eval_batches(env, idx, EVAL_BATCH):
                        scores.update(algorithm.predict(x.to(trial.device)).float(), y)
            out.update(scores.results(f"env{i}_{split_name}"))
    algorithm.train(was_training)
    return out


def _adapt_stream(trial, env, idx, env_i: int, split_name: str, scores: SegmentationScores) -> None:
    from shiftbench.seeds import seed_hash
    from shiftbench.trainer import autocast

    adapted = copy.deepcopy(trial.algorithm)
    g = torch.Generator().manual_seed(seed_hash(trial.args.trial_seed, env_i, split_name, "tta"))
    stream = idx[torch.randperm(len(idx), generator=g)]
    for x, y in eval_batches(env, stream, int(trial.hparams["batch_size"])):
        with autocast(trial):
            logits = adapted.adapt(x.to(trial.device))
        scores.update(logits.detach().float(), y)
        if trial.args.tta_mode == "episodic":
            adapted.reset_adaptation()
