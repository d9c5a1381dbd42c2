"""Networks the project has never seen: ``--model FILE.py:CALLABLE`` and ``--model timm:NAME``.

The file network below is written to a temporary folder (outside the checkout) and mixes what
custom CNNs mix: residual adds, squeeze-excitation, a depthwise conv, a concatenation of two
branches and an MLP head. Every network goes through the same contract as the automatic
torchvision spaces, at 32×32 with random policies: analytic cost == FlopCounterMode.
"""

from __future__ import annotations

import json
import re
import pickle
import random
import sys

import pytest
import torch

from prunetune.evaluators import load_pruned, model_cost, policy_cost, prune, save_pruned
from prunetune.spaces import FileSpace, ModelFileError, UnsupportedNetwork, get_space

from conftest import random_policy

NET = '''
import torch
import torch.nn as nn


def cbr(cin, cout, k=1, s=1, groups=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU())


class SqueezeExcite(nn.Module):
    def __init__(self, c, squeeze=8):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, squeeze, 1), nn.Conv2d(squeeze, c, 1)

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))


class Block(nn.Module):  # expand 1x1 -> depthwise 3x3 -> SE -> project 1x1, plus the input
    def __init__(self, c, hidden):
        super().__init__()
        self.expand, self.dw = cbr(c, hidden), cbr(hidden, hidden, 3, groups=hidden)
        self.se = SqueezeExcite(hidden)
        self.project = nn.Sequential(nn.Conv2d(hidden, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return x + self.project(self.se(self.dw(self.expand(x))))


class Branches(nn.Module):  # a 1x1 and a 3x3 branch side by side, concatenated
    def __init__(self, c, a, b):
        super().__init__()
        self.a, self.b = cbr(c, a), cbr(c, b, 3)

    def forward(self, x):
        return torch.cat([self.a(x), self.b(x)], dim=1)


class Net(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(cbr(3, 16, 3, 2), Block(16, 48), cbr(16, 32, 3, 2),
                                      Block(32, 64), Branches(32, 24, 40))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(64, 48), nn.ReLU(),
                                  nn.Linear(48, num_classes))

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


def make(num_classes=10):
    return Net(num_classes)


def make_imagenet():  # takes no num_classes: its head is replaced
    return Net(1000)


def broken(num_classes):
    raise RuntimeError("weights folder not found")


def not_a_module():
    return {"model": Net()}


class Grouped(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.body = nn.Sequential(cbr(3, 16, 3), cbr(16, 32, 3, groups=4))
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        return self.fc(self.body(x).mean((2, 3)))


class FixedSize(nn.Module):  # a flatten sized for 32x32 inputs only
    def __init__(self, num_classes=10):
        super().__init__()
        self.conv, self.fc = cbr(3, 8, 3, 2), nn.Linear(8 * 16 * 16, num_classes)

    def forward(self, x):
        return self.fc(self.conv(x).flatten(1))
'''


@pytest.fixture
def net_file(tmp_path):
    path = tmp_path / "elsewhere" / "mynet.py"
    path.parent.mkdir()
    path.write_text(NET)
    return path


def test_a_network_from_a_file_is_grouped_costed_and_rebuilt_without_the_file(net_file):
    space = get_space(f"{net_file}:make", num_classes=10)
    assert isinstance(space, FileSpace) and space.name == "mynet.py:make"
    groups = {g.anchor: g for g in space.groups}
    # the residual-tied widths, the expansions (with their depthwise convs and SE gates), the
    # two concatenated branches and the MLP's hidden layer are each a group; the SE squeeze is
    # one too, and the classes are not
    assert {"features.0.0", "features.2.0", "features.1.expand.0", "features.3.expand.0",
            "features.4.a.0", "features.4.b.0", "head.1"} <= set(groups)
    assert "features.1.dw.0" in groups["features.1.expand.0"].modules
    assert space.head == "head.3"
    base = space.build_model()
    rng = random.Random(3)
    for _ in range(4):
        pol = random_policy(space, rng)
        pruned = prune(base, space, pol, input_size=32)
        assert model_cost(pruned, 32) == policy_cost(space, pol, 32), pol
        assert pruned(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    # Workers and cluster nodes rebuild it from the space's config alone: the file is gone.
    net_file.unlink()
    again = pickle.loads(pickle.dumps(space))
    assert again.config() == space.config() and again.group_names == space.group_names
    rebuilt = get_space(space.name, **space.config())
    assert rebuilt.sha256 == space.sha256 and rebuilt.group_names == space.group_names
    prefix = str(net_file.parent / "saved")
    save_pruned(prefix, space, space.channels(pol), pruned)
    model, space2, spec = load_pruned(prefix)
    assert spec["config"]["sha256"] == space.sha256
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), pruned.eval()(x))


