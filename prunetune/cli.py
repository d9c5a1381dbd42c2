"""prunetune: search per-layer channel keep-ratios for a CNN under a FLOPs / MACs / latency budget.

    prunetune --budget 300M-FLOPs           # installed; python launch.py … in a checkout
    python launch.py --budget 50%-FLOPs --data ../shared/data/cifar10 \\
        --checkpoint ../shared/models/mobilenet_v2_cifar10.pt --input-size 32

Parses and validates the command line, prints, and calls spaces → evaluators → search.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import math
import os
import sys
import textwrap
import time
from typing import Any, NoReturn

from prunetune._text import first_line

KNOWN_RESUME_FREE = {"trials", "workers", "cpus", "address", "dashboard", "dashboard_port",
                     "resume", "dry_run", "out", "config", "max_failures", "final_epochs",
                     "final_lr", "distill", "kd_temperature", "kd_weight", "final_top",
                     "final_baseline", "refine_top", "refine_steps", "refine_by", "export",
                     "gpus_per_trial", "storage", "device", "precision", "final_on"}
# Study options added after runs were made, with the value those runs had implicitly: a run
# folder without the key resumes when the new value equals it.
IMPLIED_BEFORE = {"latency_device": "cpu", "latency_runtime": "torch", "model_sha256": None,
                  "allocation": "per-group"}


# Defaults that depend on the data: with no --data (the embedded digits, a saturated toy on
# which the first run should end in minutes) the run is shorter; any value given wins.
DATA_DEFAULTS = {"trials": 40, "refine_steps": "100,300", "final_epochs": 5}
EMBEDDED_DEFAULTS = {"trials": 16, "refine_steps": "50,150", "final_epochs": 3}


class UsageError(Exception):
    """A user mistake: printed as one line, exit code 2, no traceback."""


def log(msg: str) -> None:
    print(msg, flush=True)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, no usage dump
        raise UsageError(f"{message} (see --help)")


def build_parser() -> argparse.ArgumentParser:
    # The registries feed the choices, so adding a sampler or criterion is one edit.
    from prunetune.evaluators import IMPORTANCES, PRECISIONS, RANK_BY, RUNTIMES
    from prunetune.pipeline import FINAL_ON
    from prunetune.search import ALLOCATIONS, DEFAULT_PRIORS, SAMPLERS

    p = _Parser(
        prog="prunetune", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Search structured-pruning policies (per-layer channel keep-ratios) with "
                    "Ray Tune + Optuna and return the Pareto front of accuracy vs FLOPs and "
                    "latency under a budget; the best candidate is fine-tuned and exported.",
        epilog=textwrap.fill(
            "FLOPs = 2 x MACs of conv and linear layers (torch.utils.flop_counter). Budgets: "
            "300M-FLOPs, 150M-MACs, 2.5M-params, 12ms-latency, 50%-FLOPs; repeat --budget to "
            "combine.", 88) + "\n\n" + textwrap.fill(
            "Resume: re-running on a run folder continues its study. These options may change "
            "between runs (they do not define the study): " + ", ".join(
                "--" + k.replace("_", "-") for k in sorted(KNOWN_RESUME_FREE)
                if k not in ("distill", "final_baseline"))
            + ", --no-distill, --no-final-baseline; any other change is refused.", 88,
            break_on_hyphens=False))
    g = p.add_argument_group("budget")
    g.add_argument("--budget", action="append", metavar="B",
                   help="limit such as 300M-FLOPs, 150M-MACs, 2.5M-params, 12ms-latency or "
                        "50%%-FLOPs (relative to the base); repeatable")
    g = p.add_argument_group("model and data")
    g.add_argument("--model", default="mobilenet_v2",
                   help="network: mobilenet_v2 (default), mobilenet_v3_large, resnet18, "
                        "resnet50, any torchvision classification model name, timm:NAME "
                        "(pip install timm), or FILE.py:CALLABLE, a factory returning an "
                        "nn.Module (the last three grouped automatically)")
    g.add_argument("--width", type=float, default=1.0, help="width multiplier (default 1.0)")
    g.add_argument("--data", default=None,
                   help="ImageFolder root (train/ + val/ or test/) or CIFAR-10 python folder; "
                        "default: embedded scikit-learn digits (offline)")
    g.add_argument("--image-size", type=int, default=None,
                   help="resize images to this size for training/scoring (default: as stored, "
                        "32 for the embedded digits)")
    g.add_argument("--per-class", type=int, default=None,
                   help="use at most this many training images per class (quick runs)")
    g.add_argument("--val-fraction", type=float, default=0.1,
                   help="fraction of the training set held out for scoring (default 0.1)")
    g.add_argument("--weights", default=None, help="torchvision weights name, e.g. IMAGENET1K_V2")
    g.add_argument("--checkpoint", default=None, help="state_dict file of the dense base model")
    g.add_argument("--base-epochs", type=int, default=30,
                   help="epochs to train a base when neither --weights nor --checkpoint is "
                        "given (cached; default 30)")
    g = p.add_argument_group("search space")
    g.add_argument("--low", type=float, default=0.1, help="smallest keep-ratio (default 0.1)")
    g.add_argument("--high", type=float, default=1.0, help="largest keep-ratio (default 1.0)")
    g.add_argument("--step", type=float, default=0.05, help="keep-ratio step (default 0.05)")
    g.add_argument("--round-to", type=int, default=8, help="channel multiple (default 8)")
    g.add_argument("--round-to-choices", default=None, metavar="LIST",
                   help="let the search pick the channel multiple per candidate from this "
                        "comma list, e.g. 8,16,32 (latency-aware rounding)")
    g.add_argument("--importance", default="l1", choices=sorted(IMPORTANCES),
                   help="channel ranking criterion (default l1)")
    g = p.add_argument_group("cost")
    g.add_argument("--input-size", type=int, default=224,
                   help="deployment input size for FLOPs and latency (default 224)")
    g.add_argument("--latency", default="predict", choices=["predict", "measure", "off"],
                   help="latency of candidates: predicted from a per-layer lookup table built "
                        "once on this machine (default), measured inside each trial, or off")
    g.add_argument("--latency-table", default=None, metavar="FILE",
                   help="use this lookup table (e.g. built on the deployment device) instead "
                        "of building one here")
    g.add_argument("--latency-threads", type=int, default=1,
                   help="CPU threads for latency measurements (default 1)")
    g.add_argument("--latency-runtime", default="auto", choices=["auto", *RUNTIMES],
                   help="what latency times: onnxruntime (the exported ONNX model on the CPU, "
                        "as deployed), torch (eager PyTorch) or auto (default: onnxruntime "
                        "when onnx and onnxruntime are installed and latency is timed on the "
                        "CPU, else torch); the lookup table of --latency predict is built in it")
    g = p.add_argument_group("device")
    g.add_argument("--device", default="auto", metavar="DEV",
                   help="where the base, the final fine-tune and evaluation run: auto (cuda "
                        "when torch sees a GPU, else cpu), cpu, cuda or cuda:N (default auto)")
    g.add_argument("--precision", default="auto", choices=list(PRECISIONS),
                   help="training precision: auto (bf16 autocast on a GPU with bf16, fp16 with "
                        "gradient scaling on older GPUs, fp32 on the CPU; default)")
    g.add_argument("--latency-device", default=None, metavar="DEV",
                   help="where latency is measured and its lookup table built (default: "
                        "--device); e.g. cpu to train on a GPU for a CPU deployment")
    g = p.add_argument_group("scoring (per trial)")
    g.add_argument("--bn-batches", type=int, default=20, help="adaptive-BN batches (default 20)")
    g.add_argument("--score-steps", type=int, default=40,
                   help="quick fine-tune steps after adaptive BN (default 40)")
    g.add_argument("--score-lr", type=float, default=0.01, help="quick fine-tune LR (default 0.01)")
    g.add_argument("--score-by", default="accuracy", choices=list(RANK_BY),
                   help="what the quick score ranks by on the validation split: accuracy, "
                        "cross-entropy loss, or KL to the dense base (default accuracy)")
    g.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    g = p.add_argument_group(
        "refinement (multi-fidelity)",
        "After the study, the best candidates at the budget get short distilled fine-tunes "
        "in rungs of successive halving; the pick is the best of the last rung.")
    g.add_argument("--refine-top", type=int, default=4,
                   help="candidates at the budget entering the first rung (0 = pick by the "
                        "quick score alone; default 4)")
    g.add_argument("--refine-steps", default=None, metavar="LIST",
                   help="fine-tune steps of each rung; each keeps the better half "
                        "(default {refine_steps}, {e_refine_steps} on the embedded digits)")
    g.add_argument("--refine-by", default="kl", choices=list(RANK_BY),
                   help="what the rungs rank by on the validation split (default kl: "
                        "KL divergence to the dense base's predictions)")
    g = p.add_argument_group("search")
    g.add_argument("--trials", type=int, default=None,
                   help="completed trials wanted (default {trials}, {e_trials} on the embedded "
                        "digits)")
    g.add_argument("--workers", type=int, default=2, help="trials run at once (default 2)")
    g.add_argument("--cpus", type=int, default=None,
                   help="CPUs for a local Ray instance (default: all cores)")
    g.add_argument("--gpus-per-trial", type=float, default=None,
                   help="GPUs per trial (default: 1/--workers with --device cuda on a local "
                        "Ray, else 0; on a cluster the trials run on CUDA when > 0)")
    g.add_argument("--sampler", default="tpe", choices=list(SAMPLERS),
                   help="Optuna sampler (default: multivariate TPE)")
    g.add_argument("--objectives", default="accuracy,flops,latency", metavar="LIST",
                   help="comma list from accuracy,flops,latency (accuracy first; default all)")
    g.add_argument("--front-every", type=int, default=4, metavar="N",
                   help="one sampled trial in N explores below the budget for the Pareto "
                        "front; the others land at the budget, where the pick is made "
                        "(0 = all at the budget; default 4)")
    g.add_argument("--allocation", default="structured", choices=list(ALLOCATIONS),
                   help="what a sampled trial proposes: structured (the cost-aware exponent, "
                        "the way towards the sensitivity allocation and a multiplier per "
                        "depth; default) or per-group (one keep-ratio per channel group)")
    g.add_argument("--priors", default=",".join(DEFAULT_PRIORS), metavar="LIST",
                   help="start allocations enqueued after uniform width: sens:T (the "
                        "sensitivity allocation, from each group cut alone and scored after "
                        "adaptive BN; T < 1 part of the way from uniform width), cost:A (keep ~ "
                        "(cost of a channel)^-A; A < 0 keeps the costly residual widths) and "
                        "ramp:B (keep ~ depth^B; per-group allocation only), or none (default "
                        f"{','.join(DEFAULT_PRIORS)})")
    g.add_argument("--sensitivity-probes", default="0.2,0.4,0.6,0.8", metavar="LIST",
                   help="keep-ratios each group is cut to, alone, by the sensitivity pass "
                        "behind the sens: start point (default 0.2,0.4,0.6,0.8)")
    g.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    g.add_argument("--max-failures", type=int, default=1,
                   help="retries of a failed trial before it is recorded as failed (default 1)")
    g.add_argument("--storage", default=None,
                   help="Optuna storage URL (default: sqlite file in the run folder)")
    g.add_argument("--study-name", default="prunetune",
                   help="study name in the storage (default prunetune); searches sharing one "
                        "--storage at the same time need different names")
    g.add_argument("--address", default=None,
                   help="attach to this Ray cluster (default: RAY_ADDRESS, else a local one)")
    g = p.add_argument_group("final model")
    g.add_argument("--final-epochs", type=int, default=None,
                   help="fine-tune epochs (default {final_epochs}, {e_final_epochs} on the "
                        "embedded digits)")
    g.add_argument("--final-lr", type=float, default=0.005,
                   help="fine-tune peak LR, reached after a half-epoch warm-up (default 0.005)")
    g.add_argument("--no-distill", dest="distill", action="store_false",
                   help="fine-tune without distillation from the dense base")
    g.add_argument("--kd-temperature", type=float, default=4.0, help="distillation temperature")
    g.add_argument("--kd-weight", type=float, default=0.5, help="distillation loss weight")
    g.add_argument("--final-top", type=int, default=1,
                   help="fine-tune the K most accurate candidates within budget (default 1)")
    g.add_argument("--no-final-baseline", dest="final_baseline", action="store_false",
                   help="do not give the uniform-width baseline the same final fine-tune "
                        "(by default it gets one and the gain over it is printed)")
    g.add_argument("--final-on", default="auto", choices=list(FINAL_ON),
                   help="where the final fine-tunes run: driver (this process, on --device), "
                        "ray (Ray tasks side by side, each with a GPU when trials use GPUs, "
                        "e.g. this driver on a CPU node of a GPU cluster) or auto (ray when "
                        "trials use GPUs and --device is the CPU, else driver)")
    g.add_argument("--export", default="onnx", choices=["onnx", "none"],
                   help="export format of the final model (ONNX, or TorchScript without onnx)")
    g = p.add_argument_group("run")
    g.add_argument("--out", default=None,
                   help="run folder (default runs/<time>); re-running on it resumes the study")
    g.add_argument("--resume", action="store_true",
                   help="resume the newest run in runs/ (or --out)")
    g.add_argument("--config", default=None, help="JSON file of option defaults (strict keys)")
    g.add_argument("--dry-run", action="store_true",
                   help="print costs, the budget and the space's range, then exit")
    g.add_argument("--dashboard", action="store_true",
                   help="serve optuna-dashboard on 127.0.0.1 while the search runs")
    g.add_argument("--dashboard-port", type=int, default=None,
                   help="dashboard port (default 8080; only with --dashboard)")
    fill = {**DATA_DEFAULTS, **{f"e_{k}": v for k, v in EMBEDDED_DEFAULTS.items()}}
    for action in p._actions:
        if action.dest in DATA_DEFAULTS and action.help:
            action.help = action.help.format(**fill)
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The options of ``argv`` over the ``--config`` file's over the defaults, each of the
    type its option takes; an empty value, a non-finite number, and a value given for an
    option that another one given makes meaningless are refused here (:func:`validate` checks
    the ranges)."""
    parser = build_parser()
    pre, _ = parser.parse_known_args(argv)
    cfg: dict[str, Any] = {}
    if pre.config is not None:
        if not pre.config.strip():
            raise UsageError("--config '' is empty; give a JSON file of option defaults, or "
                             "leave --config out.")
        try:
            with open(pre.config, encoding="utf-8") as f:
                cfg = json.load(f, object_pairs_hook=_no_duplicate_keys)
        except (OSError, ValueError) as e:  # JSONDecodeError, UnicodeDecodeError, duplicates
            first = first_line(e)
            raise UsageError(f"--config {pre.config!r} cannot be read as JSON ({first}); give "
                             f"a JSON object of option names and values.") from None
        if not isinstance(cfg, dict):
            raise UsageError(f"--config {pre.config!r} holds {type(cfg).__name__}, not a JSON "
                             f"object of option names and values.")
        actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "config")}
        bad = sorted(set(cfg) - set(actions))
        if bad:
            raise UsageError(f"--config {pre.config!r}: unknown key(s) {bad}; valid keys are "
                             f"the long option names with '_' (e.g. 'final_epochs').")
        cfg = {k: config_value(actions[k], v) for k, v in cfg.items()}
        parser.set_defaults(**cfg)
    a = parser.parse_args(argv)
    line = _given(argv, {})
    # A config file holds defaults: a key of it is not given when the command line turns its
    # option off (--refine-top 0 over the file's refine_steps, --no-distill over kd_weight).
    given = line | {k for k in cfg if not _TURNED_OFF_BY.get(k, set()) & line}
    check_values(parser, a)
    check_given(a, given)
    for k, v in (DATA_DEFAULTS if a.data else EMBEDDED_DEFAULTS).items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    if a.dashboard_port is None:
        a.dashboard_port = DASHBOARD_PORT
    return a


