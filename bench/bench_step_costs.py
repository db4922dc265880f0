"""Measure CPU seconds per training step of the comparison suites' algorithms, for
`shiftbench compare --dry-run`'s cost estimates; writes sweeps/step_costs.json.

    nice -n 10 python bench/bench_step_costs.py [--repeats 3]

Each figure is the median over `--repeats` steps (after one warm-up step) of the process CPU time
of `algorithm.update` on random inputs of the dataset's shape, with the hparams the suites use
(DomainBed's protocol for its datasets; the digits suites' batch 16, half-width CNN and bf16
autocast where the CPU runs it natively), on one torch thread. The ResNet-50 datasets are measured
once at 8 images per domain (PACS: 3 training domains, 7 classes) and scaled linearly to the
protocol's 32 images per domain and to each dataset's number of training domains; the classifier
size (7 to 345 classes) is a small part of a ResNet-50 step. Pretrained weights are not loaded
(the same computation). Evaluation passes are not included.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import time
from datetime import date
from pathlib import Path

import torch

from shiftbench.algorithms import get_algorithm_class
from shiftbench.hparams_registry import DatasetInfo, default_hparams
from shiftbench.sweeps.facts import dataset_facts

OUT = Path(__file__).resolve().parents[1] / "sweeps" / "step_costs.json"
SMALL = {"DigitsDemo": ("shiftbench", {"batch_size": 16, "cnn_width": 32}),
         "ColoredMNIST": ("domainbed", {}), "RotatedMNIST": ("domainbed", {})}
SMALL_ALGORITHMS = ("ERM", "CORAL", "DANN", "IRM", "GroupDRO", "Mixup", "MMD", "VREx", "SagNet")
LARGE_ALGORITHMS = ("ERM", "CORAL", "DANN")
LARGE = ("VLCS", "PACS", "OfficeHome", "TerraIncognita", "DomainNet", "Office31")
PROBE, PROBE_BATCH, PROTOCOL_BATCH = "PACS", 8, 32


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def step_seconds(dataset: str, algorithm: str, protocol: str, overrides: dict, repeats: int,
                 bf16: bool) -> float:
    facts = dataset_facts(dataset)
    from shiftbench.catalog import dataset_index

    entry = dataset_index()[dataset]
    shape, classes = tuple(entry.input_shape), int(entry.num_classes)
    hparams = {**default_hparams(algorithm, DatasetInfo(dataset, shape, classes), protocol),
               "pretrained": False, **overrides}
    n_train = len(facts.environments) - 1
    cls = get_algorithm_class(algorithm)
    model = cls(shape, classes, n_train, hparams, total_steps=1000)
    batch = int(hparams["batch_size"])
    cast = (torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext())
    times = []
    for i in range(repeats + 1):
        batches = [(torch.randn(batch, *shape), torch.randint(0, classes, (batch,)))
                   for _ in range(n_train)]
        start = time.process_time()
        with cast:
            model.update(batches)
        if i:
            times.append(time.process_time() - start)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repeats", type=int, default=3)
    ns = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    import shiftbench.demo_data as demo_data
    from shiftbench.trial_record import auto_precision

    demo_data.ensure_registered()
    bf16 = auto_precision() == "bf16"
    costs: dict[str, dict[str, float]] = {}
    for dataset, (protocol, overrides) in SMALL.items():
        for alg in SMALL_ALGORITHMS:
            use_bf16 = bf16 and dataset == "DigitsDemo"
            costs.setdefault(dataset, {})[alg] = round(
                step_seconds(dataset, alg, protocol, overrides, ns.repeats, use_bf16), 5)
            print(dataset, alg, costs[dataset][alg], flush=True)
    probe_domains = len(dataset_facts(PROBE).environments) - 1
    for alg in LARGE_ALGORITHMS:
        per_image_domain = step_seconds(PROBE, alg, "domainbed", {"batch_size": PROBE_BATCH},
                                        ns.repeats, False) / PROBE_BATCH / probe_domains
        print(PROBE, alg, "per image", per_image_domain, flush=True)
        for dataset in LARGE:
            domains = len(dataset_facts(dataset).environments) - 1
            costs.setdefault(dataset, {})[alg] = round(per_image_domain * PROTOCOL_BATCH * domains, 3)
    OUT.write_text(json.dumps({
        "what": "CPU seconds per training step (algorithm.update), one torch thread; "
                "bench/bench_step_costs.py",
        "machine": {"cpu": cpu_model(), "threads": 1, "torch": torch.__version__,
                    "date": date.today().isoformat(), "digits_precision": "bf16" if bf16 else "fp32",
                    "resnet50": f"measured on {PROBE} at {PROBE_BATCH} images per domain, scaled "
                                f"to {PROTOCOL_BATCH} per domain and each dataset's domains"},
        "costs": costs}, indent=1) + "\n")
    print("wrote", OUT)


if __name__ == "__main__":
    main()
