from __future__ import annotations

import os
import random
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("PRUNETUNE_SHARED", os.path.join(os.path.dirname(ROOT), "shared"))
CIFAR = os.path.join(SHARED, "data", "cifar10")
BASE_CKPT = os.path.join(SHARED, "models", "mobilenet_v2_cifar10.pt")

# Every Ray instance a test starts binds to loopback only (see README, "Network").
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
torch.set_num_threads(2)


def random_policy(space, rng: random.Random) -> dict[str, float]:
    choices = space.ratio_choices()
    return {n: rng.choice(choices) for n in space.group_names}


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # Base models trained by tests are cached per session, never in the user's cache.
    monkeypatch.setenv("PRUNETUNE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


needs_shared = pytest.mark.skipif(not os.path.isdir(CIFAR),
                                  reason=f"shared data not found at {CIFAR}")
