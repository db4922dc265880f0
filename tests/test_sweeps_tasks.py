"""Named source->target task suites (sweeps/tasks.py)."""

from __future__ import annotations

import pytest

from shiftbench.errors import ShiftbenchError, UnknownNameError
from shiftbench.sweeps.tasks import TASK_SUITES, get_task_suite, suite_tasks, task_name


def names(suite, dataset=None):
    return [t.name for t in get_task_suite(suite).tasks(dataset)]


def test_office31_is_the_six_pairs_in_the_fields_order():
    assert names("office31") == ["A→W", "D→W", "W→D", "A→D", "D→A", "W→A"]
    tasks = get_task_suite("office31").tasks()
    assert tasks[0].dataset == "Office31"
    assert (tasks[0].source_envs, tasks[0].test_envs) == ((0,), (2,))


def test_officehome_twelve_visda_one():
    home = names("officehome")
    assert len(home) == 12 == len(set(home)) and home[0] == "A→C"
    assert names("visda") == ["synthetic→real"]


def test_digits_classic_pairs_on_digits_and_the_demo():
    assert names("digits") == ["mnist→mnist_m", "synth→mnist", "mnist→lowres", "lowres→mnist"]
    import shiftbench.demo_data  # noqa: F401  (registers DigitsDemo)

    assert names("digits", "DigitsDemo") == names("digits")


def test_leave_one_out_suites():
    pacs = get_task_suite("pacs").tasks()
    assert [t.name for t in pacs] == ["→A", "→C", "→P", "→S"]
    assert pacs[1].source_envs == (0, 2, 3) and pacs[1].test_envs == (1,)
    assert len(get_task_suite("domainnet").tasks()) == 6
    assert [t.name for t in suite_tasks(["loo"], ["Digits"])][0] == "→mnist"


def test_bad_names_list_the_choices():
    with pytest.raises(UnknownNameError, match="office31"):
        get_task_suite("office-31")
    with pytest.raises(ShiftbenchError, match="mnist_m"):
        get_task_suite("office31").tasks("Digits")
    with pytest.raises(ShiftbenchError, match="--datasets"):
        suite_tasks(["loo"])
    assert {"office31", "officehome", "digits", "visda", "domainnet", "loo"} <= set(TASK_SUITES)


def test_task_name():
    assert task_name(["A", "C", "D", "W"], (0, 2), (3,)) == "A+D→W"
    assert task_name(["A", "D", "W"], (0, 1), (2,)) == "→W"  # all other domains
    assert task_name(["s", "r"], (0,), (1,)) == "s→r"
    assert task_name(["A", "D", "W"], None, (2,)) == "→W"
