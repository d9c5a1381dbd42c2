"""Nothing lost, nothing mixed up (issue #24): a resumed stage continues only from a result of
the same inputs, a study holds one run's trials, and a run folder in use is refused before
anything is trained. Unit-level: tiny networks, the synthetic data, no Ray."""

from __future__ import annotations

import json
import os

import optuna
import pytest
import torch

from prunetune.evaluators import FinetuneConfig, finetune, load_data, prune_to_channels
from prunetune.spaces import get_space


@pytest.fixture(scope="module")
def small(cifar_dir):
    return load_data(cifar_dir, per_class=12, test_per_class=2, seed=0)


@pytest.fixture(scope="module")
def tiny():
    return get_space("mobilenet_v2", width_mult=0.25, num_classes=10)


@pytest.fixture(scope="module")
def base(tiny):
    torch.manual_seed(0)
    return tiny.build_model().eval()


class _Crash(Exception):
    pass


def _crash_after_epoch_1(msg: str) -> None:
    if "fine-tune epoch 1/" in msg:
        raise _Crash


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- the final fine-tune --------------------------------------------------------------------------
def test_resumed_fine_tune_equals_the_uninterrupted_one_to_the_bit(tiny, base, small, tmp_path):
    """The classifier's dropout draws from torch's global RNG: a resume must restore its state
    (a re-seeded one drops other units than the uninterrupted run did)."""
    cfg = FinetuneConfig(epochs=2, batch_size=32, distill=False)
    ch = tiny.channels(tiny.uniform(0.5))
    assert any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in base.modules())
    whole = prune_to_channels(base, tiny, ch)
    finetune(whole, small, cfg, str(tmp_path / "a"), log=lambda s: None)
    with pytest.raises(_Crash):
        finetune(prune_to_channels(base, tiny, ch), small, cfg, str(tmp_path / "b"),
                 log=_crash_after_epoch_1)
    lines: list[str] = []
    resumed = prune_to_channels(base, tiny, ch)
    finetune(resumed, small, cfg, str(tmp_path / "b"), log=lines.append)
    assert any("resuming after epoch 1/2" in s for s in lines), lines
    assert _same(_state(resumed), _state(whole))


def test_a_fine_tune_resumed_with_other_settings_starts_over(tiny, base, small, tmp_path):
    """--final-epochs, --final-lr and the distillation options may change between runs of one
    folder: a checkpoint of another recipe is not continued, and the run says what changed."""
    ch = tiny.channels(tiny.uniform(0.5))
    old = FinetuneConfig(epochs=2, batch_size=32, lr=0.005, distill=False)
    new = FinetuneConfig(epochs=2, batch_size=32, lr=0.02, distill=False)
    with pytest.raises(_Crash):
        finetune(prune_to_channels(base, tiny, ch), small, old, str(tmp_path / "run"),
                 log=_crash_after_epoch_1)
    lines: list[str] = []
    again = prune_to_channels(base, tiny, ch)
    finetune(again, small, new, str(tmp_path / "run"), log=lines.append)
    said = [s for s in lines if "starting this fine-tune over" in s]
    assert len(said) == 1 and "lr: 0.005 there, 0.02 now" in said[0], lines
    assert not any("resuming" in s for s in lines)
    epochs = [json.loads(x)["epoch"]
              for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]
    fresh = prune_to_channels(base, tiny, ch)
    finetune(fresh, small, new, str(tmp_path / "fresh"), log=lambda s: None)
    assert _same(_state(again), _state(fresh))


def test_a_final_resumed_with_another_candidate_or_base_starts_over(tiny, base, small, tmp_path):
    """``final/trialN`` is resumed only by the same network from the same base and data: a
    measured pick shrunk to other channels, or another base, starts the fine-tune over."""
    from prunetune.search._final import train_final

    cfg = FinetuneConfig(epochs=1, batch_size=32, distill=True)
    folder = str(tmp_path / "final" / "trial3")
    wide = {"trial": 3, "channels": tiny.channels(tiny.uniform(0.5))}
    narrow = {"trial": 3, "channels": tiny.channels(tiny.uniform(0.4))}
    assert wide["channels"] != narrow["channels"]

    def run(record: dict, base_model: torch.nn.Module) -> tuple[torch.nn.Module, list[str]]:
        lines: list[str] = []
        model, _ = train_final(record, tiny, base_model, small, cfg, folder, importance="l1",
                               bn_batches=2, log=lines.append)
        return model, lines

    first, _ = run(wide, base)
    same, lines = run(wide, base)  # same inputs: the finished checkpoint is taken as it is
    assert any("resuming after epoch 1/1" in s for s in lines), lines
    assert _same(_state(same), _state(first))

    other, lines = run(narrow, base)
    said = [s for s in lines if "starting this fine-tune over" in s]
    assert len(said) == 1 and "channels" in said[0], lines
    fresh, _ = train_final(narrow, tiny, base, small, cfg, str(tmp_path / "fresh"),
                           importance="l1", bn_batches=2, log=lambda s: None)
    assert _same(_state(other), _state(fresh))

    torch.manual_seed(1)
    base2 = tiny.build_model().eval()
    _, lines = run(narrow, base2)
    said = [s for s in lines if "starting this fine-tune over" in s]
    assert len(said) == 1 and "base" in said[0], lines


