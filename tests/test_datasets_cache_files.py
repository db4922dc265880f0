"""The one cache helper every cached dataset uses: missing, corrupt, read-only, interrupted."""

from __future__ import annotations

import os

import pytest
import torch

from shiftbench.datasets import cache_files as CF
from shiftbench.errors import StorageError


def test_round_trip_and_corrupt_file_is_set_aside(tmp_path):
    path = tmp_path / "x.pt"
    assert CF.load_tensors(path) is None  # missing
    assert CF.save_tensors(path, {"x": torch.arange(3)})
    assert torch.equal(CF.load_tensors(path, lambda d: d["x"]), torch.arange(3))
    assert CF.load_tensors(path, lambda d: d["missing key"]) is None  # wrong shape: rebuild
    assert not path.exists() and (tmp_path / "x.corrupt").exists()
    path.write_bytes(b"torn")
    assert CF.load_tensors(path) is None and not path.exists()
    (tmp_path / "i.json").write_text("{not json")
    assert CF.load_json(tmp_path / "i.json") is None and (tmp_path / "i.corrupt").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_costs_only_rebuilding(tmp_path):
    tmp_path.chmod(0o500)
    try:
        assert CF.save_tensors(tmp_path / "x.pt", [1]) is False
        assert CF.save_json(tmp_path / "i.json", {}) is False
        with pytest.raises(StorageError):
            CF.save_json(tmp_path / "i.json", {}, required=True)
    finally:
        tmp_path.chmod(0o700)


def test_failed_write_is_not_kept_and_error_is_optional(tmp_path, monkeypatch):
    def full(path, data):
        raise StorageError(path, OSError(28, "No space left on device"))

    monkeypatch.setattr(CF, "atomic_write_bytes", full)
    assert CF.save_tensors(tmp_path / "x.pt", [1]) is False
    with pytest.raises(StorageError, match="no space left"):
        CF.save_json(tmp_path / "i.json", {}, required=True)


def test_atomic_output_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "big.u8"
    with pytest.raises(KeyboardInterrupt):
        with CF.atomic_output(target) as tmp:
            tmp.write_bytes(b"half")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    with CF.atomic_output(target) as tmp:
        tmp.write_bytes(b"all")
    assert target.read_bytes() == b"all" and list(tmp_path.iterdir()) == [target]
