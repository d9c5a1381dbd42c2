"""Bad input through the real command line: exit 2, one line naming the value and the fix,
no traceback, nothing written (no run folder, nothing in the working directory), an
existing study untouched."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from prunetune.spaces import get_space

from conftest import ROOT

QUICK = ["--width", "0.25", "--input-size", "32"]


def run_cli(args: list[str], cwd) -> subprocess.CompletedProcess:
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    return subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), *args], cwd=cwd,
                          capture_output=True, text=True, env=env, timeout=300)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    from PIL import Image

    def folder(name, classes=("a", "b"), extra=None):
        for split in ("train", "test"):
            for c in classes:
                os.makedirs(d / name / split / c, exist_ok=True)
                for i in range(3):
                    Image.new("RGB", (8, 8), (i * 50, 0, 0)).save(d / name / split / c / f"{i}.png")
        if extra:
            (d / name / "train" / classes[0] / extra[0]).write_bytes(extra[1])
        return str(d / name)

    os.makedirs(d / "empty" / "train")
    wrong = d / "wrong.pt"
    torch.save(get_space("mobilenet_v2", width_mult=0.5, num_classes=10).build_model()
               .state_dict(), wrong)
    good = d / "good.pt"
    torch.save(get_space("mobilenet_v2", width_mult=0.25, num_classes=10).build_model()
               .state_dict(), good)
    (d / "cut.pt").write_bytes(good.read_bytes()[: len(good.read_bytes()) // 3])
    torch.save({"w": torch.zeros(1), "x": _Evil()}, d / "evil.pt")
    (d / "cfg.json").write_text('{"trials": 3, "no_such_option": 1}')
    from prunetune.evaluators import LatencyTable, table_key
    from prunetune.evaluators._latency_table import TABLE_VERSION

    # Tables refused by their key alone (before any of their timings is read).
    for name, width, threads in (("torch_table", 0.25, 1), ("wide_table", 0.5, 1),
                                 ("table_2t", 0.25, 2)):
        space = get_space("mobilenet_v2", width_mult=width, num_classes=10)
        (d / f"{name}.json").write_text(LatencyTable(table_key(space, 32, "cpu", threads), {})
                                        .to_json())
    (d / "list_table.json").write_text(json.dumps({"version": TABLE_VERSION, "key": [],
                                                   "slots": {}, "offset_ms": 0}))
    return {"one": folder("one", classes=("only",)), "txt": folder("txt", extra=("x.txt", b"hi")),
            "corrupt": folder("corrupt", extra=("bad.jpg", b"not a jpeg")),
            "empty": str(d / "empty"), "wrong": str(wrong), "cut": str(d / "cut.pt"),
            "evil": str(d / "evil.pt"), "cfg": str(d / "cfg.json"), "dir": str(d),
            **{t: str(d / f"{t}.json") for t in ("torch_table", "wide_table", "table_2t",
                                                 "list_table")}}


CASES = {
    "malformed budget": (["--budget", "300X-FLOPs"], "300X-FLOPs"),
    "budget without metric": (["--budget", "300M"], "'300M'"),
    "zero budget": (["--budget", "0M-FLOPs"], "0M-FLOPs"),
    "missing budget": ([], "--budget is required"),
    "infeasible budget": (["--budget", "1K-FLOPs"], "below the smallest network"),
    # Met by round_to 8 (the smallest network is 21% of the base), by neither 16 (29%) nor 32.
    "budget no searched rounding meets": (["--budget", "25%-FLOPs", "--round-to-choices",
                                           "16,32"], "--round-to-choices [16, 32]: the smallest"),
    "budget met by base": (["--budget", "900M-FLOPs"], "already met by the base"),
    "latency budget": (["--budget", "12ms-latency"], "12ms-latency"),
    "unknown model": (["--budget", "50%-FLOPs", "--model", "resnet_999"], "resnet_999"),
    "unknown sampler": (["--budget", "50%-FLOPs", "--sampler", "cmaes"], "cmaes"),
    "zero trials": (["--budget", "50%-FLOPs", "--trials", "0"], "--trials must be >= 1"),
    "negative trials": (["--budget", "50%-FLOPs", "--trials", "-4"], "but got -4"),
    "zero workers": (["--budget", "50%-FLOPs", "--workers", "0"], "--workers must be >= 1"),
    "negative width": (["--budget", "50%-FLOPs", "--width", "-1"], "--width must be positive"),
    "bad objectives": (["--budget", "50%-FLOPs", "--objectives", "flops,accuracy"],
                       "flops,accuracy"),
    "missing data": (["--budget", "50%-FLOPs", "--data", "/no/such/folder"], "/no/such/folder"),
    "empty data": (["--budget", "50%-FLOPs", "--data", "{empty}"], "no class folders"),
    "one class": (["--budget", "50%-FLOPs", "--data", "{one}"], "only one class"),
    "non-image file": (["--budget", "50%-FLOPs", "--data", "{txt}"], "x.txt"),
    "corrupt image": (["--budget", "50%-FLOPs", "--data", "{corrupt}"], "bad.jpg"),
    "wrong architecture": (["--budget", "50%-FLOPs", "--checkpoint", "{wrong}"],
                           "features.0.0.weight"),
    "truncated checkpoint": (["--budget", "50%-FLOPs", "--checkpoint", "{cut}"], "truncated"),
    "code-executing pickle": (["--budget", "50%-FLOPs", "--checkpoint", "{evil}"], "refused"),
    "missing checkpoint": (["--budget", "50%-FLOPs", "--checkpoint", "/no/such.pt"],
                           "/no/such.pt"),
    "storage not a URL": (["--budget", "50%-FLOPs", "--storage", "study.db"], "study.db"),
    "unreadable storage": (["--budget", "50%-FLOPs", "--storage",
                            "sqlite:////no/such/dir/x.db"], "cannot be opened"),
    "unknown config key": (["--budget", "50%-FLOPs", "--config", "{cfg}"], "no_such_option"),
    "weights and checkpoint": (["--budget", "50%-FLOPs", "--weights", "IMAGENET1K_V1",
                                "--checkpoint", "{wrong}"], "only one base model"),
    "unknown weights": (["--budget", "50%-FLOPs", "--weights", "NOPE"], "NOPE"),
    "low above high": (["--budget", "50%-FLOPs", "--low", "0.8", "--high", "0.5"],
                       "--low 0.8 is above --high 0.5"),
    "zero low": (["--budget", "50%-FLOPs", "--low", "0"], "--low must be in (0, 1]"),
    "val fraction of all": (["--budget", "50%-FLOPs", "--val-fraction", "1.5"],
                            "--val-fraction must be in (0, 0.9], but got 1.5"),
    "zero learning rate": (["--budget", "50%-FLOPs", "--final-lr", "0"], "--final-lr must be"),
    "kd weight above one": (["--budget", "50%-FLOPs", "--kd-weight", "2"], "--kd-weight"),
    "bad port": (["--budget", "50%-FLOPs", "--dashboard", "--dashboard-port", "70000"],
                 "70000"),
    "more workers than CPUs": (["--budget", "50%-FLOPs", "--workers", "4096"],
                               "--workers 4096 is more than"),
    "cluster that does not answer": (["--budget", "50%-FLOPs", "--address", "127.0.0.1:1"],
                                     "nothing answers there"),
    "address without port": (["--budget", "50%-FLOPs", "--address", "headnode"],
                             "is not HOST:PORT"),
    "negative refine steps": (["--budget", "50%-FLOPs", "--refine-steps", "100,-3"],
                              "--refine-steps"),
}
CASES.update({
    "unknown device": (["--budget", "50%-FLOPs", "--device", "tpu"], "'tpu' is not one of"),
    "unknown latency device": (["--budget", "50%-FLOPs", "--latency-device", "gpu0"], "'gpu0'"),
    "fp16 on the CPU": (["--budget", "50%-FLOPs", "--device", "cpu", "--precision", "fp16"],
                        "'fp16' needs a CUDA device"),
    "GPU trials with --device cpu": (["--budget", "50%-FLOPs", "--device", "cpu",
                                      "--gpus-per-trial", "1"], "drop one of them"),
    "onnxruntime latency from a torch table": (["--budget", "50%-latency", "--latency-runtime",
                                                "onnxruntime", "--latency-table",
                                                "{torch_table}"],
                                               "times torch, not --latency-runtime onnxruntime"),
    "latency table of another width": (["--budget", "50%-latency", "--latency-table",
                                        "{wide_table}"], "width_mult=0.5, not "),
    "latency table of other threads": (["--budget", "50%-latency", "--latency-table",
                                        "{table_2t}"], "built at 2 thread(s)"),
    "latency table without a key": (["--budget", "50%-latency", "--latency-table",
                                     "{list_table}"], "is not a prunetune latency table"),
    "unknown latency runtime": (["--budget", "50%-FLOPs", "--latency-runtime", "tvm"], "'tvm'"),
})
if not torch.cuda.is_available():  # on a machine with a GPU the request is valid
    CASES["GPUs on a machine without one"] = (["--budget", "50%-FLOPs", "--gpus-per-trial", "1"],
                                              "no CUDA GPU")
    CASES["CUDA on a machine without one"] = (["--budget", "50%-FLOPs", "--device", "cuda"],
                                              "--device/--latency-device/--precision: device "
                                              "'cuda' asked for")


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, files, tmp_path, monkeypatch, capsys):
    """Each case through the command's entry point in this process (one torch import for all
    of them); ``test_the_command_line_itself`` checks the same contract through a real
    subprocess."""
    from prunetune import cli as launch

    args, expect = CASES[name]
    args = [a.format(**files) for a in args]
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    out = tmp_path / "out"
    assert launch.main(QUICK + args + ["--out", str(out)]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err[-2000:]
    assert lines[0].startswith("prunetune: error: ") and expect in lines[0], lines[0]
    assert not out.exists(), "nothing may be written for a refused run"
    assert list(work.iterdir()) == [], list(work.iterdir())


@pytest.mark.slow  # a process of its own each (torch import): the fast subset has them in-process
# One case through a real process (the others run in this process, test_bad_input): the
# budget that needs the network built to be found infeasible.
@pytest.mark.parametrize("name", ["infeasible budget"])
def test_the_command_line_itself(name, files, tmp_path):
    args, expect = CASES[name]
    work = tmp_path / "work"
    work.mkdir()
    r = run_cli(QUICK + [a.format(**files) for a in args] + ["--out", str(tmp_path / "o")],
                cwd=work)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and expect in r.stderr
    assert r.stderr.startswith("prunetune: error: ") and "Traceback" not in r.stdout + r.stderr
    assert not (tmp_path / "o").exists() and list(work.iterdir()) == []


def test_out_naming_a_file_is_refused_and_left_alone(tmp_path, capsys):
    from prunetune import cli

    f = tmp_path / "notes.txt"
    f.write_text("mine")
    assert cli.main(QUICK + ["--budget", "50%-FLOPs", "--out", str(f)]) == 2
    err = capsys.readouterr().err
    assert "is an existing file, not a folder" in err and len(err.strip().splitlines()) == 1, err
    assert f.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


# The second sweep (issue 24): every option and --config key for type, range and combination.
# Each runs in this process and is refused by the command line's checks, before data is read,
# a base trained or Ray started; "{x}" is filled from the ``sweep_files`` fixture.
SECOND = {
    # Empty values: each used to fall back to a default, or pass as "none", silently.
    "empty --out": (["--out", ""], "--out '' is empty"),
    "empty --budget": (["--budget", ""], "--budget '' is empty"),
    "empty --checkpoint": (["--checkpoint", ""], "--checkpoint '' is empty"),
    "empty --weights": (["--weights", ""], "--weights '' is empty"),
    "empty --storage": (["--storage", ""], "--storage '' is empty"),
    "empty --address": (["--address", ""], "--address '' is empty"),
    "empty --latency-table": (["--latency-table", ""], "--latency-table '' is empty"),
    "empty --study-name": (["--study-name", ""], "--study-name '' is empty"),
    "empty --config": (["--config", ""], "--config '' is empty"),
    "empty --latency-device": (["--latency-device", ""], "--latency-device '' is empty"),
    "empty --priors": (["--priors", ""], "--priors '' is empty"),
    "blank --model": (["--model", "  "], "--model '  ' is empty"),
    # Numbers out of range, or not finite (nan passes every comparison).
    "infinite width": (["--width", "inf"], "--width inf is not a finite number"),
    "nan width": (["--width", "nan"], "--width nan is not a finite number"),
    "zero width": (["--width", "0"], "--width must be positive, but got 0.0"),
    "huge width": (["--width", "1000"], "--width must be at most 4 ("),
    "nan GPU share": (["--gpus-per-trial", "nan"], "--gpus-per-trial nan is not a finite"),
    "GPU share of 1.5": (["--gpus-per-trial", "1.5"], "--gpus-per-trial 1.5 is not a share"),
    "GPU share below Ray's": (["--gpus-per-trial", "0.00001"], "--gpus-per-trial 1e-05 is not"),
    "negative GPU share": (["--gpus-per-trial", "-1"], "--gpus-per-trial must be >= 0, but got"),
    "negative seed": (["--seed", "-1"], "--seed must be in 0..4294967295"),
    "seed of 2**32": (["--seed", "4294967296"], "but got 4294967296"),
    "integer beyond a C int": (["--trials", "99999999999"], "--trials 99999999999 is out of range"),
    "batch of one": (["--batch-size", "1"], "--batch-size must be >= 2"),
    "input below the stride": (["--input-size", "8"], "--input-size 8 is below half the 32-pixel"),
    "input of one pixel": (["--input-size", "1"], "--input-size 1 is below"),
    "absurd input size": (["--input-size", "100000"], "--input-size must be at most 4096"),
    "zero image size": (["--image-size", "0"], "--image-size must be in 1..1024"),
    "negative image size": (["--image-size", "-3"], "but got -3"),
    "absurd image size": (["--image-size", "100000"], "but got 100000"),
    "image below the stride": (["--image-size", "8"], "--image-size 8 is below half the 32-pixel"),
    "more CPUs than the machine": (["--cpus", "4096"], "--cpus 4096 is more than"),
    "latency threads beyond the cores": (["--device", "cpu", "--latency-threads", "4096"],
                                         "--latency-threads 4096 is more than"),
    "round-to of the widest group": (["--round-to", "4096"], "--round-to 4096 is not below"),
    "round-to choice of the widest group": (["--round-to-choices", "8,100000"],
                                            "--round-to-choices 100000 is not below"),
    # Files and URLs.
    "text file as checkpoint": (["--checkpoint", "{text}"],
                                "text.txt' is truncated or not a PyTorch file (it is neither"),
    "empty file as checkpoint": (["--checkpoint", "{blank}"], "blank.pt' is empty"),
    "folder as checkpoint": (["--checkpoint", "{dir}"], "' is a folder"),
    "out under a file": (["--out", "{text}/run"], "text.txt/run' cannot be made"),
    "resume without a run": (["--resume", "--out", "{dir}"], "holds no run"),
    "SQLite in memory": (["--storage", "sqlite://"], "--storage 'sqlite://' is a SQLite "
                                                     "database in memory"),
    "SQLite :memory:": (["--storage", "sqlite:///:memory:"], "in memory"),
    "SQLite on a folder": (["--storage", "sqlite:///{dir}"], "it is a folder"),
    "SQLite on a text file": (["--storage", "sqlite:///{text}"], "is not a SQLite database"),
    "address of another scheme": (["--address", "http://127.0.0.1:1"],
                                  "--address 'http://127.0.0.1:1' is not a Ray address"),
    "address port out of range": (["--address", "127.0.0.1:99999"],
                                  "--address '127.0.0.1:99999' is not HOST:PORT"),
    "ray client without port": (["--address", "ray://headnode"],
                                "--address 'ray://headnode' is not ray://HOST:PORT"),
    "ray client that does not answer": (["--address", "ray://127.0.0.1:1"],
                                        "nothing answers there"),
    "dashboard on a taken port": (["--dashboard", "--dashboard-port", "{port}"], "is taken"),
    # Combinations.
    "same budget twice": (["--budget", "50%-FLOPs", "--budget", "50%-FLOPs"],
                          "--budget 50%-FLOPs repeats the FLOPs/MACs limit"),
    "two FLOPs budgets": (["--budget", "50%-FLOPs", "--budget", "40%-FLOPs"],
                          "--budget 40%-FLOPs repeats"),
    "FLOPs and MACs budgets": (["--budget", "50%-FLOPs", "--budget", "1M-MACs"],
                               "--budget 1M-MACs repeats"),
    "rungs decreasing": (["--refine-steps", "300,100"], "--refine-steps '300,100' must increase"),
    "rungs equal": (["--refine-steps", "100,100"], "--refine-steps '100,100' must increase"),
    "round-to choice twice": (["--round-to-choices", "8,8"], "--round-to-choices '8,8' repeats"),
    "prior twice": (["--priors", "cost:1,cost:1"], "--priors 'cost:1,cost:1' repeats"),
    "ramp in the structured space": (["--priors", "ramp:1"],
                                     "--priors ramp:1: a depth ramp is no point of the "
                                     "structured space"),
    "unknown allocation": (["--allocation", "grid"], "invalid choice: 'grid'"),
    "probe of 1": (["--sensitivity-probes", "0.5,1"], "--sensitivity-probes must be keep-ratios "
                   "in (0, 1)"),
    "probe not a number": (["--sensitivity-probes", "half"],
                           "--sensitivity-probes 'half' must be a comma list of numbers"),
    "probe twice": (["--sensitivity-probes", "0.5,0.5"], "--sensitivity-probes 0.5,0.5 repeats"),
    "refine top of one": (["--refine-top", "1"], "--refine-top 1 refines nothing"),
    "rungs without refinement": (["--refine-top", "0", "--refine-steps", "100,300"],
                                 "--refine-steps 100,300 given with --refine-top 0"),
    "low equal to high": (["--low", "0.5", "--high", "0.5"], "--low 0.5 equals --high 0.5"),
    "step above the range": (["--low", "0.5", "--high", "0.6", "--step", "0.5"],
                             "--step 0.5 is more than"),
    "front every trial": (["--front-every", "1"], "--front-every 1"),
    "final top above trials": (["--trials", "3", "--final-top", "5"],
                               "--final-top 5 is more than --trials 3"),
    "latency table with latency off": (["--latency", "off", "--objectives", "accuracy,flops",
                                        "--latency-table", "{text}"], "given with --latency off"),
    "latency table with latency measured": (["--latency", "measure", "--latency-table",
                                             "{text}"], "given with --latency measure"),
    "dashboard port without dashboard": (["--dashboard-port", "9000"],
                                         "--dashboard-port 9000 given without --dashboard"),
    "per-class without data": (["--per-class", "20"], "--per-class 20 given without --data"),
    "image size for CIFAR batches": (["--data", "{cifar}", "--image-size", "64"],
                                     "--image-size 64 given for CIFAR-10 python batches"),
    "KD weight without distillation": (["--no-distill", "--kd-weight", "0.3"],
                                       "--kd-weight 0.3 given with --no-distill"),
    # --config keys: wrong JSON types, and what the options refuse.
    "config: list for an integer": (["--config", "{cfg}"], "'seed' = [1] is not an integer",
                                    '{"seed": [1]}'),
    "config: string for a flag": (["--config", "{cfg}"], "'dashboard' = \"yes\" is not true "
                                                          "or false", '{"dashboard": "yes"}'),
    "config: fraction for an integer": (["--config", "{cfg}"], "'seed' = 1.5 is not an integer",
                                        '{"seed": 1.5}'),
    "config: null for a number": (["--config", "{cfg}"], "'batch_size' = null is not",
                                  '{"batch_size": null}'),
    "config: object for a list": (["--config", "{cfg}"], "'priors' = {\"cost\": 1} is not",
                                  '{"priors": {"cost": 1}}'),
    "config: nested object for an integer": (["--config", "{cfg}"], "'trials' = {\"n\": 3}",
                                             '{"trials": {"n": 3}}'),
    "config: true for a string": (["--config", "{cfg}"], "'study_name' = true is not a string",
                                  '{"study_name": true}'),
    "config: NaN": (["--config", "{cfg}"], "--score-lr nan is not a finite number",
                    '{"score_lr": NaN}'),
    "config: key twice": (["--config", "{cfg}"], "['trials'] given twice",
                          '{"trials": 3, "trials": 5}'),
    "config: not UTF-8": (["--config", "{cfg}"], "cannot be read as JSON", b'{"trials": "\xff"}'),
    "config: empty string": (["--config", "{cfg}"], "--study-name '' is empty",
                             '{"study_name": ""}'),
    "config: negative seed": (["--config", "{cfg}"], "--seed must be in 0..4294967295",
                              '{"seed": -1}'),
    "config: port without dashboard": (["--config", "{cfg}"], "--dashboard-port 9000 given",
                                       '{"dashboard_port": 9000}'),
    "config: rungs without refinement": (["--config", "{cfg}"], "given with --refine-top 0",
                                         '{"refine_top": 0, "refine_steps": [100, 300]}'),
}


@pytest.fixture(scope="module")
def sweep_files(tmp_path_factory):
    import socket

    d = tmp_path_factory.mktemp("sweep")
    (d / "text.txt").write_text("not a checkpoint\n")
    (d / "blank.pt").write_bytes(b"")
    (d / "folder").mkdir()
    (d / "cifar").mkdir()
    (d / "cifar" / "data_batch_1").write_bytes(b"")  # named only: refused before it is read
    with socket.socket() as busy:  # a port in use, for --dashboard-port
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        yield {"text": str(d / "text.txt"), "blank": str(d / "blank.pt"),
               "dir": str(d / "folder"), "cifar": str(d / "cifar"),
               "port": str(busy.getsockname()[1])}


@pytest.mark.parametrize("name", list(SECOND))
def test_bad_input_second_sweep(name, sweep_files, tmp_path, monkeypatch, capsys):
    """One line on stderr naming the bad value, exit 2, no traceback, no run folder, nothing in
    the working directory; refused before data, base or Ray (they would take seconds here)."""
    from prunetune import cli as launch

    args, expect, *cfg = SECOND[name]
    files = dict(sweep_files, cfg=str(tmp_path / "cfg.json"))
    if cfg:
        (tmp_path / "cfg.json").write_bytes(cfg[0] if isinstance(cfg[0], bytes)
                                            else cfg[0].encode())
    args = [a.format(**files) for a in args]
    if "--budget" not in args:
        args = ["--budget", "50%-FLOPs", *args]
    out = tmp_path / "out"
    if "--out" not in args:
        args += ["--out", str(out)]
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    before = sorted(os.listdir(sweep_files["dir"]))
    assert launch.main(QUICK + args) == 2
    cap = capsys.readouterr()
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1, cap.err[-2000:]
    assert lines[0].startswith("prunetune: error: ") and expect in lines[0], lines[0]
    assert "Traceback" not in cap.out + cap.err and cap.out == "", cap.out[-2000:]
    assert not out.exists() and list(work.iterdir()) == []
    assert sorted(os.listdir(sweep_files["dir"])) == before == []


def test_the_largest_seed_resumes():
    """``--seed 4294967295`` is allowed; a resumed study seeds its sampler with the seed plus
    the trials so far, which numpy refused (issue 24, second sweep)."""
    import optuna

    from prunetune.search._study import SAMPLERS, make_sampler

    for name in SAMPLERS:  # each raised "Seed must be between 0 and 2**32 - 1"
        assert isinstance(make_sampler(name, 2 ** 32 - 1 + 5, 10), optuna.samplers.BaseSampler)
