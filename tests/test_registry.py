"""The shared registry: decorators, patterns, clear errors, and plug-ins from entry points."""

from __future__ import annotations

import sys

import pytest

from shiftbench.algorithms import ALGORITHM_REGISTRY, get_algorithm_class, list_algorithms
from shiftbench.datasets import DATASETS, get_dataset_class
from shiftbench.errors import ShiftbenchError, UnknownNameError
from shiftbench.registry import Registry


def test_register_get_names_and_unknown():
    reg: Registry[type] = Registry("widget")

    @reg.register()
    class Alpha:
        pass

    @reg.register("beta")
    class Other:
        pass

    assert reg.get("Alpha") is Alpha and reg.get("beta") is Other
    assert reg.names() == ["Alpha", "beta"] and reg.names("b*") == ["beta"]
    with pytest.raises(UnknownNameError, match="Alphaa"):
        reg.get("Alphaa")
    with pytest.raises(ShiftbenchError, match="already registered"):
        reg.register("beta")(Alpha)
    reg.register("beta", overwrite=True)(Alpha)
    assert reg.get("beta") is Alpha


def test_list_algorithms_pattern_and_setting():
    assert "DANN" in list_algorithms("D*") and "ERM" not in list_algorithms("D*")
    assert set(list_algorithms(setting="tta")) >= {"Tent", "BNAdapt"}
    assert "Tent" not in list_algorithms(setting="dg")


def _fake_distribution(tmp_path, group: str, module: str, source: str) -> None:
    """An installed-looking package: a dist-info folder declaring `module` under `group`."""
    (tmp_path / f"{module}.py").write_text(source)
    info = tmp_path / f"{module}_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{group}]\nplugin = {module}\n")


def test_entry_point_plugins_load_on_first_unknown_name(tmp_path, monkeypatch):
    _fake_distribution(tmp_path, "shiftbench.algorithms", "sb_test_alg_plugin", (
        "from shiftbench.algorithms import register_algorithm\n"
        "from shiftbench.algorithms.erm import ERM\n"
        "@register_algorithm\n"
        "class PluggedERM(ERM):\n"
        "    '''ERM from an installed plug-in.'''\n"))
    _fake_distribution(tmp_path, "shiftbench.datasets", "sb_test_data_plugin", (
        "from shiftbench.datasets import register_dataset\n"
        "from shiftbench.datasets.debug import Debug28\n"
        "@register_dataset\n"
        "class PluggedData(Debug28):\n"
        "    '''A dataset from an installed plug-in.'''\n"))
    monkeypatch.syspath_prepend(str(tmp_path))
    with ALGORITHM_REGISTRY.scratch(), DATASETS.scratch():  # entry points looked up afresh
        assert get_algorithm_class("PluggedERM").__name__ == "PluggedERM"
        assert get_dataset_class("PluggedData").__name__ == "PluggedData"
    for mod in ("sb_test_alg_plugin", "sb_test_data_plugin"):
        sys.modules.pop(mod, None)
    assert "PluggedERM" not in ALGORITHM_REGISTRY and "PluggedData" not in DATASETS


def test_a_module_first_imported_inside_scratch_registers_again_after(tmp_path, monkeypatch):
    """scratch() forgets a module that registered inside it, so a later import registers again
    (else a test that first imported e.g. shiftbench.demo_data would hide DigitsDemo from the
    tests after it)."""
    import importlib
    import sys

    from shiftbench.registry import Registry

    registry: Registry = Registry("thing")
    (tmp_path / "scratch_plugin_mod.py").write_text(
        "import test_registry_target as t\n@t.REG.register('Thing')\nclass Thing:\n    pass\n")
    target = type(sys)("test_registry_target")
    target.REG = registry
    monkeypatch.setitem(sys.modules, "test_registry_target", target)
    monkeypatch.syspath_prepend(str(tmp_path))
    with registry.scratch():
        importlib.import_module("scratch_plugin_mod")
        assert "Thing" in registry
    assert "Thing" not in registry
    importlib.import_module("scratch_plugin_mod")
    assert "Thing" in registry
    sys.modules.pop("scratch_plugin_mod", None)
