"""The chosen candidate: full fine-tune (distilled from the dense base), checks, export."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn as nn

from prunetune.evaluators import (FinetuneConfig, ImageData, adaptive_bn, atomic_write_text,
                                  configure_backends, export_onnx, finetune, importance_gradients,
                                  measure_latency, model_cost, prune_to_channels, save_pruned)
from prunetune.spaces import SearchSpace

from ._budget import format_metric
from ._refine import refine_order
from ._results import at_budget


def export(model: nn.Module, path_prefix: str, input_size: int,
           log: Callable[[str], None] = print) -> str:
    """ONNX (checked in onnxruntime) when ``onnx`` is installed, else TorchScript; exported
    from a CPU copy whatever device ``model`` is on."""
    if importlib.util.find_spec("onnx") is None:
        model = copy.deepcopy(model).cpu().eval().to(memory_format=torch.contiguous_format)
        path = f"{path_prefix}.torchscript.pt"
        torch.jit.trace(model, torch.randn(1, 3, input_size, input_size)).save(path)
        log(f"  export: {path} (TorchScript; pip install onnx onnxruntime for ONNX)")
        return path
    path = f"{path_prefix}.onnx"
    model, x = export_onnx(model, input_size, path, dynamic_batch=True)
    if importlib.util.find_spec("onnxruntime") is None:
        log(f"  export: {path} (onnxruntime not installed; not checked)")
        return path
    import numpy as np
    import onnxruntime as ort

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x.numpy()})[0]
    with torch.inference_mode():
        want = model(x).numpy()
    log(f"  export: {path} (onnxruntime max |diff| {float(np.abs(got - want).max()):.2e})")
    return path


def finalize(record: Mapping[str, Any], space: SearchSpace, base: nn.Module, data: ImageData,
             config: FinetuneConfig, out_dir: str, *, importance: str, bn_batches: int,
             deploy_size: int, latency_threads: int, do_export: bool,
             latency_device: str = "cpu", latency_runtime: str = "torch",
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """Prune ``base`` to the record's channels, fine-tune, test, measure, save and export.

    Pruning, adaptive BN and the fine-tune run on the device ``base`` is on (the teacher is
    ``base`` itself); latency is measured on ``latency_device`` in ``latency_runtime``."""
    channels = record["channels"]
    model = prune_to_channels(base, space, channels, importance, input_size=data.image_size,
                              grads=importance_gradients(importance, base, data, config.seed))
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
                          device=latency_device, threads=latency_threads, warmup=3, repeats=20,
                          runtime=latency_runtime)
    save_pruned(os.path.join(out_dir, "model"), space, channels, model)
    exported = export(model, os.path.join(out_dir, "model"), deploy_size, log) if do_export else None
    summary = {"trial": record["trial"], "policy": record["policy"], "channels": channels,
               **cost.as_dict(), "latency": lat.as_dict(), **metrics,
               "search_val_acc": record["accuracy"], "exported": exported}
    atomic_write_text(os.path.join(out_dir, "summary.json"), json.dumps(summary, indent=1))
    return summary


def final_candidates(records: Sequence[Mapping[str, Any]], limits: Mapping[str, float],
                     refined: Mapping[str, Any] | None, top: int,
                     with_uniform: bool) -> list[dict[str, Any]]:
    """What gets the full fine-tune: the ``top`` candidates within budget in the refinement's
    order (the pick first), then the uniform-width baseline unless it is among them or
    ``with_uniform`` is off."""
    chosen = refine_order(at_budget(records, limits, near=0.0), refined)[:top]
    uniform = next((r for r in records if r["baseline"] == "uniform"), None)
    if with_uniform and uniform is not None and all(r["trial"] != uniform["trial"]
                                                    for r in chosen):
        chosen.append(dict(uniform))
    return chosen


def run_finals(chosen: Sequence[Mapping[str, Any]], space: SearchSpace, base: nn.Module,
               data: ImageData, config: FinetuneConfig, run_dir: str, *, importance: str,
               bn_batches: int, deploy_size: int, latency_threads: int, do_export: bool,
               device: str = "cpu", latency_device: str | None = None,
               latency_runtime: str = "torch",
               log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """:func:`finalize` each chosen record into ``run_dir/final/<tag>`` (``uniform`` or
    ``trialN``) on ``device``; returns one summary row per final. ``base`` is not moved (a
    copy goes to the device)."""
    if torch.device(device) != next(base.parameters()).device:
        configure_backends(device)
        base = copy.deepcopy(base).to(device)
    finals = []
    for r in chosen:
        tag = "uniform" if r["baseline"] == "uniform" else f"trial{r['trial']}"
        log(f"final: fine-tuning {tag} ({r['flops'] / 1e6:.1f}M FLOPs, search val acc "
            f"{r['accuracy']:.2%}) for {config.epochs} epochs"
            f"{' with distillation' if config.distill else ''}")
        s = finalize(r, space, base, data, config, os.path.join(run_dir, "final", tag),
                     importance=importance, bn_batches=bn_batches, deploy_size=deploy_size,
                     latency_threads=latency_threads, do_export=do_export,
                     latency_device=latency_device or device,
                     latency_runtime=latency_runtime, log=log)
        finals.append({"tag": tag, **{k: s[k] for k in ("trial", "test_acc", "val_acc", "flops",
                                                         "macs", "params")},
                       "latency_ms": s["latency"]["median_ms"]})
        log(f"final {tag}: test acc {s['test_acc']:.2%}, {format_metric('flops', s['flops'])}, "
            f"{s['latency']['median_ms']:.2f} ms (measured, {latency_runtime})")
    return finals


def versus_uniform(finals: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The pick (first final) against uniform width after the same fine-tune, in words."""
    if not finals:
        return None
    pick = finals[0]
    if pick["tag"] == "uniform":
        return {"gain_pp": 0.0, "pick_is_uniform": True,
                "message": "nothing beat uniform width: the pick is the uniform-width baseline "
                           "itself (no searched allocation ranked above it)"}
    uni = next((f for f in finals if f["tag"] == "uniform"), None)
    if uni is None:
        return None
    gain = 100 * (pick["test_acc"] - uni["test_acc"])
    word = "beats" if gain > 0 else "does not beat"
    return {"gain_pp": gain, "pick_is_uniform": False,
            "message": f"versus uniform width (same fine-tune, one seed): {pick['tag']} "
                       f"{pick['test_acc']:.2%} vs uniform {uni['test_acc']:.2%} test "
                       f"({gain:+.2f} pp) at {pick['flops'] / 1e6:.1f}M vs "
                       f"{uni['flops'] / 1e6:.1f}M FLOPs: the search {word} uniform width"}