DASHBOARD_PORT = 8080


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object's pairs as a dict; a key given twice (JSON keeps the last silently) is
    refused."""
    keys = [k for k, _ in pairs]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise ValueError(f"key(s) {dup} given twice; give each once")
    return dict(pairs)


def _given(argv: list[str] | None, cfg: dict[str, Any]) -> set[str]:
    """The options given on the command line or in the ``--config`` file (not defaulted)."""
    quiet = build_parser()
    for action in quiet._actions:
        action.default = argparse.SUPPRESS
    return set(vars(quiet.parse_known_args(argv)[0])) | set(cfg)


# The largest value an integer option may take: torch and the C libraries under it take a C int.
INT_MAX = 2 ** 31 - 1


def check_values(parser: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    """Values no option takes: an empty text (``--out ""`` would fall back to the default
    silently), a number that is not finite (nan passes every ``<`` check), and an integer
    beyond what torch and the C libraries take."""
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        v = getattr(a, action.dest, None)
        opt = action.option_strings[0]
        for item in (v if isinstance(v, list) else [v]):
            if isinstance(item, str) and not item.strip():
                raise UsageError(f"{opt} {item!r} is empty; give a value, or leave {opt} out "
                                 f"for its default.")
        if isinstance(v, float) and not math.isfinite(v):
            raise UsageError(f"{opt} {v} is not a finite number; give one such as "
                             f"{action.default if action.default is not None else 1}.")
        if isinstance(v, int) and not isinstance(v, bool) and abs(v) > INT_MAX \
                and action.dest != "seed":
            raise UsageError(f"{opt} {v} is out of range; give at most {INT_MAX}.")


# The options check_given refuses beside the one that turns them off.
_TURNED_OFF_BY = {"dashboard_port": {"dashboard"}, "refine_steps": {"refine_top"},
                  "kd_temperature": {"distill"}, "kd_weight": {"distill"}}


def check_given(a: argparse.Namespace, given: set[str]) -> None:
    """Options given together with one that makes them meaningless (each would otherwise be
    ignored without a word)."""
    if "dashboard_port" in given and not a.dashboard:
        raise UsageError(f"--dashboard-port {a.dashboard_port} given without --dashboard; add "
                         f"--dashboard to serve it, or drop --dashboard-port.")
    if "refine_steps" in given and a.refine_top == 0:
        raise UsageError(f"--refine-steps {a.refine_steps} given with --refine-top 0, which "
                         f"turns refinement off; drop one of them.")
    kd = sorted(k for k in ("kd_temperature", "kd_weight") if k in given)
    if kd and not a.distill:
        opt = "--" + kd[0].replace("_", "-")
        raise UsageError(f"{opt} {getattr(a, kd[0])} given with --no-distill (no distillation "
                         f"to weigh); drop one of them.")


_TYPE_NAMES: dict[Any, str] = {int: "an integer", float: "a number"}


def config_value(action: argparse.Action, value: Any, what: str = "--config key") -> Any:
    """A ``--config`` value (or, with ``what="option"``, a keyword of ``prunetune.search``) as
    the option ``action`` takes it from the command line: the same type and choices (a flag
    takes true or false; a list option, a comma string or a JSON list; ``--budget``, a string
    or a list of them), else a UsageError naming the key, the value and the type wanted. The
    ranges are checked later, by :func:`validate`, as for the option."""
    key = action.dest

    option = action.option_strings[0] if action.option_strings else key
    flag = isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))
    meaning = (f"{json.dumps(not action.default)} is {option}" if flag else f"as for {option}")

    def refuse(wanted: str) -> UsageError:
        return UsageError(f"{what} {key!r} = {json.dumps(value, default=repr)} is not {wanted} "
                          f"({meaning}).")

    def scalar(v: Any) -> bool:
        return isinstance(v, (str, int, float)) and not isinstance(v, bool)

    if flag:
        if not isinstance(value, bool):
            raise refuse("true or false")
        return value
    if isinstance(action, argparse._AppendAction):
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            return value
        raise refuse("a string or a list of strings")
    if value is None and action.default is None:  # null: the option left unset
        return None
    if action.metavar == "LIST":  # a comma list on the command line
        if isinstance(value, list) and value and all(scalar(v) for v in value):
            return ",".join(map(str, value))
        if isinstance(value, str):
            return value
        raise refuse("a comma list or a list of numbers or strings")
    wanted = _TYPE_NAMES.get(action.type, "a string")
    if not scalar(value) or (action.type is None and not isinstance(value, str)):
        raise refuse(wanted)
    if callable(action.type):
        try:  # the text the command line would have been given, through the option's own type
            value = action.type(value if isinstance(value, str) else json.dumps(value))
        except (TypeError, ValueError):
            raise refuse(wanted) from None
    if action.choices is not None and value not in action.choices:
        raise UsageError(f"{what} {key!r} = {json.dumps(value, default=repr)} is not one of "
                         f"{list(action.choices)}.")
    return value


def validate(a: argparse.Namespace) -> None:
    """Check the parsed options (the comma lists are parsed into ``a``), cheapest first: the
    stages' settings check their own options (:func:`check_settings`), then the rules of no
    one stage (the space, the data, combinations) and what this machine must allow. Every
    message names the option, the value and the rule."""
    _parse_lists(a)
    check_settings(a)
    _check_counts(a)
    _check_ranges(a)
    _check_machine(a)
    _check_data_options(a)
    _check_runtime(a)
    if "latency" in a.objectives and a.latency == "off":
        raise UsageError("--objectives includes latency but --latency off; drop one of them.")
    if a.latency_table and not os.path.isfile(a.latency_table):
        raise UsageError(f"--latency-table {a.latency_table!r} does not exist; give a table file "
                         f"written by a run (cache folder ~/.cache/prunetune/latency).")
    if a.checkpoint:
        from prunetune.evaluators import CheckpointError, read_state_dict

        try:  # a file that is no checkpoint is refused before data, base or Ray
            read_state_dict(a.checkpoint)
        except CheckpointError as e:
            raise UsageError(str(e)) from None
    if not a.budget:
        raise UsageError("--budget is required, e.g. --budget 300M-FLOPs "
                         "(see --help for the accepted forms).")


def stage_settings(a: argparse.Namespace) -> dict[str, Any]:
    """The stages' settings (``study``, ``score``, ``refine``, ``sensitivity``, ``finetune``)
    of the parsed options, as :class:`prunetune.pipeline.SearchJob` takes them. Each checks
    its own options when it is made: a ValueError naming the option. Before ``--device`` is resolved an unset
    ``--gpus-per-trial`` is taken as 0 (the share it defaults to, 1/--workers on a GPU, is one
    the rule allows)."""
    from prunetune.evaluators import FinetuneConfig, ScoreConfig, SensitivityConfig
    from prunetune.search import RefineSettings, StudySettings

    gpus = a.gpus_per_trial if a.gpus_per_trial is not None else 0.0
    return {
        "study": StudySettings(trials=a.trials, workers=a.workers, sampler=a.sampler,
                               objectives=tuple(a.objectives), seed=a.seed,
                               max_failures=a.max_failures, gpus_per_trial=gpus,
                               round_to_choices=a.round_to_choices or (),
                               study_name=a.study_name, front_every=a.front_every,
                               priors=tuple(a.priors), allocation=a.allocation),
        "score": ScoreConfig(bn_batches=a.bn_batches, steps=a.score_steps,
                             batch_size=a.batch_size, lr=a.score_lr,
                             report_every=max(1, a.score_steps // 2), importance=a.importance,
                             seed=a.seed, rank_by=a.score_by, precision=a.precision),
        "refine": RefineSettings(top=a.refine_top, steps=tuple(a.refine_steps),
                                 rank_by=a.refine_by),
        "sensitivity": SensitivityConfig(probes=tuple(a.sensitivity_probes),
                                         batch_size=a.batch_size, seed=a.seed),
        "finetune": FinetuneConfig(epochs=a.final_epochs, lr=a.final_lr,
                                   batch_size=a.batch_size, distill=a.distill,
                                   kd_temperature=a.kd_temperature, kd_weight=a.kd_weight,
                                   seed=a.seed, precision=a.precision)}


def check_settings(a: argparse.Namespace) -> None:
    """The stages' own checks of their options (:func:`stage_settings`), as one-line
    UsageErrors."""
    try:
        stage_settings(a)
    except ValueError as e:
        raise UsageError(str(e)) from None


MAX_WIDTH = 4.0
MAX_INPUT_SIZE = 4096
MAX_IMAGE_SIZE = 1024
# A local Ray given more CPUs than this many times the machine's cores runs each trial's
# threads on a fraction of a core; fewer is left alone (tests run --cpus 2 on one core).
CPU_OVERCOMMIT = 4


def _check_counts(a: argparse.Namespace) -> None:
    """The counts and sizes of no one stage's settings (>= 1, >= 0, at most a maximum), and
    the values that do nothing."""
    from prunetune.evaluators import check_at_least

    try:
        check_at_least(1, input_size=a.input_size, latency_threads=a.latency_threads,
                       final_top=a.final_top)
        check_at_least(0, base_epochs=a.base_epochs)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if a.input_size > MAX_INPUT_SIZE:
        raise UsageError(f"--input-size must be at most {MAX_INPUT_SIZE} (the dense network "
                         f"is run at it to time and trace it), but got {a.input_size}.")
    if a.image_size is not None and not 1 <= a.image_size <= MAX_IMAGE_SIZE:
        raise UsageError(f"--image-size must be in 1..{MAX_IMAGE_SIZE} (images are decoded "
                         f"and trained on at this size), but got {a.image_size}.")
    if a.final_top > a.trials:
        raise UsageError(f"--final-top {a.final_top} is more than --trials {a.trials}; the "
                         f"final fine-tune can take at most as many candidates as trials ran.")
    if a.refine_top == 1:
        raise UsageError("--refine-top 1 refines nothing (successive halving compares at "
                         "least two candidates); give 0 to pick by the quick score alone, or "
                         ">= 2.")


def _parse_lists(a: argparse.Namespace) -> None:
    """The comma lists (--round-to-choices, --refine-steps, --sensitivity-probes, --priors,
    --objectives) parsed into ``a``; what their items must be is the stages' settings' to check."""
    if a.round_to_choices is not None:
        a.round_to_choices = _number_list("--round-to-choices", str(a.round_to_choices), int,
                                          "e.g. 8,16,32")
    a.refine_steps = _number_list("--refine-steps", str(a.refine_steps), int, "e.g. 100,300")
    a.sensitivity_probes = _number_list("--sensitivity-probes", str(a.sensitivity_probes),
                                        float, "e.g. 0.2,0.4,0.6,0.8")
    from prunetune.search import parse_priors

    text = a.priors if isinstance(a.priors, str) else ",".join(map(str, a.priors))
    try:
        a.priors = parse_priors(text)
    except ValueError as e:
        raise UsageError(f"--priors {text!r}: {e}") from None
    text = a.objectives if isinstance(a.objectives, str) else ",".join(a.objectives)
    a.objectives = [o.strip() for o in text.split(",") if o.strip()]


def _check_ranges(a: argparse.Namespace) -> None:
    """The ratios and ranges of no one stage's settings (--width, --low/--high/--step,
    --val-fraction, the dashboard port)."""
    if a.cpus is not None and a.cpus < 1:
        raise UsageError(f"--cpus must be >= 1, but got {a.cpus}.")
    from prunetune.spaces import SearchSpace

    try:  # the space's own rules, before the space (and its network) is made
        SearchSpace.check_width(a.width)
        SearchSpace.check_bounds(a.low, a.high, a.step, a.round_to)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if a.width > MAX_WIDTH:
        raise UsageError(f"--width must be at most {MAX_WIDTH:g} (a {MAX_WIDTH ** 2:g}x larger "
                         f"dense network), but got {a.width:g}.")
    from prunetune.evaluators import DataError, check_val_fraction

    try:
        check_val_fraction(a.val_fraction)
    except DataError as e:
        raise UsageError(str(e)) from None
    if a.low == a.high:
        raise UsageError(f"--low {a.low} equals --high {a.high}: every candidate would be the "
                         f"same network; give --low below --high.")
    if a.step > a.high - a.low + 1e-9:
        raise UsageError(f"--step {a.step} is more than --high - --low "
                         f"({a.high - a.low:.6g}): the keep-ratio grid would hold --low "
                         f"alone; give a smaller --step.")
    if not 1 <= a.dashboard_port <= 65535:
        raise UsageError(f"--dashboard-port must be in 1..65535, but got {a.dashboard_port}.")


def _check_machine(a: argparse.Namespace) -> None:
    """What this machine or the cluster must allow: the dashboard port, --out, the Ray address,
    the CPUs and GPUs, the latency device (``a``'s devices are resolved)."""
    if a.dashboard:
        check_dashboard(a.dashboard_port)
    if a.out:
        check_out(a.out)
    if a.resume and a.out and not os.path.isfile(os.path.join(a.out, "config.json")):
        raise UsageError(f"--resume: --out {a.out!r} holds no run (no config.json); give the "
                         f"folder of an earlier run, or drop --resume to start one there.")
    address = ray_address(a)
    local = not address
    if address:
        check_address(address, source="--address" if a.address else "RAY_ADDRESS")
    cores = os.cpu_count() or 1
    if local and a.cpus is not None and a.cpus > CPU_OVERCOMMIT * cores:
        raise UsageError(f"--cpus {a.cpus} is more than {CPU_OVERCOMMIT} x the {cores} CPU "
                         f"cores of this machine, where a local Ray runs every trial (each "
                         f"would run {a.cpus // a.workers} threads on them); give --cpus "
                         f"{cores} or less, or attach to a cluster with --address.")
    if local and a.workers > (a.cpus or cores):
        raise UsageError(f"--workers {a.workers} is more than the {a.cpus or cores} "
                         f"CPUs Ray is given here; lower --workers or raise --cpus.")
    resolve_devices(a, local)
    if a.latency_table and a.latency != "predict":
        raise UsageError(f"--latency-table {a.latency_table!r} given with --latency "
                         f"{a.latency}, which does not read a table; give --latency predict, "
                         f"or drop --latency-table.")
    if (a.latency != "off" and not a.latency_table and a.latency_device == "cpu"
            and a.latency_threads > cores):
        raise UsageError(f"--latency-threads {a.latency_threads} is more than the {cores} CPU "
                         f"cores latency is timed on here (the threads would time each other); "
                         f"give at most {cores}.")
    if local and a.gpus_per_trial > 0:
        import torch

        if not torch.cuda.is_available():
            raise UsageError(f"--gpus-per-trial {a.gpus_per_trial:g} but this machine has no "
                             f"CUDA GPU that torch can use; drop --gpus-per-trial to run on CPU.")


def _check_data_options(a: argparse.Namespace) -> None:
    """The data and base options that do not go together."""
    if a.per_class is not None and a.per_class < 2:
        raise UsageError(f"--per-class must be >= 2, but got {a.per_class}.")
    if a.per_class is not None and not a.data:
        raise UsageError(f"--per-class {a.per_class} given without --data: the embedded digits "
                         f"are used whole; give --data, or drop --per-class.")
    if a.image_size not in (None, 32) and a.data and \
            os.path.isfile(os.path.join(a.data, "data_batch_1")):
        raise UsageError(f"--image-size {a.image_size} given for CIFAR-10 python batches, "
                         f"which are used as stored (32x32); drop --image-size, or give the "
                         f"images as an ImageFolder.")
    if a.weights and a.checkpoint:
        raise UsageError("--weights and --checkpoint both given; pass only one base model.")


def _check_runtime(a: argparse.Namespace) -> None:
    """Resolve --latency-runtime on the latency device; refuse one that cannot run there."""
    from prunetune.evaluators import resolve_runtime

    a.latency_runtime = resolve_runtime(a.latency_runtime, a.latency_device)
    if a.latency_runtime != "torch":
        from prunetune.evaluators import check_runtime

        try:
            check_runtime(a.latency_runtime, a.latency_device)
        except ValueError as e:
            raise UsageError(str(e)) from None
        if importlib.util.find_spec("onnxruntime") is None:
            raise UsageError("--latency-runtime onnxruntime needs onnxruntime: "
                             "pip install -e \".[export]\" (or pip install onnx onnxruntime).")


def check_out(out: str) -> None:
    """Refuse a run folder that cannot be made: an existing file, or one under a file or in a
    folder this process cannot write."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"--out {out!r} is an existing file, not a folder; give a new or "
                         f"existing folder.")
    d = os.path.abspath(out)
    while not os.path.exists(d):
        d = os.path.dirname(d)
    if not os.path.isdir(d) or not os.access(d, os.W_OK | os.X_OK):
        what = "a file" if not os.path.isdir(d) else "a folder this user cannot write"
        raise UsageError(f"--out {out!r} cannot be made: {d!r} is {what}; give a folder in a "
                         f"writable place.")


def check_dashboard(port: int) -> None:
    """Refuse ``--dashboard`` where optuna-dashboard is not installed or ``port`` is taken."""
    import shutil
    import socket

    exe = shutil.which("optuna-dashboard") or os.path.join(os.path.dirname(sys.executable),
                                                           "optuna-dashboard")
    if not os.path.isfile(exe):
        raise UsageError("--dashboard needs optuna-dashboard: pip install optuna-dashboard "
                         "(or drop --dashboard).")
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            raise UsageError(f"--dashboard-port {port}: 127.0.0.1:{port} is taken "
                             f"({e.strerror or e}); give another --dashboard-port.") from None


def resolve_devices(a: argparse.Namespace, local: bool) -> None:
    """``--device``/``--latency-device`` checked and made concrete (``auto`` → cuda or cpu);
    ``--precision`` checked for the device; ``--gpus-per-trial`` defaulted: a local GPU is
    shared by the ``--workers`` trials, and a cluster's trials use GPUs only when asked."""
    from prunetune.evaluators import DeviceError, resolve_device, resolve_precision

    asked = a.device
    try:
        a.device = resolve_device(a.device)
        a.latency_device = resolve_device(a.latency_device or a.device)
        resolve_precision(a.precision, a.device)
    except DeviceError as e:
        raise UsageError(f"--device/--latency-device/--precision: {e}") from None
    if a.gpus_per_trial is None:  # a given one is checked by StudySettings
        a.gpus_per_trial = 1.0 / a.workers if local and a.device != "cpu" else 0.0
    if a.precision == "fp16" and a.gpus_per_trial == 0:
        raise UsageError("--precision fp16 needs CUDA in the trials too, but they run on the "
                         "CPU (--gpus-per-trial 0); use --precision auto or bf16, or give "
                         "--gpus-per-trial.")
    if a.gpus_per_trial > 0 and asked.strip().lower() == "cpu":
        raise UsageError(f"--gpus-per-trial {a.gpus_per_trial:g} runs trials on CUDA but "
                         f"--device cpu was given; drop one of them.")


def ray_address(a: argparse.Namespace) -> str | None:
    """The cluster to attach to (``--address``, else ``RAY_ADDRESS``); None for a local one."""
    return a.address or os.environ.get("RAY_ADDRESS") or None


def check_address(address: str, timeout: float = 5.0, source: str = "--address"
                  ) -> None:
    """Refuse a Ray cluster address that is not ``HOST:PORT`` (a head's GCS), ``ray://HOST:PORT``
    (a Ray client server), ``auto`` or ``local``, or one where nothing answers, within
    ``timeout`` seconds (Ray's own connection attempt retries for minutes). ``auto`` and
    ``local`` are left to Ray. ``source`` names where the address came from (``RAY_ADDRESS``)."""
    import socket

    if address in ("auto", "local"):
        return
    scheme, sep, rest = address.rpartition("://")
    if sep and scheme != "ray":
        raise UsageError(f"{source} {address!r} is not a Ray address; give HOST:PORT (the "
                         f"head's GCS, e.g. 127.0.0.1:6379), ray://HOST:PORT (a Ray client "
                         f"server, e.g. ray://127.0.0.1:10001), auto or local.")
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise UsageError(f"{source} {address!r} is not {scheme + '://' if sep else ''}HOST:PORT "
                         f"with a port in 1..65535; give the head's address, e.g. "
                         f"{'ray://127.0.0.1:10001' if sep else '127.0.0.1:6379'}.")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        start = ("ray start --head --ray-client-server-port " if sep else
                 "ray start --head --port ") + port
        raise UsageError(f"{source} {address!r}: nothing answers there ({e.strerror or e}); "
                         f"start the head with `{start}` or fix the address.") from None


def _number_list(option: str, text: str, kind: type, example: str) -> tuple:
    """A comma list of numbers of type ``kind``, or a UsageError naming the option (their
    range is the stage's settings' to check)."""
    try:
        return tuple(kind(v) for v in text.strip("()[] ").split(","))
    except ValueError:
        raise UsageError(f"{option} {text!r} must be a comma list of numbers, "
                         f"{example}.") from None


def resolve_out(a: argparse.Namespace) -> str:
    if a.out:
        return a.out
    if a.resume:  # the newest folder that holds a run (a refused one leaves none behind)
        runs = sorted(d for d in os.listdir("runs")
                      if os.path.isfile(os.path.join("runs", d, "config.json"))) \
            if os.path.isdir("runs") else []
        if not runs:
            raise UsageError("--resume: no run folder found in runs/; pass --out RUN_FOLDER.")
        return os.path.join("runs", runs[-1])
    return os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))


