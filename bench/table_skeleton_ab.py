"""A/B of the latency table's two ways to make its networks (2026-12-03): each exported by the
TorchScript exporter, or made from one export of the dense network (``OnnxSkeleton``).

    python bench/table_skeleton_ab.py skeleton   # then: export, skeleton, export

Prints one JSON line: build seconds, calibration and the predicted milliseconds of seven
policies (uniform 0.3 / 0.5 / 0.75 / 1.0 and three random ones) of MobileNetV2-1.0 at 224x224
in onnxruntime, one thread. Run the two ways in alternation on quiet cores."""

from __future__ import annotations

import json
import random
import sys
import time

import prunetune.evaluators._cost as cost
from prunetune.evaluators import build_latency_table
from prunetune.spaces import get_space


def main(mode: str) -> None:
    if mode == "export":  # no skeleton: every network exported
        cost.OnnxSkeleton.of = classmethod(lambda cls, *a, **k: None)  # type: ignore[assignment]
    space = get_space("mobilenet_v2", width_mult=1.0, num_classes=10)
    t0 = time.perf_counter()
    table = build_latency_table(space, 224, runtime="onnxruntime", threads=1, log=lambda s: None)
    seconds = time.perf_counter() - t0
    rng = random.Random(1)
    policies = [space.uniform(r) for r in (0.3, 0.5, 0.75, 1.0)] + [
        {n: rng.choice(space.ratio_choices()) for n in space.group_names} for _ in range(3)]
    print(json.dumps({"mode": mode, "build_s": round(seconds, 1), "scale": round(table.scale, 3),
                      "offset_ms": round(table.offset_ms, 3),
                      "predicted_ms": [round(table.predict(space, p), 2) for p in policies]}))


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in ("skeleton", "export"):
        sys.exit("usage: python bench/table_skeleton_ab.py skeleton|export")
    main(sys.argv[1])
