"""The chosen candidate: full fine-tune (distilled from the dense base), checks, export."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import torch
import torch.nn as nn

from prunetune.evaluators import (FinetuneConfig, ImageData, adaptive_bn, atomic_write_text,
                                  configure_backends, export_onnx, finetune, importance_gradients,
                                  measure_latency, model_cost, prune_to_channels, save_pruned,
                                  weights_fingerprint, worker_base)
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


def train_final(record: Mapping[str, Any], space: SearchSpace, base: nn.Module,
                data: ImageData, config: FinetuneConfig, out_dir: str, *, importance: str,
                bn_batches: int, log: Callable[[str], None] = print
                ) -> tuple[nn.Module, dict[str, Any]]:
    """Prune ``base`` to the record's channels, re-estimate BN and fine-tune (distilled from
    ``base``) on the device ``base`` is on, checkpointing in ``out_dir``. A checkpoint there is
    resumed only if it was made from the same channels, base, data and recipe (each is recorded
    in it); otherwise the fine-tune starts over and says what changed. Returns the model and
    :func:`evaluators.finetune`'s metrics."""
    model = prune_to_channels(base, space, record["channels"], importance,
                              input_size=data.image_size,
                              grads=importance_gradients(importance, base, data, config.seed))
    inputs = {"space": {"name": space.name, **space.config()},
              "channels": dict(record["channels"]), "base": weights_fingerprint(base),
              "importance": importance, "bn_batches": bn_batches}
    metrics = finetune(model, data, config, out_dir, teacher=base if config.distill else None,
                       log=log, inputs=inputs,
                       prepare=lambda m: adaptive_bn(m, data, bn_batches, config.batch_size,
                                                     torch.Generator().manual_seed(config.seed)))
    return model, metrics