def study_config(a: argparse.Namespace) -> dict[str, Any]:
    """The options that define the study; a resumed run must match them exactly."""
    return {k: v for k, v in sorted(vars(a).items()) if k not in KNOWN_RESUME_FREE}


def console() -> NoReturn:
    """The command (``prunetune``, ``python launch.py``): :func:`main`, then :func:`exit_now`."""
    exit_now(main())


def exit_now(code: int) -> NoReturn:
    """End the process with ``code`` once its output is flushed and Ray is shut down, without
    the interpreter's tear-down of the modules it imported: with torch, torchvision, Ray and
    onnxruntime loaded that tear-down frees nothing the OS would not, and took 2.1-2.3 s of
    every run here (measured: the same imports, ``os._exit`` against a normal exit)."""
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()  # a local instance's processes go with it, as at a normal exit
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except UsageError as e:
        print(f"prunetune: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("prunetune: interrupted; completed trials are saved in the study. Re-run the same "
              "command (same --out) to continue.", file=sys.stderr)
        return 130


def _main(argv: list[str] | None) -> int:
    a = parse_args(argv)
    validate(a)
    from prunetune.evaluators import CheckpointError, DataError
    from prunetune.search import BudgetError, parse_budgets
    from prunetune.spaces import get_space

    try:
        budgets = parse_budgets(a.budget)
        space = get_space(a.model, width_mult=a.width, num_classes=class_hint(a.data),
                          low=a.low, high=a.high,
                          step=a.step, round_to=a.round_to)
    except (BudgetError, ValueError) as e:
        raise UsageError(str(e)) from None
    check_budgets(budgets)
    check_network(a, space)
    a.model_sha256 = getattr(space, "sha256", None)  # a file's network: resumes need the same
    if a.weights and ":" in a.model:  # timm:NAME or FILE.py:CALLABLE
        raise UsageError(f"--weights {a.weights} names torchvision weights, which --model "
                         f"{a.model} has none of; give its weights as --checkpoint FILE (a "
                         f"state_dict).")
    check_latency_budget(budgets, a.latency)
    if a.dry_run:
        return dry_run(a, space, budgets)

    out = resolve_out(a)
    cfg = json.loads(json.dumps(study_config(a), default=str))  # as config.json will hold it
    check_resume(out, cfg)
    if a.storage:
        check_storage(a.storage)
    from prunetune.pipeline import SetupError, run_search

    if not a.data:
        log(f"embedded digits (no --data): a short run of --trials {a.trials}, --refine-steps "
            f"{','.join(map(str, a.refine_steps))}, --final-epochs {a.final_epochs} (each can "
            f"be set)")
    try:
        run_search(make_job(a, budgets, out, cfg), log=log)
    except (DataError, CheckpointError, BudgetError, SetupError) as e:
        raise UsageError(str(e)) from None
    return 0