def test_a_factory_without_num_classes_gets_a_new_head(net_file):
    space = get_space(f"{net_file}:make_imagenet", num_classes=7, width_mult=0.5)
    model = space.build_model()
    assert model.head[3].out_features == 7 and model(torch.zeros(1, 3, 32, 32)).shape == (1, 7)
    # --width 0.5 slimmed the residual-tied stem/stage width 16 -> 8
    assert model.features[0][0].out_channels == 8


def test_the_source_must_match_its_hash(net_file):
    space = get_space(f"{net_file}:make", num_classes=10)
    cfg = dict(space.config(), source=space.config()["source"] + "\n# edited\n")
    with pytest.raises(ModelFileError, match="does not match its sha256"):
        get_space(space.name, **cfg)


REFUSALS = {
    "file missing": ("{dir}/nope.py:make", r"file '.*nope\.py' does not exist"),
    "not a .py file": ("{dir}/mynet.txt:make", r"is not a \.py file"),
    "no such callable": ("{file}:build", r"'build' is not defined there; callables defined in "
                                         r"mynet\.py: \[.*'make'"),
    "the callable raises": ("{file}:broken", r"broken\(num_classes=10\) raised RuntimeError: "
                                             r"weights folder not found"),
    "not a module": ("{file}:not_a_module", r"not_a_module\(\) returned a dict, not a "
                                            r"torch\.nn\.Module"),
    "grouped conv": ("{file}:Grouped", r"grouped conv \(4 groups\) that is not depthwise"),
    "cannot be traced": ("{file}:FixedSize", r"it cannot be traced: running it on a "
                                             r"1x3x64x64 image raised RuntimeError: mat1"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_unusable_models_are_refused_in_one_line_writing_nothing(case, net_file, tmp_path,
                                                                  monkeypatch, capsys):
    from prunetune import cli

    spec, reason = REFUSALS[case]
    spec = spec.format(dir=net_file.parent, file=net_file)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    out = tmp_path / "out"
    assert cli.main(["--model", spec, "--budget", "50%-FLOPs", "--input-size", "32",
                     "--out", str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("prunetune: error: "), lines
    assert re.search(reason, lines[0]), lines[0]
    assert not out.exists() and list(work.iterdir()) == []


def test_a_syntax_error_names_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def make(:\n    pass\n")
    with pytest.raises(ModelFileError, match=r"running bad\.py raised SyntaxError"):
        get_space(f"{bad}:make", num_classes=10)


def test_torchvision_weights_are_refused_for_a_file_network(net_file, capsys):
    from prunetune import cli

    assert cli.main(["--model", f"{net_file}:make", "--weights", "IMAGENET1K_V1",
                     "--budget", "50%-FLOPs", "--dry-run"]) == 2
    assert "give its weights as --checkpoint FILE" in capsys.readouterr().err


def test_resuming_with_a_changed_file_is_refused(net_file, tmp_path, capsys):
    from prunetune import cli

    out = tmp_path / "run"
    args = ["--model", f"{net_file}:make", "--budget", "1K-FLOPs", "--input-size", "32",
            "--out", str(out)]
    a = cli.parse_args(args)
    cli.validate(a)
    a.model_sha256 = get_space(a.model, num_classes=10).sha256
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"study": json.loads(json.dumps(
        cli.study_config(a), default=str))}))
    net_file.write_text(NET.replace("Linear(64, 48)", "Linear(64, 56)").replace(
        "Linear(48, num", "Linear(56, num"))
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "the file changed since the study" in err and a.model_sha256[:12] in err
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]


# -- timm ---------------------------------------------------------------------------------------
TIMM_OK = ["resnet18", "mobilenetv3_large_100", "efficientnet_b0"]


@pytest.mark.parametrize("name", TIMM_OK)
def test_timm_networks_pass_the_contract(name):
    pytest.importorskip("timm")
    space = get_space(f"timm:{name}", num_classes=10)
    assert space.name == f"timm:{name}" and len(space.groups) >= 10
    again = pickle.loads(pickle.dumps(space))
    assert again.group_names == space.group_names
    base = space.build_model()
    rng = random.Random(11)
    for _ in range(2):
        pol = random_policy(space, rng)
        pruned = prune(base, space, pol, input_size=32)
        assert model_cost(pruned, 32) == policy_cost(space, pol, 32), pol


@pytest.mark.parametrize("name,reason", [
    ("resnext26ts", r"grouped conv \(2 groups\) that is not depthwise"),
    ("deit_tiny_patch16_224", r"cannot trace or prune it \(AssertionError: Input height"),
])
def test_timm_networks_the_cost_model_cannot_describe_are_refused(name, reason):
    pytest.importorskip("timm")
    with pytest.raises(UnsupportedNetwork, match=reason):
        get_space(f"timm:{name}", num_classes=10)


def test_unknown_timm_name_suggests_close_ones():
    pytest.importorskip("timm")
    with pytest.raises(ModelFileError, match=r"timm has no model 'resnet_18'; did you mean "
                                             r"\[.*'resnet18'"):
        get_space("timm:resnet_18", num_classes=10)


def test_timm_missing_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` raises ImportError
    with pytest.raises(ModelFileError, match=r'needs timm.*pip install -e "\.\[timm\]"'):
        get_space("timm:not_cached_net", num_classes=10)


# -- end to end ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_file_network_end_to_end_through_ray(net_file, tmp_path):
    """``--model FILE.py:CALLABLE`` from a folder outside the checkout, on the embedded digits:
    3 trials through local Ray, the pick within its budget with analytic FLOPs == counted,
    exported to ONNX and reloaded; config.json records the file's hash."""
    import os
    import signal

    import numpy as np
    import onnxruntime

    from conftest import launch

    out = tmp_path / "run"
    proc = launch("--model", f"{net_file}:make", "--budget", "50%-FLOPs", "--input-size", "32",
                  "--trials", "3", "--base-epochs", "1", "--final-epochs", "1",
                  "--refine-top", "0", "--score-steps", "4", "--bn-batches", "2",
                  "--workers", "2", "--cpus", "2", "--latency", "off",
                  "--objectives", "accuracy,flops", "--no-final-baseline", "--out", str(out),
                  cwd=str(tmp_path))
    try:
        log = proc.communicate(timeout=300)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0 and "Traceback" not in log, log[-3000:]
    space = get_space(f"{net_file}:make", num_classes=10)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["study"]["model_sha256"] == space.sha256
    limit = 0.5 * policy_cost(space, space.uniform(1.0), 32).flops
    finals = json.loads((out / "summary.json").read_text())["final"]
    assert finals
    for f in finals:
        model, space2, spec = load_pruned(str(out / "final" / f["tag"] / "model"))
        assert spec["space"] == "mynet.py:make" and space2.group_names == space.group_names
        assert model_cost(model, 32).flops == f["flops"] <= limit
        x = torch.randn(2, 3, 32, 32)
        sess = onnxruntime.InferenceSession(str(out / "final" / f["tag"] / "model.onnx"))
        got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
        with torch.no_grad():
            assert np.allclose(got, model.eval()(x).numpy(), atol=1e-4)


def test_the_readme_file_example_passes_the_contract(tmp_path):
    import os

    from conftest import ROOT

    readme = open(os.path.join(ROOT, "README.md")).read()
    block = readme.split("# net.py — anywhere", 1)[1].split("```", 1)[0]
    (tmp_path / "net.py").write_text(block.split("\n", 1)[1])
    space = get_space(f"{tmp_path / 'net.py'}:make", num_classes=10)
    assert space.group_names == ["0", "3"]
    pol = {"0": 0.5, "3": 0.25}
    assert model_cost(prune(space.build_model(), space, pol), 32) == policy_cost(space, pol, 32)