def finish_final(record: Mapping[str, Any], model: nn.Module, metrics: Mapping[str, Any],
                 space: SearchSpace, out_dir: str, *, deploy_size: int, latency_threads: int,
                 do_export: bool, latency_device: str = "cpu", latency_runtime: str = "torch",
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """A fine-tuned final model's cost (checked against the trial's), latency (on
    ``latency_device`` in ``latency_runtime``), weights, export and ``summary.json``."""
    cost = model_cost(model, deploy_size)
    if cost.flops != record["flops"]:
        raise RuntimeError(f"final model costs {cost.flops} FLOPs but the trial recorded "
                           f"{record['flops']}; please report this bug.")
    lat = measure_latency(model.to(memory_format=torch.contiguous_format), deploy_size,
                          device=latency_device, threads=latency_threads, warmup=3, repeats=20,
                          runtime=latency_runtime)
    save_pruned(os.path.join(out_dir, "model"), space, record["channels"], model)
    exported = export(model, os.path.join(out_dir, "model"), deploy_size, log) if do_export else None
    summary = {"trial": record["trial"], "policy": record["policy"],
               "channels": record["channels"], **cost.as_dict(), "latency": lat.as_dict(),
               **metrics, "search_val_acc": record["accuracy"], "exported": exported}
    atomic_write_text(os.path.join(out_dir, "summary.json"), json.dumps(summary, indent=1))
    return summary


def finalize(record: Mapping[str, Any], space: SearchSpace, base: nn.Module, data: ImageData,
             config: FinetuneConfig, out_dir: str, *, importance: str, bn_batches: int,
             deploy_size: int, latency_threads: int, do_export: bool,
             latency_device: str = "cpu", latency_runtime: str = "torch",
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """:func:`train_final` then :func:`finish_final`, in this process: pruning, adaptive BN and
    the fine-tune run on the device ``base`` is on (the teacher is ``base`` itself); latency is
    measured on ``latency_device`` in ``latency_runtime``."""
    model, metrics = train_final(record, space, base, data, config, out_dir,
                                 importance=importance, bn_batches=bn_batches, log=log)
    return finish_final(record, model, metrics, space, out_dir, deploy_size=deploy_size,
                        latency_threads=latency_threads, do_export=do_export,
                        latency_device=latency_device, latency_runtime=latency_runtime, log=log)


_RUN_ID = ".run-id"  # in run_dir/final: tells a Ray task whether it sees the driver's folder
_SENT_BACK = ("log.jsonl", "metrics.json")  # what a task without that folder returns


def final_task(record: Mapping[str, Any], tag: str, space_name: str, space_config: dict,
               base_state: Mapping[str, torch.Tensor], data: ImageData,
               config: FinetuneConfig, run_dir: str, run_id: str, *, importance: str,
               bn_batches: int, threads: int, log: Callable[[str], None] = print
               ) -> dict[str, Any]:
    """The body of one final fine-tune as a Ray task: on the GPU Ray gave it, else the CPU.

    It works in ``run_dir/final/<tag>`` when that folder is the driver's (a shared file
    system: ``final/.run-id`` there holds ``run_id``), so a stopped run resumes it and a
    retried task goes on from its last epoch; elsewhere in a temporary folder, whose
    ``log.jsonl`` and ``metrics.json`` come back in ``files``. Returns those, the CPU weights
    (``state``) and the metrics."""
    import shutil
    import tempfile

    device = "cuda" if torch.cuda.is_available() else "cpu"  # Ray sets CUDA_VISIBLE_DEVICES
    space, base = worker_base(space_name, space_config, base_state, device, threads)
    try:
        with open(os.path.join(run_dir, "final", _RUN_ID)) as f:
            shared = f.read().strip() == run_id
    except OSError:
        shared = False
    work = (os.path.join(run_dir, "final", tag) if shared
            else tempfile.mkdtemp(prefix=f"prunetune-final-{tag}-"))
    where = (f"{os.uname().nodename}, {device}"
             + (f" ({torch.cuda.get_device_name()})" if device == "cuda" else ""))
    log(f"  on {where}; " + ("checkpoints in the run folder" if shared else
                             f"checkpoints in {work} there (the run folder is not shared with "
                             f"the driver: a stopped run restarts this fine-tune)"))
    try:
        model, metrics = train_final(record, space, base, data, config, work,
                                     importance=importance, bn_batches=bn_batches, log=log)
        files = {} if shared else {n: Path(work, n).read_text() for n in _SENT_BACK}
    finally:
        if not shared:
            shutil.rmtree(work, ignore_errors=True)
    return {"state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "metrics": metrics, "files": files}


def _train_on_ray(chosen: Sequence[Mapping[str, Any]], tags: Sequence[str], space: SearchSpace,
                  base: nn.Module, data: ImageData, config: FinetuneConfig, run_dir: str,
                  resources: Mapping[str, float], *, importance: str, bn_batches: int,
                  log: Callable[[str], None]) -> Iterator[tuple[nn.Module, dict[str, Any]]]:
    """All finals as Ray tasks at once (several GPUs fine-tune several finals side by side);
    yields each fine-tuned model (rebuilt on the CPU) with its metrics, in order, and logs the
    tasks' progress lines as they come. Stopped early, it cancels the tasks."""
    import uuid

    import ray
    from ray.util.queue import Empty, Queue

    run_id = uuid.uuid4().hex
    atomic_write_text(os.path.join(run_dir, "final", _RUN_ID), run_id)
    lines = Queue(actor_options={"num_cpus": 0})

    def forward() -> None:
        while True:
            try:
                log(lines.get_nowait())
            except Empty:
                return

    # ray's remote() overloads type functions of up to 9 parameters; final_task has 13.
    task: Any = ray.remote(final_task).options(**resources)  # type: ignore[arg-type]
    base_ref, data_ref = ray.put(base.state_dict()), ray.put(data)
    refs = []
    for r, tag in zip(chosen, tags):
        def task_log(s: str, tag: str = tag) -> None:
            lines.put(f"  [{tag}] {s.strip()}")
        refs.append(task.remote(dict(r), tag, space.name, space.config(), base_ref, data_ref,
                                config, run_dir, run_id, importance=importance,
                                bn_batches=bn_batches, threads=int(resources["num_cpus"]),
                                log=task_log))
    done = 0
    try:
        for r, tag, ref in zip(chosen, tags, refs):
            while not ray.wait([ref], timeout=1.0)[0]:
                forward()
            out = ray.get(ref)
            forward()
            folder = os.path.join(run_dir, "final", tag)
            for name, text in out["files"].items():
                atomic_write_text(os.path.join(folder, name), text)
            model = prune_to_channels(base, space, r["channels"], importance=None,
                                      input_size=data.image_size)
            model.load_state_dict(out["state"])
            done += 1
            yield model, out["metrics"]
    finally:  # stopped early (an error, Ctrl-C): no fine-tune goes on without its driver
        for ref in refs[done:]:
            ray.cancel(ref, force=True)
        ray.kill(lines.actor)  # type: ignore[arg-type]  # Queue.actor is a handle at runtime


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
               latency_runtime: str = "torch", ray_resources: Mapping[str, float] | None = None,
               log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Fine-tune each chosen record into ``run_dir/final/<tag>`` (``uniform`` or ``trialN``)
    and finish it (:func:`finish_final`: cost check, latency, weights, export); returns one
    summary row per final. ``base`` is not moved (a copy goes to the device).

    The fine-tunes run in this process on ``device``, or, with ``ray_resources``
    (``num_cpus``, ``num_gpus``), as Ray tasks that get them (:func:`final_task`: on a GPU
    when ``num_gpus`` > 0), all submitted at once; latency, weights and export are always
    this process's."""
    tags = ["uniform" if r["baseline"] == "uniform" else f"trial{r['trial']}" for r in chosen]

    def announce(r: Mapping[str, Any], tag: str, where: str = "") -> None:
        log(f"final: fine-tuning {tag} ({r['flops'] / 1e6:.1f}M FLOPs, search val acc "
            f"{r['accuracy']:.2%}) for {config.epochs} epochs"
            f"{' with distillation' if config.distill else ''}{where}")

    def here(base: nn.Module) -> Iterator[tuple[nn.Module, dict[str, Any]]]:
        if torch.device(device) != next(base.parameters()).device:
            configure_backends(device)
            base = copy.deepcopy(base).to(device)
        for r, tag in zip(chosen, tags):
            announce(r, tag)
            yield train_final(r, space, base, data, config, os.path.join(run_dir, "final", tag),
                              importance=importance, bn_batches=bn_batches, log=log)

    if ray_resources:
        for r, tag in zip(chosen, tags):
            announce(r, tag, f" as a Ray task ({ray_resources.get('num_gpus', 0):g} GPU, "
                             f"{ray_resources.get('num_cpus', 1):g} CPU)")
        # All of them before any is timed: latency is measured here, with no fine-tune of ours
        # still running beside it.
        trained: Iterable[tuple[nn.Module, dict[str, Any]]] = list(_train_on_ray(
            chosen, tags, space, base, data, config, run_dir, ray_resources,
            importance=importance, bn_batches=bn_batches, log=log))
    else:
        trained = here(base)
    finals = []
    for r, tag, (model, metrics) in zip(chosen, tags, trained):
        s = finish_final(r, model, metrics, space, os.path.join(run_dir, "final", tag),
                         deploy_size=deploy_size, latency_threads=latency_threads,
                         do_export=do_export, latency_device=latency_device or device,
                         latency_runtime=latency_runtime, log=log)
        finals.append({"tag": tag, **{k: s[k] for k in ("trial", "test_acc", "val_acc", "flops",
                                                         "macs", "params", "test_correct")},
                       "latency_ms": s["latency"]["median_ms"]})
        log(f"final {tag}: test acc {s['test_acc']:.2%}, {format_metric('flops', s['flops'])}, "
            f"{s['latency']['median_ms']:.2f} ms (measured, {latency_runtime})")
    return finals


def mcnemar(pick: str, uniform: str) -> dict[str, Any]:
    """Exact McNemar test of two models on the same test images, from their per-image
    correctness strings (``"1"`` right): the images only one of them got right, and the
    two-sided binomial p-value of that split under "equally accurate"."""
    from scipy.stats import binomtest

    if len(pick) != len(uniform):
        raise ValueError(f"the two models were tested on {len(pick)} and {len(uniform)} "
                         f"images; McNemar's test needs the same images.")
    only_pick = sum(a == "1" and b == "0" for a, b in zip(pick, uniform))
    only_uniform = sum(a == "0" and b == "1" for a, b in zip(pick, uniform))
    n = only_pick + only_uniform
    p = float(binomtest(only_pick, n, 0.5).pvalue) if n else 1.0
    return {"test_images": len(pick), "only_pick": only_pick, "only_uniform": only_uniform,
            "p_value": p}


def versus_uniform(finals: Sequence[Mapping[str, Any]], alpha: float = 0.05
                   ) -> dict[str, Any] | None:
    """The pick (first final) against uniform width after the same fine-tune, in words, with
    the exact McNemar test on the same test images (one fine-tune seed: the test says whether
    the two *models* differ, not whether another seed would repeat it)."""
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
    test = mcnemar(pick["test_correct"], uni["test_correct"])
    p, net = test["p_value"], test["only_pick"] - test["only_uniform"]
    if p >= alpha:
        verdict = f"no significant difference (p >= {alpha:g})"
    else:
        verdict = (f"the search {'beats' if gain > 0 else 'loses to'} uniform width "
                   f"(p < {alpha:g})")
    return {"gain_pp": gain, "pick_is_uniform": False, **test, "significant": p < alpha,
            "message": f"versus uniform width (same fine-tune, one seed): {pick['tag']} "
                       f"{pick['test_acc']:.2%} vs uniform {uni['test_acc']:.2%} test "
                       f"({gain:+.2f} pp, {net:+d} of {test['test_images']} images: "
                       f"{test['only_pick']} right only by the pick, {test['only_uniform']} "
                       f"only by uniform) at {pick['flops'] / 1e6:.1f}M vs "
                       f"{uni['flops'] / 1e6:.1f}M FLOPs; exact McNemar p = {p:.2g}: {verdict}"}
