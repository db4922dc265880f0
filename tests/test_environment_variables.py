"""Every environment variable the package reads is listed in docs/architecture.md (none changes
what a trial computes; the two that did are refused with an error naming their option)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from shiftbench.errors import ShiftbenchError

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_FOLDERS = ("benchmark", "algorithms", "datasets", "sweeps", "results")
# os.environ.get("X"), os.environ["X"], "X" in os.environ, os.getenv("X"), setdefault("X", ...)
READ = re.compile(r"""(?:environ(?:\.get|\.setdefault)?\(\s*|environ\[\s*|getenv\(\s*)"""
                  r"""["']([A-Z_][A-Z0-9_]*)["']|["']([A-Z_][A-Z0-9_]*)["']\s+in\s+os\.environ""")
CONSTANT = re.compile(r"""^([A-Z_]+)\s*=\s*["']([A-Z_][A-Z0-9_]*)["']""", re.MULTILINE)


def variables_read() -> set[str]:
    found = set()
    for folder in PACKAGE_FOLDERS:
        for source in (ROOT / folder).glob("*.py"):
            text = source.read_text(encoding="utf-8")
            found.update(a or b for a, b in READ.findall(text))
            # a variable named through a module constant (environ.get(BASE_URL_ENV))
            for constant, value in CONSTANT.findall(text):
                if re.search(rf"environ(?:\.get)?[\[(]\s*{constant}\b|{constant}\s+in\s+os\.environ", text):
                    found.add(value)
    return found


def test_every_variable_read_is_documented():
    found = variables_read()
    assert {"SHIFTBENCH_CACHE", "SHIFTBENCH_IMAGE_CACHE", "SHIFTBENCH_DOWNLOAD_BASE_URL"} <= found
    documented = set(re.findall(r"`([A-Z_][A-Z0-9_]*)`", (ROOT / "docs" / "architecture.md").read_text()))
    assert not found - documented, f"not in docs/architecture.md: {sorted(found - documented)}"


def _hue() -> None:
    from shiftbench.datasets.augment import hue_mode

    hue_mode({})


def _image_cache() -> None:
    from shiftbench.datasets.image_cache import refuse_mode_variable

    refuse_mode_variable()


@pytest.mark.parametrize("variable, option, read", [("SHIFTBENCH_HUE", '"hue"', _hue),
                                                    ("SHIFTBENCH_IMAGE_CACHE", "--image-cache",
                                                     _image_cache)])
def test_variables_that_changed_training_are_refused(monkeypatch, variable, option, read):
    monkeypatch.delenv(variable, raising=False)
    read()  # unset: nothing to refuse
    monkeypatch.setenv(variable, "x")
    with pytest.raises(ShiftbenchError, match=re.escape(option)):
        read()
