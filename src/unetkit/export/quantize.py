"""int8 post-training quantisation for CPU deployment, through ONNX Runtime.

    predictor = quantize_int8(model, calibration_batches, "unet-int8.onnx")
    logits = predictor(images)           # same call signature as the model

Static quantisation (QDQ format): weights int8 per output channel, activations uint8 per tensor
with ranges calibrated on real image tiles (`calibration_batches`: an iterable of (N, C, *S)
float arrays or tensors, normalised exactly as for the model). ONNX Runtime fuses the QDQ pairs
into integer convolutions (VNNI on recent x86). Why ONNX Runtime rather than torch.ao FX
quantisation: see BENCHMARKS.md (measured side by side).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.nn as nn

from unetkit.io.atomic import atomic_path

CALIBRATION_METHODS = ("minmax", "percentile", "entropy")


def _as_numpy(batch: Any) -> np.ndarray:
    if isinstance(batch, (list, tuple)) and batch and not np.isscalar(batch[0]):
        batch = batch[0]  # (image, target) pairs from a loader: take the image
    if isinstance(batch, dict):
        batch = batch.get("image", next(iter(batch.values())))
    if isinstance(batch, torch.Tensor):
        batch = batch.detach().cpu().float().numpy()
    return np.ascontiguousarray(batch, dtype=np.float32)


class _Reader:
    """onnxruntime.quantization.CalibrationDataReader over a list of batches."""

    def __init__(self, input_name: str, batches: Sequence[np.ndarray]) -> None:
        self.input_name = input_name
        self.batches = list(batches)
        self._it = iter(self.batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._it, None)
        return None if batch is None else {self.input_name: batch}

    def rewind(self) -> None:
        self._it = iter(self.batches)


def quantize_onnx_int8(
    onnx_path: str | os.PathLike,
    calibration_batches: Iterable[Any],
    out_path: str | os.PathLike,
    per_channel: bool = True,
    method: str = "minmax",
    op_types: Sequence[str] | None = None,
    overwrite: bool = True,
) -> Path:
    """Quantise an fp32 ONNX file into an int8 QDQ ONNX file calibrated on `calibration_batches`."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process
    import onnxruntime as ort

    if method not in CALIBRATION_METHODS:
        raise ValueError(f"method must be one of {CALIBRATION_METHODS}, got '{method}'")
    batches = [_as_numpy(b) for b in calibration_batches]
    if not batches:
        raise ValueError("quantize_int8 needs at least one calibration batch")
    input_name = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).get_inputs()[0].name
    calib = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
             "entropy": CalibrationMethod.Entropy}[method]
    out_path = Path(out_path)
    with tempfile.TemporaryDirectory(prefix="unetkit-quant-") as work, atomic_path(out_path, overwrite=overwrite) as tmp:
        prep = Path(work) / "prep.onnx"
        try:
            quant_pre_process(str(onnx_path), str(prep), skip_symbolic_shape=True)
        except Exception:  # pre-processing only helps; quantise the raw graph if it fails
            prep = Path(onnx_path)
        quantize_static(
            str(prep), str(tmp), _Reader(input_name, batches),
            quant_format=QuantFormat.QDQ, per_channel=per_channel,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=calib, op_types_to_quantize=list(op_types) if op_types else None,
            extra_options={"CalibTensorRangeSymmetric": False, "CalibMovingAverage": False},
        )
    return out_path


def quantize_int8(
    model: nn.Module | str | os.PathLike,
    calibration_batches: Iterable[Any],
    out_path: str | os.PathLike,
    example_shape: Sequence[int] | None = None,
    per_channel: bool = True,
    method: str = "minmax",
    threads: int | None = None,
    overwrite: bool = True,
):
    """int8 post-training quantisation; returns an `OnnxPredictor` on the quantised file.

    Args:
        model: a torch model (exported to fp32 ONNX first, BN folded) or an fp32 ONNX path.
        calibration_batches: real image tiles (N, C, *S), normalised as for the model; a few
            dozen tiles are enough. Batches may also be (image, target) pairs or dicts with "image".
        out_path: where the int8 ONNX file goes.
        example_shape: export shape for a torch model (default: the first calibration batch's).
        per_channel: per-output-channel weight scales (recommended).
        method: calibration of activation ranges: "minmax", "percentile" or "entropy".
    """
    from unetkit.export.onnx import OnnxPredictor, export_onnx

    batches = [_as_numpy(b) for b in calibration_batches]
    if not batches:
        raise ValueError("quantize_int8 needs at least one calibration batch")
    with tempfile.TemporaryDirectory(prefix="unetkit-quant-") as work:
        if isinstance(model, nn.Module):
            fp32 = Path(work) / "fp32.onnx"
            shape = tuple(example_shape) if example_shape is not None else (1, *batches[0].shape[1:])
            export_onnx(model, fp32, shape, dynamic_spatial=True)
        else:
            fp32 = Path(model)
        quantize_onnx_int8(fp32, batches, out_path, per_channel=per_channel, method=method,
                           overwrite=overwrite)
    return OnnxPredictor(out_path, threads=threads)


def image_tiles(image: np.ndarray, tile: int, count: int | None = None, stride: int | None = None) -> np.ndarray:
    """Tiles (K, C, tile, tile) cut from a (C, H, W) or (H, W) image on a regular grid, for
    calibration. `count` keeps the first `count` tiles."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 2:
        image = image[None]
    stride = stride or tile
    _, h, w = image.shape
    if h < tile or w < tile:
        raise ValueError(f"image {h}x{w} is smaller than the tile {tile}")
    ys = list(range(0, h - tile + 1, stride)) or [0]
    xs = list(range(0, w - tile + 1, stride)) or [0]
    tiles = [image[:, y:y + tile, x:x + tile] for y in ys for x in xs]
    if count is not None:
        tiles = tiles[:count]
    return np.stack(tiles)