# -- the run folder and the study -----------------------------------------------------------------
def _job(out, data: str, **kw):
    from prunetune.pipeline import SearchJob
    from prunetune.search import StudySettings, parse_budget

    return SearchJob(budgets=[parse_budget("50%-FLOPs")], out=str(out), data=data, per_class=12,
                     test_per_class=2, base_epochs=1, space={"width_mult": 0.25},
                     input_size=32, latency="off", device="cpu", cpus=2,
                     study=StudySettings(trials=1, objectives=("accuracy", "flops")), **kw)


def _tripwire(lines: list[str]):
    def log(line: str) -> None:
        lines.append(line)
        # "base: no --checkpoint/--weights given; training ...", "Ray ...": it went on
        assert not line.startswith("base") and "Ray" not in line, f"it went on: {line}"
    return log


def test_a_second_run_into_a_folder_in_use_is_refused_before_it_trains(tmp_path, cifar_dir):
    import fcntl
    import sys

    from prunetune.pipeline import SetupError, run_search

    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text('{"run_id": "first"}')
    with open(out / ".lock", "a") as first:  # the first run, still running
        fcntl.flock(first, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lines: list[str] = []
        with pytest.raises(SetupError, match="is in use by another prunetune process"):
            run_search(_job(out, cifar_dir), log=_tripwire(lines))
    assert lines == []  # refused first: no data read, no base trained, no Ray started
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()
    assert sorted(p.name for p in out.iterdir()) == [".lock", "config.json"]
    assert json.loads((out / "config.json").read_text()) == {"run_id": "first"}


def test_a_run_refused_for_its_input_leaves_no_run_folder(tmp_path):
    from prunetune.evaluators import DataError
    from prunetune.pipeline import run_search

    out = tmp_path / "runs" / "new"
    with pytest.raises(DataError):
        run_search(_job(out, str(tmp_path / "no-such-data")), log=lambda s: None)
    assert list(tmp_path.iterdir()) == []


def test_a_study_belongs_to_one_run_folder(tmp_path):
    """Two run folders given one --storage (here one SQLite file) and the same --study-name:
    the second is refused with the fix, the first resumes, and another name is a study of its
    own; a study made before runs were recorded is adopted by the first run that opens it."""
    import optuna
    from optuna.distributions import FloatDistribution

    from prunetune.search import (StudyInUse, StudySettings, check_study_owner, open_storage,
                                  open_study)

    db = tmp_path / "shared.db"
    url = f"sqlite:///{db}"
    check_study_owner(url, "prunetune", {"id": "a", "out": "/runs/a"})
    assert not db.exists()  # a check writes nothing
    settings = StudySettings(trials=1, objectives=("accuracy", "flops"))
    a, b = {"id": "a", "out": "/runs/a"}, {"id": "b", "out": "/runs/b"}
    trial = optuna.trial.create_trial(values=[0.5, 1e6], params={"x": 0.5},
                                      distributions={"x": FloatDistribution(0, 1)})
    open_study(open_storage(url), settings, a).add_trial(trial)
    for attach in (lambda: check_study_owner(url, "prunetune", b),
                   lambda: open_study(open_storage(url), settings, b)):
        with pytest.raises(StudyInUse, match=r"belongs to another run \(--out '/runs/a'\); give "
                                             r"this run another --study-name, or resume that run "
                                             r"with --out '/runs/a'"):
            attach()
    again = open_study(open_storage(url), settings, a)
    assert len(again.trials) == 1 and again.user_attrs["run"] == a
    other = open_study(open_storage(url), StudySettings(trials=1, study_name="b"), b)
    assert other.trials == [] and other.user_attrs["run"] == b

    old = optuna.create_study(storage=url, study_name="old", directions=["maximize", "minimize"])
    old.add_trial(trial)
    open_study(open_storage(url), StudySettings(trials=1, study_name="old"), a)
    with pytest.raises(StudyInUse, match="'/runs/a'"):
        check_study_owner(url, "old", b)


def test_a_new_run_folder_cannot_attach_to_another_runs_study(tmp_path, cifar_dir):
    """Through the pipeline: refused in one line before any data is read or base trained, and
    the new folder is left empty, the other run's study untouched."""
    import optuna

    from prunetune.pipeline import SetupError, run_search

    url = f"sqlite:///{tmp_path / 'shared.db'}"
    first = tmp_path / "a"
    first.mkdir()
    (first / "config.json").write_text(json.dumps({"run_id": "run-a"}))
    study = optuna.create_study(storage=url, study_name="prunetune",
                                directions=["maximize", "minimize"])
    study.set_user_attr("run", {"id": "run-a", "out": str(first)})
    lines: list[str] = []
    with pytest.raises(SetupError, match=f"--out '{first}'") as e:
        run_search(_job(tmp_path / "b", cifar_dir, storage=url), log=_tripwire(lines))
    assert len(str(e.value).splitlines()) == 1 and "--study-name" in str(e.value)
    assert lines == [] and not (tmp_path / "b").exists()
    assert optuna.load_study(study_name="prunetune", storage=url).user_attrs["run"]["id"] == "run-a"
    # The first run's own folder is let in (it would go on to read its data and train).
    with pytest.raises(AssertionError, match="it went on"):
        run_search(_job(first, cifar_dir, storage=url), log=_tripwire([]))


# -- the measured pick under a latency budget -----------------------------------------------------
def test_a_resumed_run_takes_the_measured_pick_it_made_unless_its_inputs_changed(tiny, base,
                                                                                tmp_path):
    """Timing again on resume could pick (or shrink) another candidate than the one whose final
    fine-tune is under way; the pick is a recorded stage like the others."""
    from dataclasses import replace

    from prunetune.evaluators import LatencyTable, table_key
    from prunetune.pipeline import SearchJob, measured_pick
    from prunetune.search import parse_budget

    records = []
    for trial, keep in enumerate((0.5, 0.7, 0.6)):
        pol = tiny.uniform(keep)
        records.append({"trial": trial, "baseline": "uniform" if trial == 0 else "",
                        "accuracy": 0.5 + keep / 10, "flops": 1.0, "macs": 0.5, "params": 1.0,
                        "latency_ms": 8.0, "policy": pol, "channels": tiny.channels(pol)})
    limits = {"latency": 10.0}
    job = SearchJob(budgets=[parse_budget("10ms-latency")], out=str(tmp_path), input_size=32,
                    latency_device="cpu", latency_runtime="torch", final_top=1)
    table = LatencyTable(table_key(tiny, 32, "cpu", 1), {})
    timed: list[int] = []

    def to_dense(model: torch.nn.Module) -> float:  # a stand-in for the timing: half the dense
        timed.append(sum(p.numel() for p in model.parameters()))
        return 0.5

    def pick(job: SearchJob) -> tuple[list, list[str]]:
        lines: list[str] = []
        return measured_pick(records, limits, None, tiny, base, to_dense, job, 20.0, table,
                             log=lines.append), lines

    first, _ = pick(job)
    assert len(timed) == 2  # the best candidate and uniform width
    assert [r["latency_ms"] for r in first] == [10.0, 10.0, 8.0]
    again, lines = pick(job)
    assert len(timed) == 2 and again == first  # nothing timed again
    assert any("as timed by an earlier run" in s for s in lines), lines
    wider, lines = pick(replace(job, final_top=2))
    assert len(timed) == 5 and wider[2]["latency_ms"] == 10.0  # the second best is timed too
    assert any("final_top changed since latency_pick.json" in s for s in lines), lines


def test_a_resumed_run_keeps_the_latency_table_its_study_was_searched_with(tiny, tmp_path):
    """Anchored again on each run, the table's milliseconds (and a relative latency budget in
    them) moved with the machine's speed, while the study's trials kept the first run's."""
    from prunetune.evaluators import LatencyTable, table_key
    from prunetune.pipeline import TABLE_FILE, study_table

    key = table_key(tiny, 32, "cpu", 1)
    first = LatencyTable(key, {}, offset_ms=0.5, scale=1.0)
    lines: list[str] = []
    assert study_table(first, str(tmp_path), lines.append) is first and lines == []
    (tmp_path / TABLE_FILE).write_text(first.to_json())  # what the first run leaves
    now = LatencyTable(key, {}, offset_ms=0.65, scale=1.3)  # anchored on a slower minute
    kept = study_table(now, str(tmp_path), lines.append)
    assert (kept.scale, kept.offset_ms) == (1.0, 0.5) and "as this run first anchored" in lines[0]
    other = LatencyTable({**key, "torch": "9.9"}, {}, offset_ms=0.5, scale=1.0)
    assert study_table(other, str(tmp_path), lines.append).key == key
    assert "a table of other torch" in lines[1], lines


def test_a_new_sqlite_study_opened_by_another_process_at_the_same_instant_is_opened_as_made(
        tmp_path):
    """The run's storage and a reader (optuna-dashboard started with the run, or a test looking
    at the study) creating one new schema at once: one of the two used to fail on a table that
    now existed (14 of 15 such pairs; a CI run lost its command to it). The run's side opens
    the schema the other made."""
    import threading

    from prunetune.search import open_storage

    failed = []
    for i in range(4):
        url = f"sqlite:///{tmp_path}/s{i}.db"
        barrier = threading.Barrier(2)

        def ours() -> None:
            barrier.wait()
            try:
                open_storage(url)
            except Exception as e:  # noqa: BLE001 - what the run would have died of
                failed.append(repr(e)[:200])

        def reader() -> None:
            barrier.wait()
            try:
                optuna.storages.RDBStorage(url)
            except Exception:  # noqa: BLE001 - the reader's own business
                pass

        threads = [threading.Thread(target=ours), threading.Thread(target=reader)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        study = optuna.create_study(storage=open_storage(url), study_name="s")
        assert study.trials == []
    assert not failed, failed
