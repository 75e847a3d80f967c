"""Deployment: fast inference (BN folding, channels-last, compile), ONNX, int8 (ONNX Runtime or torch
oneDNN), pruning, distillation.

ONNX and int8 need the `export` extra (onnx, onnxruntime, onnxscript); they are imported lazily.
"""
from unetkit.export.optimize import (
    InferenceModel, fold_batchnorm, optimize_for_inference, prepare_for_training, retain_cpu_memory,
    to_channels_last,
)
from unetkit.export.prune import (
    channel_sparsity, prune_channels, prune_global_unstructured, remove_pruning, sparsity,
)
from unetkit.export.distill import distill, distillation_loss


def __getattr__(name: str):  # lazy: onnx / onnxruntime are optional
    if name in ("export_onnx", "OnnxPredictor"):
        from unetkit.export import onnx as _onnx

        return getattr(_onnx, name)
    if name in ("quantize_int8", "quantize_onnx_int8", "image_tiles", "volume_patches", "save_model_4bit"):
        from unetkit.export import quantize as _q

        return getattr(_q, name)
    if name in ("quantize_torch_int8", "save_model_int8", "onednn_int8_available"):
        from unetkit.export import onednn_int8 as _o

        return getattr(_o, name)
    raise AttributeError(f"module 'unetkit.export' has no attribute '{name}'")


__all__ = [
    "InferenceModel", "fold_batchnorm", "optimize_for_inference", "prepare_for_training", "retain_cpu_memory",
    "to_channels_last",
    "prune_global_unstructured", "prune_channels", "remove_pruning", "sparsity", "channel_sparsity",
    "distill", "distillation_loss", "export_onnx", "OnnxPredictor", "quantize_int8", "quantize_onnx_int8",
    "image_tiles", "quantize_torch_int8", "save_model_int8", "onednn_int8_available",
]
