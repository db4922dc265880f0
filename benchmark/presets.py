"""Named hparam presets: a published training protocol as one name, usable for many algorithms.

A preset is resolved per algorithm into plain hparam overrides (what `--hparams` takes), so a
record's `hparams` always show exactly what ran. User overrides (`--hparams`, a sweep's fixed
values and grids) are applied on top of the preset.

* `dann_digits` - the MNIST protocol of Ganin et al., Domain-Adversarial Training of Neural
  Networks (JMLR 2016, section 5.2.2 and Fig. 4a): the network `dann_digits` (two 5x5 conv blocks
  with 32 and 48 channels and 2x2 max-pooling, label head 100-100, domain classifier with one
  hidden layer of 100), SGD with momentum 0.9, learning rate mu_p = 0.01 / (1 + 10 p)^0.75 and
  batches of 64 source + 64 target examples, He initialisation and inputs centred to [-1, 1]
  (`network_init`, `input_center`; the paper states neither: without them source-only training
  stalls at chance on the coloured domains, docs/reproductions.md); the adversarial weight follows
  lambda_p = 2 / (1 + exp(-10 p)) - 1 (DANN, CDANN, CDAN(+E), BSP: their own schedules with
  gamma = 10). Every learning rate an algorithm declares (`lr`, `lr_g`, `lr_d`, `lr_target`) is
  set to 0.01 and annealed; every domain classifier width (`disc_width`) to 100 and, where the
  depth is an hparam, to one hidden layer. Algorithms that bring their own head keep it (SHOT's
  256-d bottleneck and weight-normalised classifier, MME's cosine classifier). In uda/ssda its
  trials are transductive by default (`da_mode`, shiftbench.splits): the algorithm adapts on the
  whole target domain and is tested on it, as the paper reports MNIST-M.
* `dacs_gta5`, `dacs_synthia`, `adaptsegnet_gta5`, `adaptsegnet_synthia` - the road-scene
  segmentation recipes of DACS (Tranheden et al., WACV 2021) and AdaptSegNet (Tsai et al., CVPR
  2018) as their released code runs them: DeepLab-v2 with SGD 2.5e-4 (head 10x), momentum 0.9,
  weight decay 5e-4, poly 0.9; the data protocol of `shiftbench.datasets.road_protocol` (source
  and target resize, crops, no flips, Cityscapes train as the unlabeled target and its 500 val
  images as the test split); each method's own loss weights where the algorithm declares them;
  `steps` is the paper's number of iterations (`shiftbench train`'s default under the preset).
  Initial weights come from a local file (`--weights`, e.g. the COCO DeepLab-v2 both start from).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shiftbench.errors import ShiftbenchError, UnknownNameError


@dataclass(frozen=True)
class Preset:
    """`required`: set for every algorithm (each must be a declared hparam); `optional`: set
    where the algorithm declares that hparam."""

    description: str
    required: Mapping[str, Any]
    optional: Mapping[str, Any] = field(default_factory=dict)
    task_type: str = "classification"
    # per algorithm, over `required` and `optional` (each a declared hparam of that algorithm)
    per_algorithm: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # the trial's `da_mode` in a uda/ssda setting when none is given (None: the default without
    # a preset, transductive in a task suite, else inductive)
    da_mode: str | None = None
    applies_to: str = "images of at most 32x32 (the network hparam)"
    steps: int | None = None  # the paper's iterations: `train`'s default --steps under the preset


def _road(source_size: str, **recipe: Any) -> dict[str, Any]:
    """The DeepLab-v2 optimisation every road-scene paper shares, with one paper's data recipe."""
    return {"seg_network": "deeplabv2", "lr": 2.5e-4, "momentum": 0.9, "weight_decay": 5e-4,
            "poly_power": 0.9, "source_size": source_size, "target_size": "1024x512",
            "random_flip": False, "target_split": "official", **recipe}


_DACS = {"dacs_weight": 1.0, "dacs_ema": 0.99, "dacs_threshold": 0.968, "dacs_jitter": 0.25,
         "dacs_teacher_bn": "train"}
