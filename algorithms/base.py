"""The algorithm contract, its registry and the pieces every algorithm shares.

An algorithm is an `nn.Module` built as `Algorithm(input_shape, num_classes, num_domains,
hparams, *, setting=..., total_steps=...)`: DomainBed's positional signature plus two keyword-only
extras, the `Setting` it runs in (default: the first it declares) and the training budget in steps
(default 0: no schedule). A subclass takes `**kwargs` and forwards them to `super().__init__`, and
reads `self.setting` (e.g. `self.setting.unlabeled_target`) while building itself. The trainer
then calls, in this order:

1. `train_step(minibatches, unlabeled)` each step, which calls `update` and counts the step
   (`self.progress` in [0, 1] is then available to schedules such as DANN's lambda);
2. `on_round(target_batches)` every `round_interval()` steps, if the algorithm has rounds;
3. `predict(x)` for evaluation (no side effects), or `adapt(x)` when the setting evaluates by
   adapting on the test stream (`setting.adapts_at_test`).

`minibatches` holds one `(x, y)` batch per labeled domain: the `num_domains` source domains,
then, when `setting.few_shot_target`, one batch of the few labeled target examples per target
domain. `unlabeled` holds one `x` batch per target domain when `setting.unlabeled_target`, else
None.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from shiftbench.errors import ShiftbenchError, UnknownNameError
from shiftbench.hparams import (
    Choice,
    DatasetInfo,
    HParam,
    IntLogUniform,
    LogUniform,
    check_choices,
    check_protocol,
)
from shiftbench.networks import SMALL_NETWORKS
from shiftbench.registry import NamesView, Registry
from shiftbench.setting import Setting, all_settings, check_supports, get_setting

# Views of the registered settings (shiftbench.setting), by name.
SETTINGS = {s.name: s.description for s in all_settings()}
LABEL_SOURCES = {s.name: s.label_sources for s in all_settings()}

HParamSpec = HParam | Callable[[DatasetInfo], "HParam | None"]


def _lr(ds: DatasetInfo) -> HParam:
    if ds.small_images or ds.is_vector:
        return HParam(1e-3, LogUniform(-4.5, -2.5), low=0.0, help="Adam learning rate")
    return HParam(5e-5, LogUniform(-5, -3.5), low=0.0, help="Adam learning rate")


def _weight_decay(ds: DatasetInfo) -> HParam:
    if ds.small_images or ds.is_vector:
        return HParam(0.0, None, low=0.0)
    return HParam(0.0, LogUniform(-6, -2), low=0.0)


def _batch_size(ds: DatasetInfo) -> HParam:
    if ds.small_images or ds.is_vector:
        return HParam(64, IntLogUniform(3, 9), low=1, help="examples per domain per step")
    if ds.name == "DomainNet":
        return HParam(32, IntLogUniform(3, 5), low=1, help="examples per domain per step")
    return HParam(32, IntLogUniform(3, 5.5), low=1, help="examples per domain per step")


def _domainbed_lr(ds: DatasetInfo) -> HParam:
    if ds.domainbed_small:
        return HParam(1e-3, LogUniform(-4.5, -2.5), low=0.0, help="Adam learning rate")
    return HParam(5e-5, LogUniform(-5, -3.5), low=0.0, help="Adam learning rate")


def _domainbed_weight_decay(ds: DatasetInfo) -> HParam:
    return HParam(0.0, None if ds.domainbed_small else LogUniform(-6, -2), low=0.0)


def _domainbed_batch_size(ds: DatasetInfo) -> HParam:
    if ds.domainbed_small:
        return HParam(64, IntLogUniform(3, 9), low=1, help="examples per domain per step")
    high = 5 if ds.name == "DomainNet" else 5.5
    return HParam(32, IntLogUniform(3, high), low=1, help="examples per domain per step")


def _small_network(ds: DatasetInfo, domainbed: bool) -> HParam | None:
    """The featurizer of image inputs up to 32x32 (larger images use a ResNet)."""
    if ds.is_vector or len(ds.input_shape) != 3 or max(ds.input_shape[1:]) > 32:
        return None
    wrn = domainbed and tuple(ds.input_shape[1:]) == (32, 32)
    return HParam("wrn16_2" if wrn else "mnist_cnn", None, choices=SMALL_NETWORKS, variant=True,
                  help="featurizer for small images: DomainBed's MNIST_CNN or WideResNet-16-2, "
                       "or dann_digits (the DANN paper's MNIST network, 100-100 label head)")


OPTIMIZERS = ("adam", "sgd")
LR_SCHEDULES = ("constant", "dann")


def _only_large(hp: HParam) -> Callable[[DatasetInfo], HParam | None]:
    return lambda ds: None if (ds.small_images or ds.is_vector) else hp


def _only_small(hp: HParam) -> Callable[[DatasetInfo], HParam | None]:
    return lambda ds: hp if ds.small_images else None


def _only_vector(hp: HParam) -> Callable[[DatasetInfo], HParam | None]:
    return lambda ds: hp if ds.is_vector else None


class AlgorithmBase(nn.Module):
    """The contract of every algorithm, no hparams: those come with the task's base, `Algorithm`
    (classification, DomainBed's base class) or `SegAlgorithm` (segmentation, `seg_base`)."""

    SETTINGS: tuple[str, ...] = ("dg",)
    TASK_TYPES: tuple[str, ...] = ()  # the dataset task types it can train on (the task's base)
    # The registered name of the same method for another task type (e.g. SegDACS is DACS on
    # segmentation datasets): `--algorithm DACS` on a segmentation dataset resolves to it.
    # Read from the class's own body only (a subclass is another method unless it says so).
    SAME_METHOD_AS: str | None = None
    PAPER: str = ""
    # DomainBed's values (protocol="domainbed"), merged over all HPARAMS; None removes an hparam
    HPARAMS: Mapping[str, HParamSpec] = {}
    DOMAINBED_HPARAMS: Mapping[str, HParamSpec | None] = {}

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        num_domains: int,
        hparams: Mapping[str, Any],
        *,
        setting: str | Setting | None = None,
        total_steps: int = 0,
    ):
        super().__init__()
        self.setting = get_setting(self.SETTINGS[0] if setting is None else setting)
        check_supports(type(self).__name__, self.SETTINGS, self.setting.name)
        self.input_shape = tuple(input_shape)
        self.num_classes = int(num_classes)
        self.num_domains = int(num_domains)
        self.hparams = dict(hparams)
        check_choices(type(self).hparam_space(DatasetInfo("custom", self.input_shape,
                                                          self.num_classes)), self.hparams)
        self.total_steps = int(total_steps)
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    # ---- declaration -----------------------------------------------------------------------
    @classmethod
    def hparam_space(cls, ds: DatasetInfo, protocol: str = "shiftbench") -> dict[str, HParam]:
        """The merged `HPARAMS` of the class and its bases, resolved for one dataset; under
        `protocol="domainbed"` the merged `DOMAINBED_HPARAMS` on top."""
        layers = ["HPARAMS"] + (["DOMAINBED_HPARAMS"] if check_protocol(protocol) == "domainbed"
                                else [])
        space: dict[str, HParam] = {}
        for layer in layers:
            for klass in reversed(cls.__mro__):
                for name, spec in vars(klass).get(layer, {}).items():
                    hp = spec(ds) if callable(spec) and not isinstance(spec, HParam) else spec
                    if hp is None:
                        space.pop(name, None)
                    else:
                        space[name] = hp
        return space

    @property
    def task(self) -> str:
        """The setting's name."""
        return self.setting.name

    # ---- the trainer's calls ---------------------------------------------------------------
    def train_step(
        self, minibatches: list[tuple[torch.Tensor, torch.Tensor]], unlabeled=None
    ) -> dict[str, float]:
        if self.lr_schedule() != "constant":
            anneal_learning_rates(self.optimizers().values(), self.lr_schedule(), self.progress)
        values = self.update(minibatches, unlabeled)
        self.num_updates += 1
        return values

    def lr_schedule(self) -> str:
        """The schedule `train_step` applies to every optimizer before each update
        (`anneal_learning_rates`): the hparam `lr_schedule`, unless a method ties it to its own
        optimizer switch (DANN's `dann_optimizer=sgd`)."""
        return self.hparams.get("lr_schedule", "constant")

    @property
    def progress(self) -> float:
        """Fraction of the training budget done before the current update, in [0, 1]."""
        if self.total_steps <= 0:
            return 0.0
        return min(1.0, float(self.num_updates) / self.total_steps)

    def split_minibatches(self, minibatches):
        """`(source batches, labeled target batches)`; the latter is empty unless the setting has
        a few-shot labeled target split."""
        return list(minibatches[: self.num_domains]), list(minibatches[self.num_domains:])

    def update(self, minibatches, unlabeled=None) -> dict[str, float]:
        raise NotImplementedError

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        """Test-time adaptation on one test batch; returns the logits for it."""
        raise ShiftbenchError(f"{type(self).__name__} has no test-time adaptation (adapt)")

    def reset_adaptation(self) -> None:
        """Undo everything `adapt` changed (episodic test-time adaptation)."""

    def round_interval(self) -> int | None:
        """Steps between calls of `on_round`, or None for algorithms without rounds."""
        return None

    def adaptation_start(self) -> int | None:
        """The first step of the adaptation phase of a method with a source phase first (a
        class declaring `PHASES`, a `components.PhaseSchedule`), or None for methods that adapt
        from the start. Recorded at every checkpoint; selection considers only checkpoints from
        after it (shiftbench.phases)."""
        phases = getattr(type(self), "PHASES", None)
        return None if phases is None else int(phases.start(self))

    def on_round(self, target_batches: Callable[[], Iterable[torch.Tensor]]) -> dict[str, float]:
        """Between rounds: `target_batches()` iterates over the whole unlabeled target split."""
        return {}

    # ---- state for checkpoints -------------------------------------------------------------
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Every optimizer the algorithm owns (found among its attributes)."""
        return {k: v for k, v in vars(self).items() if isinstance(v, torch.optim.Optimizer)}

    def full_state(self) -> dict[str, Any]:
        return {
            "model": self.state_dict(),
            "optimizers": {k: opt.state_dict() for k, opt in self.optimizers().items()},
            "task": self.task,
            "total_steps": self.total_steps,
        }

    def load_full_state(self, state: Mapping[str, Any]) -> None:
        self.load_state_dict(state["model"])
        optimizers = self.optimizers()
        for name, opt_state in state["optimizers"].items():
            built = [g.get("initial_lr", g["lr"]) for g in optimizers[name].param_groups]
            optimizers[name].load_state_dict(opt_state)
            if self.lr_schedule() != "constant":
                # a group saved before it was first annealed (or by DANN's SGD before it used
                # this schedule) anneals from the lr it is built with, not from its saved lr
                for group, lr in zip(optimizers[name].param_groups, built):
                    group.setdefault("initial_lr", lr)
        self.setting, self.total_steps = get_setting(state["task"]), int(state["total_steps"])


class Algorithm(AlgorithmBase):
    """Base of the classification algorithms (DomainBed's), with the hparams they all share."""

    TASK_TYPES = ("classification",)
    HPARAMS: Mapping[str, HParamSpec] = {
        "lr": _lr,
        "weight_decay": _weight_decay,
        "batch_size": _batch_size,
        "nonlinear_classifier": HParam(False, None, help="3-layer MLP head instead of linear"),
        "data_augmentation": HParam(True, None, help="the dataset's training augmentation"),
        "resnet18": _only_large(HParam(False, None, help="ResNet-18 instead of ResNet-50")),
        "backbone": _only_large(HParam("resnet50", None, help=(
            "featurizer for large images: resnet50 / resnet18 (DomainBed's torchvision ResNets) "
            "or any timm model name (shiftbench.backbones)"))),
        "weights": _only_large(HParam("", None, help="local checkpoint file for the backbone "
                                                       "(the --weights flag); '' = pretrained")),
        "pretrained": _only_large(HParam(True, None, help="ImageNet weights (local file/cache)")),
        "resnet_dropout": _only_large(HParam(0.0, Choice([0.0, 0.1, 0.5]), low=0.0, high=1.0)),
        "freeze_bn": _only_large(HParam(False, None, help="keep BatchNorm statistics frozen")),
        "hue": _only_large(HParam("hsv", None, choices=("hsv", "linear"), help=(
            "colour jitter's hue shift on cached images: exact HSV (torchvision) or a linear "
            "rotation of RGB space (faster, approximate)"))),
        "cnn_width": _only_small(HParam(64, None, low=8, help=(
            "channels of the small CNN's first conv layer, twice that in the others and in its "
            "output (DomainBed: 64); a multiple of 8"))),
        "mlp_width": _only_vector(HParam(256, IntLogUniform(6, 10), low=1)),
        "mlp_depth": _only_vector(HParam(3, Choice([3, 4, 5]), low=2)),
        "mlp_dropout": _only_vector(HParam(0.0, Choice([0.0, 0.1, 0.5]), low=0.0, high=1.0)),
        "network": lambda ds: _small_network(ds, domainbed=False),
        "network_init": _only_small(HParam("torch", None, choices=("torch", "he"), variant=True, help=(
            "dann_digits network: PyTorch's default initialisation or He's (ReLU) for its conv and "
            "hidden head layers"))),
        "input_center": _only_small(HParam(False, None, variant=True, help=(
            "dann_digits network: map [0, 1] inputs to [-1, 1] (TLlib's digits normalisation)"))),
        "optimizer": HParam("adam", None, choices=OPTIMIZERS, variant=True, help=(
            "optimizer of make_optimizer: adam (DomainBed) or sgd (momentum `momentum`)")),
        "momentum": HParam(0.9, None, low=0.0, high=1.0, help="SGD momentum (optimizer sgd)"),
        "lr_schedule": HParam("constant", None, choices=LR_SCHEDULES, variant=True, help=(
            "constant, or dann: every optimizer's lr annealed as lr / (1 + 10 p)^0.75 (p = "
            "training progress; Ganin et al. 2016)")),
    }
    DOMAINBED_HPARAMS: Mapping[str, HParamSpec | None] = {
        "lr": _domainbed_lr,
        "weight_decay": _domainbed_weight_decay,
        "batch_size": _domainbed_batch_size,
        "network": lambda ds: _small_network(ds, domainbed=True),
        # DomainBed main's `resnet50_augmix=True`: timm's AugMix-trained ResNet-50 (which also
        # overrides `resnet18`, as there); `--hparams '{"backbone": "resnet50"}'` gives the
        # torchvision ImageNet ResNet-50 of DomainBed's paper.
        "backbone": _only_large(HParam("resnet50.ram_in1k", None, help=(
            "DomainBed main: timm resnet50.ram_in1k (resnet50_augmix); resnet18/resnet50: "
            "torchvision"))),
    }


# --------------------------------------------------------------------------------------------
# Shared helpers


def make_optimizer(params: Iterable[nn.Parameter], hparams: Mapping[str, Any],
                   lr: float | None = None, weight_decay: float | None = None, *,
                   name: str | None = None, momentum: float | None = None,
                   **kwargs: Any) -> torch.optim.Optimizer:
    """DomainBed's optimizer, Adam with the configuration's lr and weight decay; or, with the
    hparam `optimizer` = sgd, SGD with momentum `momentum` (Adam-only keywords such as `betas`
    are then not used). `lr`, `weight_decay`, `name` (adam / sgd) and `momentum` override the
    hparams for an optimizer of its own (a discriminator's, DANN's `dann_optimizer`)."""
    name = hparams.get("optimizer", "adam") if name is None else name
    lr = hparams["lr"] if lr is None else lr
    weight_decay = hparams["weight_decay"] if weight_decay is None else weight_decay
    if name == "sgd":
        momentum = float(hparams["momentum"]) if momentum is None else momentum
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name != "adam":
        raise UnknownNameError("optimizer", name, OPTIMIZERS)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, **kwargs)


