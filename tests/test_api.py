"""The Python API, ``prunetune.search(model, budget, train=..., val=...)``: what it refuses
(in one line, before Ray starts), the network it builds a space of, one finished run's
result (front, pick, pruned model, export), and the README's example run as written."""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

import prunetune
from conftest import ROOT
from prunetune.evaluators import DataError, load_pruned
from prunetune.search import BudgetError, parse_budget, parse_budgets
from prunetune.spaces import ModuleSpace, UnsupportedNetwork, counted_cost, get_space


class TinyNet(nn.Module):
    """A residual block with a depthwise conv and a flatten into a linear head (so it runs at
    its own input size only). Defined in this test file, which Ray's workers cannot import:
    its class must travel to them by value."""

    def __init__(self, num_classes: int = 4, size: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16),
                                  nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32),
                                   nn.ReLU(), nn.Conv2d(32, 32, 3, 1, 1, groups=32, bias=False),
                                   nn.BatchNorm2d(32), nn.ReLU(),
                                   nn.Conv2d(32, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(16 * (size // 4) ** 2, num_classes))
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.head(self.pool(x + self.block(x)))


def _data(n: int, size: int = 16, classes: int = 4, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    # Class-dependent brightness: a little signal to learn.
    x = torch.rand(n, 3, size, size, generator=g) * 0.5 + (y.float() / classes).view(-1, 1, 1, 1)
    return TensorDataset(x, y)


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 2000, msg
    return msg


# -- refused before anything runs -----------------------------------------------------------
def test_budget_strings_accepted_and_refused():
    assert [str(b) for b in parse_budgets("50%-FLOPs")] == ["50%-FLOPs"]
    both = parse_budgets(["300M-FLOPs", "12ms-latency"])
    assert [(b.metric, b.value) for b in both] == [("flops", 300e6), ("latency", 12.0)]
    assert parse_budgets(("150M-MACs",)) == [parse_budget("150M-MACs")]
    net = TinyNet()
    for bad, words in (("50%-FLOP", "is not understood"), ("150%-FLOPs", "at most 100%"),
                       ("12ms-FLOPs", "'ms' goes with latency"), ([], "no budget given"),
                       (0.5, "not text")):
        with pytest.raises(BudgetError) as e:
            prunetune.search(net, bad, train=_data(8), val=_data(4))
        msg = _one_line(e)
        assert words in msg and "--budget" not in msg, msg  # the API's words, not the CLI's


def test_unknown_option_and_bad_values_are_refused_in_one_line():
    net, train, val = TinyNet(), _data(8), _data(4)
    with pytest.raises(TypeError) as e:
        prunetune.search(net, "50%-FLOPs", train=train, val=val, trails=3)
    msg = _one_line(e)
    assert "['trails']" in msg and "'trials'" in msg and "'final_epochs'" in msg
    assert "'model'" not in msg and "'checkpoint'" not in msg  # arguments, not options
    for kw, words in (({"trials": 0}, "trials must be >= 1, but got 0"),
                      ({"trials": 2.5}, "option 'trials' = 2.5 is not an integer"),
                      ({"sampler": "grid"}, "option 'sampler' = \"grid\" is not one of"),
                      ({"low": 0.9, "high": 0.5}, "low 0.9 is above high 0.5"),
                      ({"distill": "no"}, "is not true or false"),
                      ({"latency": "off", "objectives": "accuracy,latency"},
                       "objectives includes latency but latency off"),
                      ({"refine_top": 0, "refine_steps": [4, 8]},  # the command line's checks
                       "refine_steps 4,8 given with refine_top 0"),
                      ({"seed": -1}, "seed")):
        with pytest.raises(ValueError) as e:
            prunetune.search(net, "50%-FLOPs", train=train, val=val, **kw)
        msg = _one_line(e)
        assert words in msg and "--" not in msg, (kw, msg)
    with pytest.raises(ValueError) as e:  # one limit a measure, as on the command line
        prunetune.search(net, ["50%-FLOPs", "40%-FLOPs"], train=train, val=val)
    assert "repeats the FLOPs/MACs limit" in _one_line(e)
    with pytest.raises(ValueError) as e:  # a latency budget needs the table
        prunetune.search(net, "5ms-latency", train=train, val=val, latency="off")
    assert "budget 5ms-latency needs latency predict" in _one_line(e)
    with pytest.raises(TypeError) as e:
        prunetune.search(lambda x: x, "50%-FLOPs", train=train, val=val)
    assert "model is a function, not a torch.nn.Module" in _one_line(e)


def test_datasets_of_the_wrong_shape_are_refused_clearly():
    net, good = TinyNet(), _data(8)
    x, y = good.tensors

    def refused(train, val=good, **kw) -> str:
        with pytest.raises((DataError, ValueError)) as e:
            prunetune.search(net, "50%-FLOPs", train=train, val=val, **kw)
        return _one_line(e)

    assert "train[0]: the image is a torch.float32 tensor of shape (1, 16, 16); images must " \
           "be float tensors 3xHxW" in refused(TensorDataset(x[:, :1], y))
    assert "3xHxW with H == W" in refused(TensorDataset(x[:, :, :, :8], y))
    assert "uint8 x.float() / 255" in refused(TensorDataset((x * 255).byte(), y))
    assert "train[3]: label 9 is not an int in [0, 4) (the model has 4 outputs)" in refused(
        TensorDataset(x, torch.tensor([0, 1, 2, 9, 0, 1, 2, 3])))
    assert "val[0]: the image is a torch.float32 tensor of shape (3, 32, 32); images must be " \
           "float tensors 3x16x16" in refused(good, _data(4, size=32))
    assert "train[0] is a Tensor, not an (image, label) pair" in refused([x[0]])
    assert "train is empty" in refused([])
    assert "val is required with a training Dataset" in refused(good, None)
    assert "option(s) ['image_size'] shape the images of a folder" in refused(
        good, image_size=32)
    assert "is a folder, whose own splits are used; give val=None" in refused("some/folder")


# -- the space of a module instance ---------------------------------------------------------
def test_module_space_rebuilds_from_its_config_alone_with_the_contract_checked():
    net = TinyNet()
    space = ModuleSpace(net, trace_size=16)
    assert space.name == "module:TinyNet" and space.num_classes == 4
    assert space.group_names == ["stem.0", "block.0"]  # the residual width, the expansion
    # What a Ray worker does: rebuild by name from the config (JSON-able), here unpickled.
    again = pickle.loads(pickle.dumps(space))
    cfg = json.loads(json.dumps(space.config()))
    rebuilt = get_space(space.name, **cfg)
    assert again.sha256 == rebuilt.sha256 == space.sha256
    assert rebuilt.group_names == space.group_names
    model = rebuilt.build_model()
    assert counted_cost(model, 16) == counted_cost(net, 16)
    assert {k: v.shape for k, v in model.state_dict().items()} == \
        {k: v.shape for k, v in net.state_dict().items()}
    assert not any(p.is_meta for p in model.parameters())
    # The architecture's digest, not the weights': retrained weights are the same space.
    other = TinyNet()
    assert ModuleSpace(other, trace_size=16).sha256 == space.sha256
    assert ModuleSpace(TinyNet(num_classes=5), trace_size=16).sha256 != space.sha256
    # Traced at 16 px only: at the default 64 its flatten does not fit the linear head.
    with pytest.raises(UnsupportedNetwork) as e:
        ModuleSpace(net)
    assert "cannot be traced: running it on a 1x3x64x64 image raised RuntimeError" in \
        _one_line(e)
    with pytest.raises(ValueError, match="has 4 outputs .* but 10 classes"):
        ModuleSpace(net, trace_size=16, num_classes=10)
    with pytest.raises(ValueError, match="must be 1.0"):
        ModuleSpace(net, trace_size=16, width_mult=0.5)


@pytest.mark.slow  # a fresh interpreter importing torch: ~4-6 s here
def test_the_class_travels_by_value_to_a_process_that_cannot_import_it(tmp_path):
    """A fresh interpreter without tests/ on its path (a cluster node) rebuilds the space and
    its network from the JSON config alone."""
    space = ModuleSpace(TinyNet(), trace_size=16)
    path = tmp_path / "space.json"
    path.write_text(json.dumps({"name": space.name, "config": space.config()}))
    code = ("import json, sys; from prunetune.spaces import get_space, counted_cost; "
            f"d = json.load(open({str(path)!r})); s = get_space(d['name'], **d['config']); "
            "print(s.group_names, counted_cost(s.build_model(), 16), "
            "'TinyNet' in sys.modules or any('test_api' in m for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    want = f"{space.group_names} {counted_cost(space.build_model(), 16)} False"
    assert out.stdout.strip().splitlines()[-1] == want


def test_prunetune_search_is_the_api_and_still_the_subpackage():
    import prunetune.search as package
    from prunetune.search import Budget

    assert prunetune.search is package and callable(package)
    assert Budget is package.parse_budget("1M-FLOPs").__class__
    assert prunetune.SearchResult.__name__ == "SearchResult"


# -- one finished run -----------------------------------------------------------------------
RUN = dict(train=_data(48), val=_data(16, seed=1), test=_data(16, seed=2), trials=2, cpus=2,
           workers=1, refine_top=0, score_steps=2, bn_batches=1, final_epochs=1,
           final_baseline=False, round_to=4, device="cpu")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One tiny search of TinyNet (Ray started once for the tests below)."""
    out = tmp_path_factory.mktemp("api") / "run"
    torch.manual_seed(0)
    net = TinyNet()
    lines: list[str] = []
    result = prunetune.search(net, "60%-FLOPs", **RUN, out=out, log=lines.append)
    yield net, result, lines
    import ray

    ray.shutdown()


@pytest.mark.slow
def test_result_front_pick_and_pruned_model_within_budget(finished):
    net, result, lines = finished
    assert any(line.startswith("base: the weights of the module given (module:TinyNet)")
               for line in lines)
    dense = counted_cost(net, 16)[0] * 2
    limit = 0.6 * dense
    pick = result.pick
    assert pick is not None and pick["flops"] <= limit
    assert result.front and all(r["flops"] <= limit for r in result.front)
    assert os.path.isfile(os.path.join(result.out, "summary.json"))
    model = result.pruned_model()
    assert isinstance(model, nn.Module) and not model.training
    # Analytic FLOPs of the record == FlopCounterMode's count of the network returned.
    assert counted_cost(model, 16)[0] * 2 == pick["flops"]
    # It is the fine-tuned one: the weights saved by the final fine-tune.
    tag = "uniform" if pick["baseline"] == "uniform" else f"trial{pick['trial']}"
    saved = torch.load(os.path.join(result.out, "final", tag, "model.pt"), weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
    assert model is not result.pruned_model()  # a new module each time, the caller's to change


@pytest.mark.slow
def test_export_onnx_and_state_dict_reload(finished, tmp_path):
    import onnxruntime as ort

    _, result, _ = finished
    model = result.pruned_model()
    x = _data(4, seed=3).tensors[0]
    with torch.no_grad():
        want = model(x).numpy()
    onnx_path = result.export(str(tmp_path / "small.onnx"))
    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    assert np.abs(sess.run(None, {"input": x.numpy()})[0] - want).max() < 1e-4
    pt = result.export(str(tmp_path / "sub" / "small.pt"))
    assert pt.endswith("small.pt") and os.path.isfile(pt[:-3] + ".json")
    again, space, _ = load_pruned(pt[:-3])
    with torch.no_grad():
        assert np.abs(again.eval()(x).numpy() - want).max() < 1e-5
    assert counted_cost(again, 16)[0] * 2 == result.pick["flops"]
    with pytest.raises(ValueError, match=r"must end in \.onnx .* or \.pt"):
        result.export(str(tmp_path / "small.bin"))


@pytest.mark.slow
def test_the_run_folder_refuses_another_base(finished):
    """Searching again into the same folder resumes its study, with the same network, weights
    and data only: other weights are refused before anything runs."""
    _, result, _ = finished
    with pytest.raises(ValueError) as e:
        prunetune.search(TinyNet(), "60%-FLOPs", **RUN, out=result.out, log=None)
    assert "holds a study of a different configuration (base_sha256: " in _one_line(e)


# -- the README's example -------------------------------------------------------------------
def _readme_example() -> str:
    text = open(os.path.join(ROOT, "README.md")).read()
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_readme_example_runs_as_written(finished, tmp_path, monkeypatch, capsys):
    """The README's code as it stands, in this process (``finished`` has Ray up already)."""
    code = _readme_example()
    assert "prunetune.search(model" in code and len(code.splitlines()) <= 16
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    exec(compile(code, "README.md", "exec"), {"__name__": "__main__"})
    flops, acc, front = capsys.readouterr().out.strip().splitlines()[-1].split()
    summary = json.loads((tmp_path / "runs" / "example" / "summary.json").read_text())
    assert 0 < float(flops) <= 0.5 * summary["base"]["flops"] and int(front) >= 1
    assert 0.0 <= float(acc) <= 1.0
    assert (tmp_path / "small.onnx").stat().st_size > 0


def test_folder_options_are_taken_with_a_folder(cifar_dir):
    """``per_class`` shapes a folder's images: taken with ``train=FOLDER`` (checked as
    ``--data FOLDER --per-class``), refused with datasets."""
    from prunetune import _api

    a = _api._settings({"per_class": 10, "val_fraction": 0.2}, parse_budgets("50%-FLOPs"),
                       cifar_dir)
    assert (a.per_class, a.val_fraction, a.data) == (10, 0.2, cifar_dir)
    with pytest.raises(ValueError) as e:
        prunetune.search(TinyNet(), "50%-FLOPs", train=_data(8), val=_data(4), per_class=10)
    assert "['per_class'] shape the images of a folder" in _one_line(e)