def check_latency_budget(budgets: list, latency: str) -> None:
    """Refuse a budget in milliseconds without ``--latency predict``."""
    lat_budget = next((b for b in budgets if b.metric == "latency"), None)
    if lat_budget is not None and latency != "predict":
        raise UsageError(f"--budget {lat_budget} needs --latency predict (the lookup table "
                         f"checks each proposal before training), not --latency {latency}.")


def check_budgets(budgets: list) -> None:
    """One budget per measure: of two, the first would be silently replaced by the second
    (FLOPs and MACs are one measure, FLOPs = 2 x MACs)."""
    seen: dict[str, Any] = {}
    for b in budgets:
        measure = "FLOPs/MACs" if b.metric in ("flops", "macs") else b.metric
        if measure in seen:
            raise UsageError(f"--budget {b} repeats the {measure} limit of --budget "
                             f"{seen[measure]}; give one budget per measure (FLOPs or MACs, "
                             f"params, latency).")
        seen[measure] = b


def check_network(a: argparse.Namespace, space: Any) -> None:
    """``--input-size`` and ``--image-size`` the network runs at without its later stages
    seeing mostly padding (at least half its total stride: 28-pixel MNIST images are fine for
    a stride of 32), and a ``--round-to`` (or choice) below
    the widest channel group (else nothing can be pruned). Traced on the ``meta`` device."""
    try:
        net = space.network
    except Exception:  # noqa: BLE001 - a network that does not trace is refused later
        return
    try:  # the layers whose size follows the input's (not those after a global pool: SE)
        big = 2 * space.trace_size
        hw, half = net.input_hw(big), net.input_hw(space.trace_size)
        spatial = [layer.name for layer in net.layers
                   if layer.kind == "conv" and hw[layer.name] != half[layer.name]]
        stride = big // max(1, min((min(hw[n]) for n in spatial), default=big))
    except Exception:  # noqa: BLE001 - a network of one input size: checked below
        stride = 1
    for opt, size in (("--input-size", a.input_size), ("--image-size", a.image_size)):
        if size is None:
            continue
        if size < stride // 2:
            raise UsageError(f"{opt} {size} is below half the {stride}-pixel stride of "
                             f"{a.model} (its later stages would see maps made mostly of "
                             f"padding); give at least {stride // 2}.")
        try:
            net.input_hw(size)
        except Exception as e:  # noqa: BLE001 - a shape error says the network cannot take it
            first = first_line(e, 160)
            raise UsageError(f"{opt} {size}: {a.model} does not run at {size}x{size} "
                             f"({first}); give the size it was made for.") from None
    widest = max(g.channels for g in space.groups)
    for r in (a.round_to, *(a.round_to_choices or ())):
        if r >= widest:
            opt = "--round-to" if r == a.round_to else "--round-to-choices"
            raise UsageError(f"{opt} {r} is not below the widest channel group of {a.model} "
                             f"({widest} channels), so no group could be pruned; give a "
                             f"smaller multiple, e.g. 8.")


