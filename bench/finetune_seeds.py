"""Seed-to-seed spread of the final fine-tune: uniform width at a FLOPs budget, fine-tuned under
several seeds with a given peak LR and warm-up (steps).

    python bench/finetune_seeds.py BUDGET WARMUPS SEEDS [LR]
    python bench/finetune_seeds.py 0.5 0,40 4 0.02    # the two LR-0.02 rows of bench/README.md

4,500 CIFAR-10 training images (500 a class, 10% of them held out), 3 distilled epochs, 3,000
test images; the dense base and data from ../shared (see bench/run.py).
"""

from __future__ import annotations

import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from run import BASE_CKPT, CIFAR  # noqa: E402  (first: it puts the checkout on sys.path)
from quality import cifar, final_acc  # noqa: E402

from prunetune.search import uniform_at_budget  # noqa: E402


def main(budget: float, warmups: list[int], seeds: int, lr: float) -> None:
    torch.set_num_threads(2)
    data, space, base, limits = cifar(500, 0.1, budget, CIFAR, BASE_CKPT, test_per_class=300)
    ch = space.channels(uniform_at_budget(space, limits, 32))
    per_epoch = max(1, len(data.train) // 64)  # finetune's steps per epoch at batch 64
    for w in warmups:
        accs = []
        for s in range(seeds):
            t0 = time.time()
            # A warm-up of exactly w steps (finetune rounds warmup_epochs x steps per epoch).
            acc = final_acc(ch, data, space, base, 3, s, lr=lr, warmup_epochs=w / per_epoch)
            accs.append(round(100 * acc, 2))
            print(f"budget {budget} warmup {w} lr {lr} seed {s}: {accs[-1]} "
                  f"({time.time() - t0:.0f} s)", flush=True)
        print(f"== warmup {w} lr {lr}: {accs}", flush=True)


if __name__ == "__main__":
    main(float(sys.argv[1]), [int(w) for w in sys.argv[2].split(",")], int(sys.argv[3]),
         float(sys.argv[4]) if len(sys.argv) > 4 else 0.005)
