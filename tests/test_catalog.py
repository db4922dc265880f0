"""The torch-free registry index (`shiftbench.catalog`) agrees with the imported registries."""

from __future__ import annotations

import pytest

from shiftbench import catalog


@pytest.fixture(scope="module")
def registries():
    import shiftbench.demo_data as demo_data
    from shiftbench.algorithms import ALGORITHMS, get_algorithm_class
    from shiftbench.datasets import DATASETS, get_dataset_class

    demo_data.ensure_registered()
    return ALGORITHMS, get_algorithm_class, DATASETS, get_dataset_class


def test_algorithm_index_matches_registry(registries):
    from shiftbench.hparams_registry import dataset_info

    algorithms, get_class, _, _ = registries
    index = catalog.algorithm_index()
    builtin = [a for a in algorithms if get_class(a).__module__.startswith("shiftbench.algorithms.")]
    assert list(index) == builtin  # same names, same (registration) order
    ds = dataset_info("RotatedMNIST")
    for name, entry in index.items():
        cls = get_class(name)
        assert entry.module == cls.__module__
        assert entry.settings == tuple(cls.SETTINGS) and entry.paper == cls.PAPER, name
        assert entry.task_types == tuple(cls.TASK_TYPES), name
        phases = getattr(cls, "PHASES", None)
        assert entry.phases == (None if phases is None else (
            phases.source_fraction, phases.rounds, phases.by_progress)), name
        space = cls.hparam_space(ds)
        known = {k: v for k, v in entry.hparams.items() if v is not catalog.UNKNOWN}
        for k, default in known.items():
            assert k in space and space[k].default == default, (name, k)
        # every hparam the class declares literally is in the index
        assert set(known) <= set(entry.hparams) and set(space) <= set(entry.hparams), name


def test_dataset_index_matches_registry(registries):
    _, _, datasets, get_class = registries
    index = catalog.dataset_index()
    # (tests register image folders at run time, in shiftbench.datasets.folder: not in the index)
    assert [d for d in datasets if d in index] == list(index)
    for name, entry in index.items():
        cls = get_class(name)
        assert entry.environments == tuple(str(e) for e in cls.ENVIRONMENTS), name
        assert entry.input_shape == tuple(cls.INPUT_SHAPE) and entry.num_classes == cls.NUM_CLASSES
        assert entry.n_steps == cls.N_STEPS and entry.source == cls.SOURCE, name
        # what `shiftbench data list` reads instead of the class: its family and file attributes
        assert entry.bases == tuple(c.__name__ for c in cls.__mro__ if c is not object), name
        assert entry.files == {a: getattr(cls, a) for a in catalog.FILE_ATTRIBUTES
                               if hasattr(cls, a)}, name
        # what sweeps read instead of the class (shiftbench.sweeps.facts)
        assert entry.task_type == getattr(cls, "TASK_TYPE", "classification"), name
        assert entry.image_cache is cls.IMAGE_CACHE, name


def test_every_builtin_entry_is_fully_read():
    """No field the CLI prints needs the real import for a built-in (else the fast path is lost)."""
    assert list(catalog.iter_complete("algorithms")) == list(catalog.algorithm_index())
    assert list(catalog.iter_complete("datasets")) == list(catalog.dataset_index())


def test_plugins_need_the_real_registry(monkeypatch):
    assert not catalog.needs_import("algorithms", "ERM", ["some_module"])
    assert catalog.needs_import("algorithms", "MyAlg", ["some_module"])
    monkeypatch.setattr(catalog, "plugin_entry_points", lambda kind: [])
    assert not catalog.needs_import("algorithms", "MyAlg")


def test_cache_is_rebuilt_when_a_file_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    module = tmp_path / "mod.py"
    module.write_text("X = 1\n")
    builds = []

    def build(modules):
        builds.append(1)
        return {"X": module.read_text()}

    assert catalog._cached("test", {"mod": module}, build) == {"X": "X = 1\n"}
    assert catalog._cached("test", {"mod": module}, build) == {"X": "X = 1\n"}
    assert len(builds) == 1  # the second answer came from the cache
    module.write_text("X = 22\n")
    assert catalog._cached("test", {"mod": module}, build) == {"X": "X = 22\n"}
    assert len(builds) == 2
    assert len(list((tmp_path / "cache" / "shiftbench").glob("catalog-test-*"))) == 1


def test_fresh_build_matches_cached(tmp_path, monkeypatch):
    cached = catalog.algorithm_index()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    catalog.algorithm_index.cache_clear()
    try:
        assert catalog.algorithm_index() == cached
    finally:
        catalog.algorithm_index.cache_clear()
