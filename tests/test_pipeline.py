"""The library entry point (prunetune.pipeline) and the command line agree: a job built from
the command line's defaults is the job the library builds by default. (The whole run through
``run_search`` is exercised end to end by tests/test_launch.py.)"""

from __future__ import annotations

import os
from dataclasses import fields, replace

from prunetune import cli
from prunetune.evaluators import resolve_runtime
from prunetune.pipeline import SearchJob
from prunetune.search import parse_budget
from prunetune.spaces import get_space


def _job_and_library(*argv: str, **lib_kw) -> tuple[SearchJob, SearchJob, list[str]]:
    """The command line's job for ``argv`` and the library's default job (its ``auto``
    latency runtime resolved as the command line resolves it), and the fields that differ."""
    a = cli.parse_args(["--budget", "50%-FLOPs", "--device", "cpu", *argv])
    cli.validate(a)
    budgets = [parse_budget("50%-FLOPs")]
    job = cli.make_job(a, budgets, "out", {"k": 1})
    lib = SearchJob(budgets=budgets, out="out", device="cpu",
                    latency_device="cpu", **lib_kw)
    lib = replace(lib, latency_runtime=resolve_runtime(lib.latency_runtime, "cpu"))
    differ = [f.name for f in fields(SearchJob)
              if f.name not in ("space", "record") and getattr(job, f.name) != getattr(lib, f.name)]
    return job, lib, differ


def test_library_defaults_are_the_command_lines(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    job, lib, differ = _job_and_library("--data", "images", data="images")
    assert differ == [], {k: (getattr(job, k), getattr(lib, k)) for k in differ}
    assert job.latency_runtime == "onnxruntime"  # the test extra installs it
    # Without --data (the embedded digits) the command line's first run is shorter; only the
    # embedded defaults differ, each as EMBEDDED_DEFAULTS says.
    short, lib, differ = _job_and_library()
    assert sorted(differ) == ["finetune", "refine", "study"], differ
    e = cli.EMBEDDED_DEFAULTS
    assert (short.study.trials, short.finetune.epochs) == (e["trials"], e["final_epochs"])
    assert ",".join(map(str, short.refine.steps)) == e["refine_steps"]
    assert replace(short.study, trials=lib.study.trials) == lib.study
    assert replace(short.finetune, epochs=lib.finetune.epochs) == lib.finetune
    assert replace(short.refine, steps=lib.refine.steps) == lib.refine
    assert get_space(job.model, **job.space).config() == get_space(lib.model, **lib.space).config()
    assert job.record["study"] == {"k": 1} and job.storage is None  # no --storage given:
    assert job.storage_url == f"sqlite:///{os.path.abspath('out/study.db')}"  # the run's own
    assert lib.threads == job.threads == max(1, (os.cpu_count() or 1) // 2)

