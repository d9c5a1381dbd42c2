"""Train the base that prunetune ships for its embedded default and write it, in half
precision, where ``get_base_model`` finds it (``evaluators/assets``).

    python bench/ship_base.py

The main job's own base: MobileNetV2-1.0 trained 30 epochs on the embedded digits at 32×32,
seed 0, on the CPU in fp32 (``get_base_model`` with the command line's defaults), named by
its cache key, so a run with any other base setting trains its own. ~80 s on 2 cores.
"""

from __future__ import annotations

import os
import tempfile

import torch

from prunetune.evaluators import get_base_model, load_data
from prunetune.evaluators._base_model import SHIPPED_DIR, _cache_path, shipped_path
from prunetune.spaces import get_space


def main() -> None:
    space = get_space("mobilenet_v2", num_classes=10)
    data = load_data(None, image_size=32, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["PRUNETUNE_CACHE"] = tmp  # trained here, not found shipped or cached
        out = shipped_path(_cache_path(space, data, 30, 0, "cpu", "fp32"))
        if os.path.isfile(out):
            os.remove(out)
        model, _ = get_base_model(space, data, epochs=30, seed=0, device="cpu", precision="fp32")
    os.makedirs(SHIPPED_DIR, exist_ok=True)
    torch.save({k: v.half() if v.is_floating_point() else v
                for k, v in model.state_dict().items()}, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
