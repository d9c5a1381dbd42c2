"""What a candidate is worth: structural pruning, cost, latency, data and accuracy scores."""

from ._base_model import (CheckpointError, cache_dir, get_base_model, load_into,
                          read_state_dict, train_base)
from ._candidate import CandidateEvaluator, Evaluate, worker_base
from ._cost import (RUNTIMES, Cost, Latency, channels_cost, check_runtime, cpu_threads,
                    resolve_runtime,
                    export_onnx, LatencyRatio, latency_ratio, measure_latency, model_cost,
                    policy_cost, quiet_latency_ms, shapes_cost, steady_allocator)
from ._device import (PRECISIONS, DeviceError, autocast, configure_backends, grad_scaler,
                      resolve_device, resolve_precision)
from ._data import (DataError, FileSplit, ImageData, Split, check_val_fraction,
                    dataset_image_size, from_datasets, load_data, stratified_split)
from ._finetune import FinetuneConfig, finetune, weights_fingerprint
from ._io import atomic_write_bytes, atomic_write_text
from ._progress import Eta
from ._latency_table import LatencyTable, build_latency_table, get_latency_table, table_key
from ._prune import (IMPORTANCES, NEEDS_GRADIENTS, build_from_spec, importance_gradients,
                     layer_channels, load_pruned, make_spec, prune, prune_to_channels,
                     removal_plan, save_pruned)
from ._score import RANK_BY, ScoreConfig, ScoreResult, score_candidate
from ._sensitivity import Sensitivity, SensitivityConfig, get_sensitivity, measure_sensitivity
from ._train import (Diverged, adaptive_bn, check_at_least, distillation_loss, evaluate,
                     evaluate_metrics, taylor_gradients, train_steps, val_logits)

__all__ = ["Eta", "RUNTIMES", "check_runtime", "resolve_runtime", "export_onnx", "PRECISIONS", "DeviceError", "autocast", "configure_backends", "grad_scaler",
           "resolve_device", "resolve_precision", "CandidateEvaluator", "Evaluate", "CheckpointError", "Cost", "RANK_BY", "evaluate_metrics", "val_logits", "DataError", "check_at_least", "check_val_fraction", "Diverged", "FileSplit", "FinetuneConfig", "IMPORTANCES", "NEEDS_GRADIENTS", "importance_gradients", "taylor_gradients",
           "ImageData", "dataset_image_size", "from_datasets", "Latency", "LatencyTable", "build_latency_table", "get_latency_table", "table_key", "ScoreConfig", "ScoreResult", "Sensitivity", "SensitivityConfig", "get_sensitivity", "measure_sensitivity", "Split", "adaptive_bn",
           "atomic_write_bytes", "atomic_write_text", "build_from_spec", "cache_dir",
           "channels_cost", "cpu_threads", "distillation_loss", "evaluate", "finetune",
           "get_base_model", "layer_channels", "load_data", "load_into", "load_pruned",
           "make_spec", "LatencyRatio", "latency_ratio", "measure_latency", "quiet_latency_ms", "model_cost", "policy_cost", "prune",
           "prune_to_channels", "read_state_dict", "removal_plan", "save_pruned", "score_candidate",
           "shapes_cost", "steady_allocator", "stratified_split", "train_base", "train_steps",
           "weights_fingerprint", "worker_base"]
