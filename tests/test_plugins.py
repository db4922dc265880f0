"""A new algorithm, dataset (with its availability check) or launcher is one file plus a
decorator: each kind is installed here as a plug-in through an entry point (a fake dist-info on
sys.path), found by name without --import, and passes the public conformance checks."""

from __future__ import annotations

import contextlib
import json
import sys
import textwrap

import pytest

from shiftbench.algorithms import ALGORITHM_REGISTRY, ALGORITHMS
from shiftbench.cli import main
from shiftbench.datasets.base import AVAILABILITY, DATASETS
from shiftbench.sweeps.launchers import LAUNCHERS

PLUGIN = textwrap.dedent('''
    """One file of a plug-in package: an algorithm, a dataset with its availability, a launcher."""
    import torch

    from shiftbench.algorithms import register_algorithm
    from shiftbench.algorithms.erm import ERM
    from shiftbench.datasets import MultiDomainDataset, TensorDomain, register_dataset
    from shiftbench.datasets.base import register_availability
    from shiftbench.sweeps.launchers import LaunchResult, register_launcher


    @register_algorithm
    class PluginERM(ERM):
        """ERM with its logits halved, from an installed plug-in package."""

        PAPER = "the plug-in's own (a test)"

        def predict(self, x):
            return super().predict(x) / 2


    @register_dataset
    class PluginData(MultiDomainDataset):
        """3 domains of 6-d vectors, 2 classes, from an installed plug-in package."""

        ENVIRONMENTS = ("p", "q", "r")
        INPUT_SHAPE = (6,)
        NUM_CLASSES = 2
        N_STEPS = 3
        CHECKPOINT_FREQ = 2

        def __init__(self, root, test_envs, hparams):
            super().__init__(root, test_envs, hparams)
            g = torch.Generator().manual_seed(1)
            self.datasets = []
            for e, name in enumerate(self.ENVIRONMENTS):
                y = torch.arange(40) % 2
                self.datasets.append(TensorDomain(torch.randn(40, 6, generator=g) + y[:, None] + e,
                                                  y, name))


    @register_availability("PluginData")
    def plugin_data_status(data_dir):
        return {"dataset": "PluginData", "status": "built-in (plug-in)", "domains": {},
                "source": "generated"}


    @register_launcher("plugin_serial")
    def plugin_serial(jobs, options):
        """Run the jobs one after the other in this process, through the sweep worker."""
        from shiftbench.sweeps import worker

        codes = [worker.run(job.worker_args()) for job in jobs]
        return LaunchResult(launched=len(jobs), succeeded=codes.count(0),
                            failed=[j for j, c in zip(jobs, codes) if c != 0])
''')


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """The plug-in module plus a dist-info declaring it under all three entry-point groups."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sb_plugin_pkg.py").write_text(PLUGIN)
    info = site / "sb_plugin_pkg-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: sb-plugin-pkg\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("".join(
        f"[{group}]\nplugin = sb_plugin_pkg\n\n"
        for group in ("shiftbench.algorithms", "shiftbench.datasets", "shiftbench.launchers")))
    monkeypatch.syspath_prepend(str(site))
    with contextlib.ExitStack() as stack:  # each registry looks the entry points up afresh
        for registry in (ALGORITHM_REGISTRY, DATASETS, AVAILABILITY, LAUNCHERS):
            stack.enter_context(registry.scratch())
        yield
    sys.modules.pop("sb_plugin_pkg", None)
    assert "PluginERM" not in ALGORITHMS


def test_plugins_of_each_kind_are_found_by_name_and_conform(installed, tmp_path, capsys):
    from shiftbench.sweeps.launchers import get_launcher
    from shiftbench.testing import check_algorithm, check_dataset

    launcher = get_launcher("plugin_serial")  # loads the package through its entry point
    assert launcher.__module__ == "sb_plugin_pkg"
    check_algorithm(ALGORITHM_REGISTRY.get("PluginERM"), settings=["dg", "uda"], kinds=["vector"])
    check_dataset(DATASETS.get("PluginData"))
    out = tmp_path / "sweep"
    code = main(["sweep", "launch", "--datasets", "PluginData", "--algorithms", "PluginERM",
                 "--n-trials", "1", "--single-test-envs", "--output-dir", str(out),
                 "--launcher", "plugin_serial", "--skip-confirmation", "--no-progress"])
    assert code == 0, capsys.readouterr()
    finished = sorted(p.parent.name for p in out.glob("*/done"))
    assert len(finished) == 3
    record = json.loads(next(out.glob("*/results.jsonl")).read_text().splitlines()[-1])
    assert record["args"]["algorithm"] == "PluginERM" and record["n_steps"] == 3
    capsys.readouterr()
    assert main(["data", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {"dataset": "PluginData", "status": "built-in (plug-in)", "domains": {},
            "source": "generated"} in rows
    assert rows[0]["dataset"] == "ColoredMNIST, RotatedMNIST"  # the built-ins keep their order


def test_unknown_launcher_lists_the_plugins(installed, capsys):
    from shiftbench.errors import UnknownNameError
    from shiftbench.sweeps.launchers import get_launcher

    with pytest.raises(UnknownNameError, match="did you mean 'plugin_serial'.*valid choices: "
                                               ".*dry-run.*local.*plugin_serial"):
        get_launcher("plugin_serail")