_ADAPTSEGNET = {"adv_weight": 1e-3, "adv_weight_aux": 2e-4, "seg_weight_aux": 0.1, "lr_d": 1e-4,
                "disc_width": 64}
_ROAD_SETS = "GTA5Cityscapes / SynthiaCityscapes16 / SynthiaCityscapes13 (road-scene datasets)"


PRESETS: dict[str, Preset] = {
    "dann_digits": Preset(
        description="DANN paper's MNIST network and SGD protocol (Ganin et al., JMLR 2016)",
        required={"network": "dann_digits", "optimizer": "sgd", "momentum": 0.9, "lr": 0.01,
                  "lr_schedule": "dann", "weight_decay": 0.0, "batch_size": 64,
                  "nonlinear_classifier": False, "network_init": "he", "input_center": True},
        optional={
            # DANN / CDANN: the paper's reversal scheme with its own SGD switch
            "dann_scheme": "reversal", "dann_optimizer": "sgd", "lambda": 1.0,
            "lambda_schedule": True, "schedule_gamma": 10.0, "lr_g": 0.01, "lr_d": 0.01,
            "weight_decay_g": 0.0, "weight_decay_d": 0.0, "grad_penalty": 0.0,
            # every domain classifier: one hidden layer of 100
            "disc_width": 100, "disc_depth": 2, "disc_dropout": 0.0,
            # CDAN, CDAN+E, BSP: the same lambda schedule; the target lr of phased methods
            # (ADDA, GAM override it below: both collapse at 0.01)
            "grl_gamma": 10.0, "lr_target": 0.01,
        },
        # ADDA's adversarial phase (inverted-label GAN on a copy of the encoder): at SGD lr 0.01
        # its target encoder collapses within 250 steps of the switch (mnist->mnist_m, seed 0:
        # 40.4 % -> 10.0 %, source validation 10.5 %); at 1e-3 it does not (41.1 -> 42.1 %)
        # (docs/reproductions.md). The paper's own phase 2 is Adam at 2e-4.
        # GAM's target network (adversarial + Gaussian matching, same switch at 500 of 1,000
        # steps) collapses the same way at 0.01: paired trial seed 0, source validation (read
        # through the target network) 96.9 % at the switch, 47.0 % 50 steps later, 13.5 % at
        # step 999 (target 40.7 -> 10.3 %); at 1e-3 it stays healthy (93.8 % at 999). Chosen by
        # source validation, not target accuracy (/work/runs/da/outcomes_findings.md).
        per_algorithm={"ADDA": {"lr_target": 1e-3, "lr_d": 1e-3},
                       "GAM": {"lr_target": 1e-3, "lr_d": 1e-3}},
        da_mode="transductive",  # as the paper: adapt on, and report on, the whole target
    ),
    # DACS (Tranheden et al., WACV 2021; vikolss/DACS configUDA.json, trainUDA.py): source resized
    # to 1280x720 (SYNTHIA 1280x760), Cityscapes train to 1024x512, random 512x512 crops of both,
    # no flip, batch 2 + 2, 250k iterations, poly 0.9 over them; evaluation on the 500 val images
    # at 512x1024 with the labels resized (evaluateUDA.py).
    "dacs_gta5": Preset(
        description="DACS's GTA5 -> Cityscapes recipe (DeepLab-v2, 512x512 crops, batch 2, 250k it.)",
        required=_road("1280x720", crop_size="512x512", batch_size=2, poly_steps=0,
                       eval_labels="input"),
        optional=_DACS, task_type="segmentation", applies_to=_ROAD_SETS, da_mode="inductive", steps=250000),
    "dacs_synthia": Preset(
        description="DACS's SYNTHIA -> Cityscapes recipe (as dacs_gta5, SYNTHIA at 1280x760)",
        required=_road("1280x760", crop_size="512x512", batch_size=2, poly_steps=0,
                       eval_labels="input"),
        optional=_DACS, task_type="segmentation", applies_to=_ROAD_SETS, da_mode="inductive", steps=250000),
    # AdaptSegNet (Tsai et al., CVPR 2018; wasidennis/AdaptSegNet train_gta2cityscapes_multi.py):
    # source 1280x720 (SYNTHIA 1280x760), target 1024x512, no crop, no flip, batch 1 + 1, poly
    # decay over 250k iterations stopped at 150k; evaluation on the 500 val images with the
    # predictions upsampled to the full 2048x1024 labels (evaluate_cityscapes.py).
    "adaptsegnet_gta5": Preset(
        description="AdaptSegNet's GTA5 -> Cityscapes recipe (full images, batch 1, 150k of 250k it.)",
        required=_road("1280x720", crop_size="none", batch_size=1, poly_steps=250000,
                       eval_labels="full"),
        optional=_ADAPTSEGNET, task_type="segmentation", applies_to=_ROAD_SETS, da_mode="inductive",
        steps=150000),
    "adaptsegnet_synthia": Preset(
        description="AdaptSegNet's SYNTHIA -> Cityscapes recipe (as adaptsegnet_gta5, 1280x760)",
        required=_road("1280x760", crop_size="none", batch_size=1, poly_steps=250000,
                       eval_labels="full"),
        optional=_ADAPTSEGNET, task_type="segmentation", applies_to=_ROAD_SETS, da_mode="inductive",
        steps=150000),
}