def check_resume(out: str, cfg: dict[str, Any]) -> None:
    """Refuse to resume ``out`` if its study was made with other study-defining options;
    options added since (``IMPLIED_BEFORE``) count as the value such runs had."""
    cfg_path = os.path.join(out, "config.json")
    if not os.path.isfile(cfg_path):
        return
    with open(cfg_path) as f:
        old = {**IMPLIED_BEFORE, **json.load(f).get("study", {})}
    diff = [k for k in sorted(set(old) | set(cfg)) if old.get(k) != cfg.get(k)]
    if "model_sha256" in diff and old.get("model") == cfg.get("model"):
        raise UsageError(f"--model {cfg.get('model')}: the file changed since the study in "
                         f"--out {out!r} was made (sha256 {str(old['model_sha256'])[:12]}… "
                         f"there, {str(cfg['model_sha256'])[:12]}… now); restore it, or use a "
                         f"new --out.")
    if diff:
        k = diff[0]
        raise UsageError(f"--out {out!r} holds a study of a different configuration "
                         f"({k}: {old.get(k)!r} there, {cfg.get(k)!r} now); use a new --out "
                         f"or the same options.")


def class_hint(root: str | None) -> int:
    """Class count for cost reporting before the data is loaded (10 for the embedded digits)."""
    train = os.path.join(root, "train") if root else ""
    if root and os.path.isdir(train):
        return max(2, sum(e.is_dir() for e in os.scandir(train)))
    return 10


