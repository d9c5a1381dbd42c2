"""Networks the project has never seen: ``--model FILE.py:CALLABLE`` and ``--model timm:NAME``.

The file network (tests/_networks.py) is written to a temporary folder (outside the
checkout) and mixes what custom CNNs mix: residual adds, squeeze-excitation, a depthwise
conv, a concatenation of two branches and an MLP head. Every network goes through the same
contract as the automatic torchvision spaces, at 32×32 with random policies: analytic cost ==
FlopCounterMode. The file network's run end to end, on a two-node cluster whose workers
rebuild it from the source the driver sent, is in tests/test_faults.py; ``timm:resnet18``'s,
killed and resumed, in tests/test_launch.py.
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

from _networks import NET
from conftest import random_policy



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