def preset_hparams(name: str, algorithm: str, dataset: str | Any) -> dict[str, Any]:
    """The overrides preset `name` sets for `algorithm` on `dataset` (name or DatasetInfo)."""
    from shiftbench.hparams import dataset_info
    from shiftbench.hparams_registry import hparam_space

    if name not in PRESETS:
        raise UnknownNameError("hparams preset", name, PRESETS)
    preset = PRESETS[name]
    from shiftbench.algorithms import get_algorithm_class
    from shiftbench.algorithms.base import algorithm_for_task_type

    algorithm = algorithm_for_task_type(algorithm, preset.task_type)  # DACS -> SegDACS
    task_types = get_algorithm_class(algorithm).TASK_TYPES
    if preset.task_type not in task_types:
        raise ShiftbenchError(
            f"hparams preset {name!r} is a {preset.task_type} protocol; {algorithm} trains on "
            f"{', '.join(task_types)} datasets. Presets for it: "
            + (", ".join(n for n, p in PRESETS.items() if p.task_type in task_types) or "none"))
    info = dataset_info(dataset)
    space = hparam_space(algorithm, info)
    missing = [k for k in preset.required if k not in space]
    if missing:
        raise ShiftbenchError(
            f"hparams preset {name!r} does not apply to {algorithm} on {info.name} (input shape "
            f"{info.input_shape}): it sets {', '.join(missing)}, which that configuration does "
            f"not have (the preset is for {preset.applies_to})")
    values = dict(preset.required)
    values.update({k: v for k, v in preset.optional.items() if k in space})
    own = preset.per_algorithm.get(get_algorithm_class(algorithm).__name__, {})
    unknown = [k for k in own if k not in space]
    if unknown:
        raise ShiftbenchError(f"hparams preset {name!r} sets {', '.join(unknown)} for {algorithm}, "
                              "which it does not declare")
    values.update(own)
    return values


def default_da_mode(preset: str | None, task: str, from_suite: bool = False) -> str | None:
    """The `da_mode` a trial gets when none is given: a uda/ssda trial gets its preset's mode
    (dann_digits: transductive; the road-scene recipes, whose test split is Cityscapes val:
    inductive), else transductive in a DA task suite (`from_suite`), else inductive; None where
    the mode does not apply (no unlabeled target), as `train()` from Python records it."""
    from shiftbench.setting import get_setting
    from shiftbench.trial_record import INDUCTIVE, TRANSDUCTIVE

    if not get_setting(task).unlabeled_target:
        return None
    if preset is not None:
        if preset not in PRESETS:
            raise UnknownNameError("hparams preset", preset, PRESETS)
        if PRESETS[preset].da_mode is not None:  # e.g. the road-scene recipes' official test split
            return PRESETS[preset].da_mode
    return TRANSDUCTIVE if from_suite else INDUCTIVE


def with_preset(name: str | None, algorithm: str, dataset: str | Any,
                overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The preset's values (none without a preset) with `overrides` on top."""
    values = preset_hparams(name, algorithm, dataset) if name else {}
    values.update(overrides or {})
    return values
