"""`--weights`: a file must cover the backbone (timm and torchvision alike), bad files are clean
errors before anything is written, and the file's content is part of the trial identity."""

from __future__ import annotations

import json
import pickle
import uuid

import numpy as np
import pytest
import torch
import torchvision

from shiftbench import networks
from shiftbench.cli import main
from shiftbench.datasets.custom import register_arrays
from shiftbench.errors import ShiftbenchError
from shiftbench.trainer import TrainArgs, normalize
from shiftbench.trial_record import spec_hash

timm = pytest.importorskip("timm")


def _dataset(size: int = 64):
    g = np.random.default_rng(0)
    x = g.integers(0, 256, size=(12, 3, size, size), dtype=np.uint8)
    return register_arrays(f"W{size}_{uuid.uuid4().hex[:8]}", x, np.arange(12) % 2,
                           np.repeat(["a", "b", "c"], 4), steps=1, checkpoint_freq=1)


def _resnet18_file(tmp_path, name="r18.pth", **edit):
    state = torchvision.models.resnet18(weights=None).state_dict()
    for key, value in edit.items():
        if value is None:
            state.pop(key.replace("__", "."))
        else:
            state[key.replace("__", ".")] = value
    path = tmp_path / name
    torch.save(state, path)
    return path


def _timm_file(tmp_path, model="test_vit", name="vit.pth", transform=lambda s: s):
    torch.manual_seed(0)
    state = timm.create_model(model, num_classes=10).state_dict()  # with its classifier
    path = tmp_path / name
    torch.save(transform(state), path)
    return path


def _timm(path, model="test_vit", shape=(3, 160, 160)):
    return networks.Featurizer(shape, {"backbone": model, "weights": str(path)})


def test_timm_refuses_another_architecture_naming_keys(tmp_path):
    with pytest.raises(ShiftbenchError) as info:
        _timm(_resnet18_file(tmp_path))
    msg = str(info.value)
    assert "78 missing key(s)" in msg and "blocks.0.attn.proj.weight" in msg
    assert "unexpected key(s)" in msg and "conv1.weight" in msg
    assert "classifier (head) is ignored" in msg


def test_timm_refuses_empty_and_prefixed_files(tmp_path):
    empty = tmp_path / "empty.pth"
    torch.save({}, empty)
    with pytest.raises(ShiftbenchError, match=r"missing key\(s\): blocks\.0"):
        _timm(empty)
    prefixed = _timm_file(tmp_path, transform=lambda s: {"backbone." + k: v for k, v in s.items()})
    with pytest.raises(ShiftbenchError, match="another prefix"):
        _timm(prefixed)


def test_timm_loads_exactly_with_head_and_ddp_prefix_dropped(tmp_path):
    path = _timm_file(tmp_path, transform=lambda s: {"state_dict": {"module." + k: v
                                                                    for k, v in s.items()}})
    net = _timm(path, shape=(3, 160, 160))
    torch.manual_seed(0)
    reference = timm.create_model("test_vit", num_classes=10).state_dict()
    loaded = net.network.state_dict()
    assert loaded and all(torch.equal(v, reference[k]) for k, v in loaded.items())
    one_channel = _timm(path, shape=(1, 160, 160))  # first convolution adapted, as timm does
    assert one_channel.network.patch_embed.proj.weight.shape[1] == 1


def test_timm_wrong_shape_is_named(tmp_path):
    path = _timm_file(tmp_path, model="test_efficientnet", name="eff.pth",
                      transform=lambda s: {**s, "bn1.weight": torch.ones(3)})
    with pytest.raises(ShiftbenchError, match=r"wrong shape.*bn1\.weight \(3,\)"):
        _timm(path, model="test_efficientnet", shape=(3, 64, 64))


@pytest.mark.parametrize("case", ["missing", "shape", "truncated", "malicious", "not_a_dict"])
def test_torchvision_bad_files_are_clean_errors(tmp_path, case):
    if case == "missing":
        path = _resnet18_file(tmp_path, layer4__1__bn2__weight=None)
        expected = r"1 missing key\(s\): layer4\.1\.bn2\.weight"
    elif case == "shape":
        path = _resnet18_file(tmp_path, conv1__weight=torch.zeros(64, 3, 3, 3))
        expected = r"conv1\.weight \(64, 3, 3, 3\) != \(64, 3, 7, 7\)"
    elif case == "truncated":
        path = _resnet18_file(tmp_path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        expected = "not a readable weights file, truncated"
    elif case == "malicious":
        path = tmp_path / "evil.pth"
        path.write_bytes(pickle.dumps(_Evil()))
        expected = "refused, the file holds more than tensors"
    else:
        path = tmp_path / "list.pth"
        torch.save([torch.zeros(1)], path)
        expected = "holds a list, not a state dict"
    with pytest.raises(ShiftbenchError, match=expected):
        networks.Featurizer((3, 64, 64), {"resnet18": True, "weights": str(path)})
    assert not (tmp_path / "pwned").exists()


class _Evil:
    def __reduce__(self):
        import os

        return os.system, ("touch pwned",)


def test_torchvision_file_with_and_without_fc_loads(tmp_path):
    path = _resnet18_file(tmp_path)
    reference = torch.load(path, weights_only=True)
    net = networks.Featurizer((3, 64, 64), {"resnet18": True, "weights": str(path)})
    assert torch.equal(net.network.layer4[1].bn2.weight, reference["layer4.1.bn2.weight"])
    no_fc = _resnet18_file(tmp_path, "nofc.pth", fc__weight=None, fc__bias=None)
    networks.Featurizer((3, 64, 64), {"resnet18": True, "weights": str(no_fc)})


def test_cli_refuses_a_bad_file_before_writing_anything(tmp_path, capsys):
    cls = _dataset()
    path = _resnet18_file(tmp_path, conv1__weight=None)
    out = tmp_path / "run"
    code = main(["train", "--dataset", cls.__name__, "--output-dir", str(out), "--steps", "1",
                 "--backbone", "resnet18", "--weights", str(path), "--skip-model-save"])
    assert code == 2 and not out.exists()
    assert "missing key(s): conv1.weight" in capsys.readouterr().err


def test_a_changed_weights_file_is_a_new_trial(tmp_path, capsys):
    cls = _dataset()
    path = _resnet18_file(tmp_path)
    args = TrainArgs(dataset=cls.__name__, hparams=json.dumps({"backbone": "resnet18",
                                                              "weights": str(path)}))
    first = normalize(args)
    assert first.weights_sha256 and len(first.weights_sha256) == 64
    out = tmp_path / "run"
    argv = ["train", "--dataset", cls.__name__, "--output-dir", str(out), "--steps", "1",
            "--backbone", "resnet18", "--weights", str(path), "--skip-model-save",
            "--hparams", '{"batch_size": 2}']
    assert main(argv) == 0
    recorded = json.loads((out / "results.jsonl").read_text().splitlines()[-1])["args"]
    assert recorded["weights_sha256"] == first.weights_sha256
    _resnet18_file(tmp_path, conv1__weight=torch.ones(64, 3, 7, 7))  # same path, new content
    second = normalize(args)
    assert second.weights_sha256 != first.weights_sha256 and spec_hash(second) != spec_hash(first)
    capsys.readouterr()
    assert main(argv) == 2  # not "already done": a different trial in that directory
    assert "weights_sha256" in capsys.readouterr().err
    no_weights = normalize(TrainArgs(dataset=cls.__name__))  # records without weights: as before
    assert no_weights.weights_sha256 is None and "weights_sha256" not in json.dumps(
        __import__("shiftbench.trial_record", fromlist=["identity"]).identity(no_weights))