def check_storage(url: str) -> None:
    """Refuse a storage URL that cannot be opened, without creating or changing anything."""
    import sqlalchemy

    if "://" not in url:
        raise UsageError(f"--storage {url!r} is not a database URL; use e.g. "
                         f"sqlite:///study.db or postgresql://user@127.0.0.1/db.")
    if url.split("://")[0].split("+")[0] == "sqlite":
        check_sqlite(url)
        return
    try:
        with sqlalchemy.create_engine(url).connect():
            pass
    except Exception as e:  # noqa: BLE001 - SQLAlchemy raises many kinds; all mean unreadable
        first = first_line(e)
        raise UsageError(f"--storage {url!r} cannot be opened ({first}); check the URL, "
                         f"the server and the credentials.") from None


def check_sqlite(url: str) -> None:
    """Refuse a SQLite URL that names no file the workers can share: in memory, a folder, a
    file that is no SQLite database, or one in a folder that does not exist or is read-only."""
    import sqlalchemy

    try:
        path = sqlalchemy.engine.make_url(url).database
    except Exception as e:  # noqa: BLE001 - ArgumentError, ValueError: not a URL
        raise UsageError(f"--storage {url!r} is not a database URL ({e}); use e.g. "
                         f"sqlite:///study.db.") from None
    if not path or path == ":memory:" or path.startswith("file::memory:"):
        raise UsageError(f"--storage {url!r} is a SQLite database in memory, which the Ray "
                         f"workers and a resumed run cannot see; give a file, e.g. "
                         f"sqlite:///study.db.")
    path = os.path.abspath(path)
    why = None
    if os.path.isdir(path):
        why = "it is a folder"
    elif os.path.isfile(path):
        with open(path, "rb") as f:
            head = f.read(16)
        if head and head != b"SQLite format 3\x00":
            why = "the file is not a SQLite database"
        elif not os.access(path, os.R_OK | os.W_OK):
            why = "the file is not writable"
    elif not os.path.isdir(os.path.dirname(path)) or \
            not os.access(os.path.dirname(path), os.W_OK | os.X_OK):
        why = f"folder {os.path.dirname(path)} does not exist or is not writable"
    if why:
        raise UsageError(f"--storage {url!r} cannot be opened ({why}); give a SQLite file in "
                         f"a writable folder, e.g. sqlite:///study.db.")


