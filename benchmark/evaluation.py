"""Scoring a trial at a checkpoint: the record entries of every split model selection can read.

Two independent axes decide how:

* the dataset's task type picks the evaluator (`register_evaluator`): "classification" (below:
  `env{i}_{split}_acc`, plus label-free scores of the unlabeled target split and the DEV risk,
  `shiftbench.dev_validation`) or another one
  registered by its module (e.g. "segmentation", mIoU); an evaluator is `fn(trial) -> dict`;
* the `Setting` says whether the test stream is predicted or adapted on (`adapts_at_test`): then a
  copy of the model runs `adapt(x)` over the test stream, shuffled once per trial seed (episodic
  mode resets it after every batch).

`scored_splits(trial)` is the one rule for which splits are scored, shared by every evaluator:
all splits of test and unused domains, the validation (`out`) splits of source domains (their
training splits too with `--eval-splits all`), never an empty split.
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

from shiftbench.data import accuracy_counts, eval_batches
from shiftbench.datasets.segmentation import task_type_of
from shiftbench.dev_validation import dev_score
from shiftbench.errors import UnknownNameError
from shiftbench.seeds import seed_hash
from shiftbench.splits import UNLABELED_SPLIT
from shiftbench.trial import Trial, autocast
from shiftbench.trial_record import record_key

Evaluator = Callable[[Trial], dict[str, float]]
_EVALUATORS: dict[str, Evaluator] = {}
# Evaluators imported on first use, as "module:function" (keeps their imports out of the others).
LAZY_EVALUATORS = {"segmentation": "shiftbench.seg_evaluation:evaluate_segmentation"}
SND_MAX_EXAMPLES = 2000


def register_evaluator(task_type: str) -> Callable[[Evaluator], Evaluator]:
    def decorator(fn: Evaluator) -> Evaluator:
        _EVALUATORS[task_type] = fn
        return fn

    return decorator


def evaluator_for(task_type: str) -> Evaluator:
    if task_type not in _EVALUATORS and task_type in LAZY_EVALUATORS:
        module, function = LAZY_EVALUATORS[task_type].split(":")
        _EVALUATORS[task_type] = getattr(importlib.import_module(module), function)
    try:
        return _EVALUATORS[task_type]
    except KeyError:
        raise UnknownNameError("task type", task_type, set(_EVALUATORS) | set(LAZY_EVALUATORS)) \
            from None


def evaluate(trial: Trial) -> dict[str, float]:
    """The record entries of the current model, by the dataset's task type's evaluator.

    In the transductive mode a test environment's `in` split is its `uda` split (the same
    tensor): it is scored once, and each `env{t}_uda_<metric>` that every split has (those of
    `out`) is also recorded as `env{t}_in_<metric>`."""
    scores = evaluator_for(task_type_of(trial.dataset))(trial)
    for i in trial.args.test_envs:
        if trial.splits[i].in_ is not trial.splits[i].uda:
            continue
        prefix = record_key(i, "out", "")  # "env{i}_out_"
        for key in [k for k in scores if k.startswith(prefix)]:
            metric = key[len(prefix):]
            if record_key(i, "uda", metric) in scores:
                scores[record_key(i, "in", metric)] = scores[record_key(i, "uda", metric)]
    return scores


def scored_splits(trial: Trial) -> Iterator[tuple[int, Any, str, torch.Tensor, bool]]:
    """`(env index, env, split name, indices, adapt)` of every split to score; `adapt` when the
    setting adapts at test time on this (test-domain `in`/`out`) split."""
    args = trial.args
    for i, env in enumerate(trial.dataset.datasets):
        is_test = i in args.test_envs
        is_source = i in trial.train_envs
        for split_name, idx in trial.splits[i].named().items():
            if len(idx) == 0:
                continue
            if split_name == "in" and is_source and args.eval_splits == "selection":
                continue  # no selection rule reads a training domain's training split
            if split_name == "in" and idx is trial.splits[i].uda:
                continue  # transductive: `in` is the `uda` split, scored once (`evaluate`)
            adapt = is_test and trial.setting.adapts_at_test and split_name in ("in", "out")
            yield i, env, split_name, idx, adapt


def adaptation_stream(trial: Trial, env, idx: torch.Tensor, env_i: int, split_name: str
                      ) -> Iterator[tuple[Any, torch.Tensor, torch.Tensor]]:
    """`(adapted model, x, y)` over the test stream of one split: `adapt(x)` on a copy of the
    model, in an order fixed by the trial seed; episodic mode resets after each batch (after the
    caller has used the batch)."""
    adapted = copy.deepcopy(trial.algorithm)
    # "tta" salts the stream order (a fixed string: changing it changes every adapt result)
    g = torch.Generator().manual_seed(seed_hash(trial.args.trial_seed, env_i, split_name, "tta"))
    stream = idx[torch.randperm(len(idx), generator=g)]
    for x, y in eval_batches(env, stream, int(trial.hparams["batch_size"])):
        with autocast(trial):
            logits = adapted.adapt(x.to(trial.device))
        yield logits.detach(), y
        if trial.args.resets_adaptation_per_batch:
            adapted.reset_adaptation()


@register_evaluator("classification")
def evaluate_classification(trial: Trial) -> dict[str, float]:
    """Accuracy of every scored split; label-free scores of the unlabeled target split."""
    algorithm = trial.algorithm
    accs: dict[str, float] = {}
    was_training = algorithm.training
    algorithm.eval()
    # On CPUs, batches of ~128 keep the activations of small CNNs in cache (512 is slower).
    bs = 128 if trial.device.type == "cpu" else 1024
    for i, env, split_name, idx, adapt in scored_splits(trial):
        correct = 0
        if adapt:
            for logits, y in adaptation_stream(trial, env, idx, i, split_name):
                correct += accuracy_counts(logits, y.to(trial.device))
            accs[record_key(i, split_name)] = correct / len(idx)
            continue
        kept = []
        keep_logits = i in trial.args.test_envs and split_name == UNLABELED_SPLIT
        with torch.inference_mode(), autocast(trial):
            for x, y in eval_batches(env, idx, bs):
                logits = algorithm.predict(x.to(trial.device, non_blocking=True))
                correct += accuracy_counts(logits, y.to(trial.device))
                if keep_logits:
                    kept.append(logits.float().cpu())
        accs[record_key(i, split_name)] = correct / len(idx)
        if kept:
            accs.update(unsupervised_scores(trial, i, torch.cat(kept)))
            with torch.inference_mode(), autocast(trial):  # the `dev` rule's risk
                accs.update(dev_score(algorithm, trial.dataset.datasets, trial.splits,
                                      trial.train_envs, i, trial.args.trial_seed, trial.device, bs))
    algorithm.train(was_training)
    return accs


def unsupervised_scores(trial: Trial, env_i: int, logits: torch.Tensor) -> dict[str, float]:
    """Label-free scores of the predictions on the unlabeled target split (for the `entropy`,
    `im` and `snd` selection rules). Entropies use every example; SND compares all pairs, so it
    sees at most `SND_MAX_EXAMPLES`, the same subset at every checkpoint of a trial."""
    from shiftbench.scores import marginal_entropy, prediction_entropy, validator_scores

    subset = logits
    if len(logits) > SND_MAX_EXAMPLES:
        g = torch.Generator().manual_seed(seed_hash(trial.args.trial_seed, env_i, "snd"))
        subset = logits[torch.randperm(len(logits), generator=g)[:SND_MAX_EXAMPLES]]
    scores = validator_scores(env_i, subset)
    scores[record_key(env_i, "uda", "entropy")] = prediction_entropy(logits)
    scores[record_key(env_i, "uda", "marginal_entropy")] = marginal_entropy(logits)
    return scores
