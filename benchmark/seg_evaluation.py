"""Evaluation of a trial on a segmentation dataset: mIoU and per-class IoU per split.

For every split the classification evaluator would score, the confusion matrix is accumulated
over all its images (`shiftbench.seg_metrics.SegmentationScores`) and recorded as
`env{i}_{split}_miou` and `env{i}_{split}_iou_<class>`; the unlabeled target split also gets the
label-free `env{i}_uda_entropy` / `env{i}_uda_marginal_entropy` (pixel averages) for the entropy
and IM selection rules. Settings that adapt at test time score the engine's adaptation stream
(`adapt(x)` on a copy of the model, in the trial's order; episodic mode resets per batch).
"""

from __future__ import annotations

from typing import Any

import torch

from shiftbench.data import eval_batches
from shiftbench.seg_metrics import SegmentationScores
from shiftbench.splits import UNLABELED_SPLIT

EVAL_BATCH = 32


def evaluate_segmentation(trial: Any) -> dict[str, float]:
    """The segmentation record entries of one checkpoint of `trial` (a trainer `Trial`), over
    the engine's scored splits (`shiftbench.evaluation.scored_splits`)."""
    from shiftbench.evaluation import adaptation_stream, scored_splits
    from shiftbench.trial import autocast

    algorithm, dataset = trial.algorithm, trial.dataset
    names = list(dataset.CLASSES or [])
    out: dict[str, float] = {}
    was_training = algorithm.training
    algorithm.eval()
    for i, env, split_name, idx, adapt in scored_splits(trial):
        scores = SegmentationScores(dataset.num_classes, names, dataset.IGNORE_INDEX,
                                    entropy=i in trial.args.test_envs and split_name == UNLABELED_SPLIT)
        if adapt:
            for logits, y in adaptation_stream(trial, env, idx, i, split_name):
                scores.update(logits.float(), y)
        else:
            with torch.inference_mode(), autocast(trial):
                for x, y in eval_batches(env, idx, EVAL_BATCH):
                    scores.update(algorithm.predict(x.to(trial.device)).float(), y)
        out.update(scores.results(i, split_name))
    algorithm.train(was_training)
    return out
