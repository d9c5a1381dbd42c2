"""The chosen candidate: full fine-tune (distilled from the dense base), checks, export."""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Mapping

import torch
import torch.nn as nn

from prunetune.evaluators import (FinetuneConfig, ImageData, adaptive_bn, atomic_write_text,
                                  finetune, measure_latency, model_cost, prune_to_channels,
                                  save_pruned)
from prunetune.spaces import SearchSpace


def export(model: nn.Module, path_prefix: str, input_size: int,
           log: Callable[[str], None] = print) -> str:
    """ONNX (checked in onnxruntime) when ``onnx`` is installed, else TorchScript."""
    model = model.eval().to(memory_format=torch.contiguous_format)
    x = torch.randn(1, 3, input_size, input_size)
    try:
        import onnx  # noqa: F401

        path = f"{path_prefix}.onnx"
        torch.onnx.export(model, (x,), path, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                          dynamo=False)
        try:
            import numpy as np
            import onnxruntime as ort

            sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            got = sess.run(None, {"input": x.numpy()})[0]
            with torch.inference_mode():
                want = model(x).numpy()
            err = float(np.abs(got - want).max())
            log(f"  export: {path} (onnxruntime max |diff| {err:.2e})")
        except ImportError:
            log(f"  export: {path} (onnxruntime not installed; not checked)")
        return path
    except ImportError:
        path = f"{path_prefix}.torchscript.pt"
        torch.jit.trace(model, x).save(path)
        log(f"  export: {path} (TorchScript; pip install onnx onnxruntime for ONNX)")
        return path


def finalize(record: Mapping[str, Any], space: SearchSpace, base: nn.Module, data: ImageData,
             config: FinetuneConfig, out_dir: str, *, importance: str, bn_batches: int,
             deploy_size: int, latency_threads: int, do_export: bool,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """Prune ``base`` to the record's channels, fine-tune, test, measure, save and export."""
    channels = record["channels"]
    model = prune_to_channels(base, space, channels, importance, input_size=data.image_size)
    if not os.path.isfile(os.path.join(out_dir, "checkpoint.pt")):
        adaptive_bn(model, data, bn_batches, config.batch_size,
                    torch.Generator().manual_seed(config.seed))
    metrics = finetune(model, data, config, out_dir, teacher=base if config.distill else None,
                       log=log)
    cost = model_cost(model, deploy_size)
    if cost.flops != record["flops"]:
        raise RuntimeError(f"final model costs {cost.flops} FLOPs but the trial recorded "
                           f"{record['flops']}; please report this bug.")
    lat = measure_latency(model.to(memory_format=torch.contiguous_format), deploy_size,
                          threads=latency_threads, warmup=3, repeats=20)
    save_pruned(os.path.join(out_dir, "model"), space, channels, model)
    exported = export(model, os.path.join(out_dir, "model"), deploy_size, log) if do_export else None
    summary = {"trial": record["trial"], "policy": record["policy"], "channels": channels,
               **cost.as_dict(), "latency": lat.as_dict(), **metrics,
               "search_val_acc": record["accuracy"], "exported": exported}
    atomic_write_text(os.path.join(out_dir, "summary.json"), json.dumps(summary, indent=1))
    return summary