def dry_run(a: argparse.Namespace, space: Any, budgets: list) -> int:
    from prunetune.evaluators import measure_latency, model_cost
    from prunetune.pipeline import SetupError, base_costs, load_latency_table
    from prunetune.search import BudgetError, check_feasible, feasible_round_to, format_metric

    base = space.build_model()
    cost = model_cost(base, a.input_size)
    lat = measure_latency(base, a.input_size, device=a.latency_device, threads=a.latency_threads,
                          warmup=3, repeats=10, runtime=a.latency_runtime)
    full, small = base_costs(space, a.input_size)
    full["latency"], small["latency"] = lat.median_ms, 0.0
    if any(b.metric == "latency" for b in budgets):
        try:
            table = load_latency_table(space, a.input_size, path=a.latency_table,
                                       device=a.latency_device, threads=a.latency_threads,
                                       runtime=a.latency_runtime, log=log)
        except SetupError as e:
            raise UsageError(str(e)) from None
        full, small = base_costs(space, a.input_size, table)
        log(f"latency (predicted): {small['latency']:.2f} ms (all at {space.low}) .. "
            f"{full['latency']:.2f} ms (dense)")
    log(f"model: {a.model} width {a.width} at {a.input_size}x{a.input_size}")
    log(f"base: {cost}")
    log(f"base latency: {lat}")
    log(f"space: {len(space.groups)} groups, keep-ratios {space.low}..{space.high} step "
        f"{space.step}, channels rounded to {space.round_to}")
    log(f"space range: {format_metric('flops', small['flops'])} (all at {space.low}) .. "
        f"{format_metric('flops', full['flops'])} (dense)")
    for b in budgets:
        lim = b.limit(full)
        log(f"budget {b}: {format_metric(b.metric, lim)} = {lim / full[b.metric]:.1%} of the base")
    try:
        check_feasible(budgets, full, small)
        feasible_round_to(space, tuple(a.round_to_choices or ()),
                          {b.metric: b.limit(full) for b in budgets if b.metric != "latency"},
                          a.input_size)
    except BudgetError as e:
        raise UsageError(str(e)) from None
    log("dry run: nothing trained")
    return 0


