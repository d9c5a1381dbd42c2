"""The library entry point (prunetune.pipeline) and the command line agree: a job built from
the command line's defaults is the job the library builds by default. (The whole run through
``run_search`` is exercised end to end by tests/test_launch.py.)"""

from __future__ import annotations

import os
from dataclasses import fields

from prunetune import cli
from prunetune.pipeline import SearchJob
from prunetune.search import parse_budget
from prunetune.spaces import get_space


def test_library_defaults_are_the_command_lines(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    a = cli.parse_args(["--budget", "50%-FLOPs", "--device", "cpu"])
    cli.validate(a)
    budgets = [parse_budget("50%-FLOPs")]
    job = cli.make_job(a, budgets, "out", {"k": 1}, "sqlite:///x.db")
    lib = SearchJob(budgets=budgets, out="out", storage="sqlite:///x.db", device="cpu",
                    latency_device="cpu")
    differ = [f.name for f in fields(SearchJob)
              if f.name not in ("space", "record") and getattr(job, f.name) != getattr(lib, f.name)]
    assert differ == [], {k: (getattr(job, k), getattr(lib, k)) for k in differ}
    assert get_space(job.model, **job.space).config() == get_space(lib.model, **lib.space).config()
    assert job.record["study"] == {"k": 1} and job.storage_url == "sqlite:///x.db"
    assert lib.threads == job.threads == max(1, (os.cpu_count() or 1) // 2)