def anneal_learning_rates(optimizers: Iterable[torch.optim.Optimizer], schedule: str,
                          progress: float) -> None:
    """Set each parameter group's lr from its initial lr (kept in the group as `initial_lr`):
    `dann` is Ganin et al.'s mu_p = mu_0 / (1 + 10 p)^0.75; `constant` leaves it."""
    if schedule not in LR_SCHEDULES:
        raise UnknownNameError("lr_schedule", schedule, LR_SCHEDULES)
    if schedule == "constant":
        return
    factor = (1.0 + 10.0 * float(progress)) ** -0.75
    for opt in optimizers:
        for group in opt.param_groups:
            group.setdefault("initial_lr", group["lr"])
            group["lr"] = group["initial_lr"] * factor


def step(loss: torch.Tensor, *optimizers: torch.optim.Optimizer) -> None:
    """One gradient step: clear the optimizers' gradients, back-propagate `loss`, step each."""
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    loss.backward()
    for opt in optimizers:
        opt.step()


def concat_minibatches(minibatches) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.cat([x for x, _ in minibatches]), torch.cat([y for _, y in minibatches])


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy that also accepts a single binary logit column."""
    if logits.shape[1] == 1:
        return F.binary_cross_entropy_with_logits(logits[:, 0], y.float())
    return F.cross_entropy(logits, y)


# --------------------------------------------------------------------------------------------
# Registry

ALGORITHM_REGISTRY: Registry[type[AlgorithmBase]] = Registry("algorithm", "shiftbench.algorithms")
ALGORITHMS = NamesView(ALGORITHM_REGISTRY)  # DomainBed's list of names: a live view, in order


def register_algorithm(cls: type[AlgorithmBase] | None = None, *, name: str | None = None):
    """Class decorator: `@register_algorithm` or `@register_algorithm(name="MyAlg")`."""

    def decorator(c: type[AlgorithmBase]) -> type[AlgorithmBase]:
        names = {s.name for s in all_settings()}
        unknown = [s for s in c.SETTINGS if s not in names]
        if not c.SETTINGS or unknown:
            raise ShiftbenchError(
                f"algorithm {c.__name__} declares unknown settings {unknown or '()'}; "
                f"valid: {', '.join(names)}"
            )
        key = name or c.__name__
        ALGORITHM_REGISTRY.register(key)(c)
        return c

    return decorator(cls) if cls is not None else decorator


def get_algorithm_class(name: str) -> type[AlgorithmBase]:
    return ALGORITHM_REGISTRY.lookup(name)


def list_algorithms(pattern: str = "*", setting: str | None = None,
                    task_type: str | None = None) -> list[str]:
    """Registered names matching `pattern`, optionally only those supporting `setting` and
    training on datasets of `task_type` ("classification", "segmentation")."""
    ALGORITHM_REGISTRY.load_entry_points()
    names = ALGORITHM_REGISTRY.names(pattern)
    if setting is not None:
        name = get_setting(setting).name
        names = [n for n in names if name in ALGORITHM_REGISTRY.get(n).SETTINGS]
    if task_type is not None:
        names = [n for n in names if task_type in ALGORITHM_REGISTRY.get(n).TASK_TYPES]
    return names


def algorithm_for_task_type(name: str, task_type: str) -> str:
    """`name`, or the registered form of the same method for datasets of `task_type` (the class
    whose `SAME_METHOD_AS` is `name`); `name` itself when there is no such form."""
    if task_type in get_algorithm_class(name).TASK_TYPES:
        return name
    forms = [n for n in list_algorithms(task_type=task_type)  # declared by the class itself
             if vars(ALGORITHM_REGISTRY.get(n)).get("SAME_METHOD_AS") == name]
    return forms[0] if len(forms) == 1 else name


def create_algorithm(
    name: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    num_domains: int,
    hparams: Mapping[str, Any] | None = None,
    dataset: str | DatasetInfo | None = None,
    protocol: str = "shiftbench",
    *,
    setting: str | Setting | None = None,
    total_steps: int = 0,
) -> AlgorithmBase:
    """Build a registered algorithm; missing hparams are filled with defaults for `dataset`
    under `protocol`."""
    cls = get_algorithm_class(name)
    ds = dataset if isinstance(dataset, DatasetInfo) else DatasetInfo(
        dataset or "custom", tuple(input_shape), int(num_classes))
    if isinstance(dataset, str):
        from shiftbench.hparams import dataset_info

        ds = dataset_info(dataset)
    full = {k: hp.default for k, hp in cls.hparam_space(ds, protocol).items()}
    full.update(hparams or {})
    return cls(input_shape, num_classes, num_domains, full, setting=setting, total_steps=total_steps)