def make_job(a: argparse.Namespace, budgets: list, out: str, cfg: dict[str, Any]) -> Any:
    """The checked options as the library's :class:`prunetune.pipeline.SearchJob` (without
    ``--storage``, its study in ``out/study.db``: :attr:`SearchJob.storage_url`)."""
    from prunetune.pipeline import SearchJob

    return SearchJob(
        budgets=budgets, out=out, storage=a.storage, **stage_settings(a),
        model=a.model, space={"width_mult": a.width, "low": a.low, "high": a.high,
                              "step": a.step, "round_to": a.round_to},
        data=a.data, image_size=a.image_size, per_class=a.per_class, val_fraction=a.val_fraction,
        weights=a.weights, checkpoint=a.checkpoint, base_epochs=a.base_epochs,
        input_size=a.input_size, latency=a.latency, latency_table=a.latency_table,
        latency_threads=a.latency_threads, latency_runtime=a.latency_runtime, device=a.device,
        latency_device=a.latency_device,
        precision=a.precision, address=ray_address(a), cpus=a.cpus, final_top=a.final_top,
        final_baseline=a.final_baseline, export=a.export == "onnx", final_on=a.final_on,
        dashboard_port=a.dashboard_port if a.dashboard else None,
        record={"study": cfg, "run": {k: getattr(a, k) for k in sorted(KNOWN_RESUME_FREE)
                                      if hasattr(a, k)}})

if __name__ == "__main__":
    console()
