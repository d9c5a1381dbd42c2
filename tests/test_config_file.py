"""``--config FILE``: every key gets the command-line option's own type checks. A wrong type is
one line naming the key, the value and the type wanted (exit 2, nothing written); a JSON list
for a list option means what the comma list means on the command line."""

from __future__ import annotations

import json

import pytest

from prunetune import cli

QUICK = ["--budget", "50%-FLOPs", "--width", "0.25", "--input-size", "32", "--dry-run"]

BAD = {
    "string for a flag": ({"distill": "no"},
                          "'distill' = \"no\" is not true or false (false is --no-distill)"),
    "number for a flag": ({"final_baseline": 0}, "'final_baseline' = 0 is not true or false"),
    "fraction for an integer": ({"trials": 2.7},
                                "'trials' = 2.7 is not an integer (as for --trials)"),
    "flag for an integer": ({"workers": True}, "'workers' = true is not an integer"),
    "word for a number": ({"final_lr": "fast"}, "'final_lr' = \"fast\" is not a number"),
    "list for a number": ({"width": [0.5]}, "'width' = [0.5] is not a number"),
    "number for a string": ({"model": 18}, "'model' = 18 is not a string"),
    "null for a set option": ({"sampler": None}, "'sampler' = null is not a string"),
    "not a choice": ({"latency": "sometimes"}, "'latency' = \"sometimes\" is not one of"),
    "object for a budget": ({"budget": {"flops": 1}},
                            "'budget' = {\"flops\": 1} is not a string or a list of strings"),
    "list inside a list": ({"refine_steps": [[100], 300]},
                           "'refine_steps' = [[100], 300] is not a comma list or a list of "
                           "numbers or strings"),
    "help as a key": ({"help": True}, "unknown key(s) ['help']"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_a_config_value_of_the_wrong_type_is_one_line(name, tmp_path, monkeypatch, capsys):
    cfg, expect = BAD[name]
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    out = tmp_path / "out"
    assert cli.main(QUICK + ["--config", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("prunetune: error: --config "), err
    assert expect in err, err
    assert not out.exists() and list(work.iterdir()) == []


def _resolved(argv: list[str]) -> dict:
    a = cli.parse_args(argv)
    cli.validate(a)
    return {k: v for k, v in vars(a).items() if k != "config"}


@pytest.mark.parametrize("cfg,argv", [
    ({"round_to_choices": [8, 16, 32]}, ["--round-to-choices", "8,16,32"]),
    ({"refine_steps": [50, 150]}, ["--refine-steps", "50,150"]),
    ({"priors": ["cost:-0.5", "ramp:1"], "allocation": "per-group"},
     ["--priors", "cost:-0.5,ramp:1", "--allocation", "per-group"]),
    ({"objectives": ["accuracy", "flops"]}, ["--objectives", "accuracy,flops"]),
    ({"budget": ["50%-FLOPs", "2M-params"]}, ["--budget", "50%-FLOPs", "--budget", "2M-params"]),
    ({"budget": "50%-FLOPs"}, ["--budget", "50%-FLOPs"]),
    ({"distill": False, "final_baseline": True}, ["--no-distill"]),
    ({"trials": 3, "width": 1, "final_lr": 0.01}, ["--trials", "3", "--width", "1",
                                                   "--final-lr", "0.01"]),
    ({"trials": "3", "data": None}, ["--trials", "3"]),
])
def test_a_config_value_means_what_the_option_means(cfg, argv, tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg))
    base = [] if "budget" in cfg else ["--budget", "50%-FLOPs"]
    assert _resolved(base + ["--config", str(path)]) == _resolved(base + argv)


def test_the_command_line_turns_off_what_the_config_file_sets(tmp_path, capsys):
    """A config file holds defaults: ``--refine-top 0`` or ``--no-distill`` on the command line
    wins over the file's ``refine_steps`` / ``kd_weight`` (given together on one line, or
    together in the file, they are still refused)."""
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"refine_steps": [50, 150], "kd_weight": 0.3}))
    a = cli.parse_args(QUICK + ["--config", str(path), "--refine-top", "0", "--no-distill"])
    assert a.refine_top == 0 and not a.distill
    path.write_text(json.dumps({"refine_steps": [50, 150], "refine_top": 0}))
    assert cli.main(QUICK + ["--config", str(path), "--out", str(tmp_path / "o")]) == 2
    assert "--refine-steps 50,150 given with --refine-top 0" in capsys.readouterr().err


def test_an_image_below_the_stride_but_not_below_half_is_taken(tmp_path, capsys):
    """MNIST's 28 pixels for a network of stride 32: its last map is 1x1, as at 32."""
    assert cli.main(["--budget", "50%-FLOPs", "--input-size", "28", "--dry-run",
                     "--out", str(tmp_path / "o")]) == 0
    assert "error" not in capsys.readouterr().err


@pytest.mark.parametrize("key,value", [
    ("trials", 0), ("seed", -1), ("batch_size", 1), ("score_steps", -1), ("kd_weight", 2),
    ("gpus_per_trial", 1.5), ("front_every", 1), ("refine_steps", [300, 100]),
    ("round_to_choices", [8, 8]), ("val_fraction", 1.5), ("low", 0)])
def test_a_config_key_and_its_option_are_refused_in_the_same_words(key, value, tmp_path,
                                                                   monkeypatch, capsys):
    """The same checks, whichever way a value comes: the stages' settings (``--trials``,
    ``--kd-weight``, ...) and the command line's own (``--val-fraction``) give the key the
    option's message, word for word."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({key: value}))
    text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
    errors = []
    for given in (["--" + key.replace("_", "-"), text], ["--config", str(path)]):
        assert cli.main(QUICK + given + ["--out", str(tmp_path / "out")]) == 2
        errors.append(capsys.readouterr().err.strip())
    assert errors[0] == errors[1] and len(errors[0].splitlines()) == 1, errors
    assert errors[0].startswith("prunetune: error: --" + key.replace("_", "-")), errors[0]
    assert not (tmp_path / "out").exists()
