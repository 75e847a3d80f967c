"""Quantisation: int8 (static, through ONNX Runtime) and 4-bit weight-only (storage).

(int8 inside torch, on oneDNN's int8 convolutions, with a model file `load_model` runs as int8:
`unetkit.export.onednn_int8.quantize_torch_int8`, re-exported here.)

int8 post-training quantisation for CPU deployment, through ONNX Runtime, 2D and 3D:

    predictor = quantize_int8(model, calibration_batches, "unet-int8.onnx")
    logits = predictor(images)           # same call signature as the model

Static quantisation (QDQ format): weights int8 per output channel, activations uint8 per tensor
with ranges calibrated on real image tiles (`calibration_batches`: an iterable of (N, C, *S)
float arrays or tensors, normalised exactly as for the model). ONNX Runtime fuses the QDQ pairs
into integer convolutions (VNNI on recent x86). Why ONNX Runtime rather than torch.ao FX
quantisation: see BENCHMARKS.md (measured side by side). `volume_patches` cuts 3D calibration
patches the same way `image_tiles` cuts 2D tiles.

4-bit weight-only (`save_model_4bit`): every conv / linear weight is stored as signed 4-bit
integers (two per byte) with one fp16 scale per output channel, or per group of `group_size`
consecutive weights of an output channel (symmetric, round to nearest, levels -8..7 with
scale = max|w| / 7). Biases and norm parameters stay fp32. The file is a unetkit model file
(safetensors, metadata key `quantization`); `load_model` dequantises it on load, so every
path that takes a model file (predict, evaluate, export) runs it. It saves size (about 1/7 of
fp32 for conv nets), not time: no runtime here executes 4-bit convolutions, the dequantised
model runs in fp32.
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


def __getattr__(name: str):  # torch-native int8 lives in its own module (imports this one)
    if name in ("quantize_torch_int8", "save_model_int8", "onednn_int8_available"):
        from unetkit.export import onednn_int8

        return getattr(onednn_int8, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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


def volume_patches(volume: np.ndarray, patch: int | Sequence[int], count: int | None = None,
                   stride: int | Sequence[int] | None = None) -> np.ndarray:
    """Patches (K, C, *patch) on a regular grid of a (C, *S) or channel-less (*S) array of any
    dimensionality matching `patch` (2D tiles, 3D patches), for calibration."""
    arr = np.asarray(volume, dtype=np.float32)
    if isinstance(patch, (tuple, list)):
        patch = tuple(int(p) for p in patch)
        dims = len(patch)
    else:
        dims = arr.ndim if arr.ndim in (2, 3) else arr.ndim - 1
        patch = (int(patch),) * dims
    if arr.ndim == dims:
        arr = arr[None]
    stride = tuple(stride) if isinstance(stride, (tuple, list)) else (stride,) * dims if stride else patch
    spatial = arr.shape[1:]
    if any(s < p for s, p in zip(spatial, patch)):
        raise ValueError(f"array of spatial size {spatial} is smaller than the patch {patch}")
    starts = np.meshgrid(*[np.arange(0, s - p + 1, st) for s, p, st in zip(spatial, patch, stride)], indexing="ij")
    out = [arr[(slice(None), *(slice(int(o), int(o) + p) for o, p in zip(origin, patch)))]
           for origin in zip(*(g.ravel() for g in starts))]
    if count is not None:
        out = out[:count]
    return np.stack(out)


# ---- 4-bit weight-only ------------------------------------------------------------------------
Q4_SCHEME = "int4-weight-only"


def _is_q4_weight(name: str, t: torch.Tensor) -> bool:
    return t.is_floating_point() and t.dim() >= 2 and name.endswith("weight")


def quantize_tensor_4bit(w: torch.Tensor, group_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(packed uint8 codes, fp16 scales (O, groups)) of a weight (O, ...): symmetric 4-bit per
    output channel (`group_size=None`) or per `group_size` consecutive fan-in weights."""
    flat = w.detach().float().reshape(w.shape[0], -1)
    fan = flat.shape[1]
    g = fan if group_size is None else int(group_size)
    if g < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    groups = -(-fan // g)
    padded = torch.zeros(flat.shape[0], groups * g)
    padded[:, :fan] = flat
    blocks = padded.reshape(flat.shape[0], groups, g)
    scale = (blocks.abs().amax(dim=2) / 7.0).to(torch.float16)
    safe = scale.float().clamp_min(torch.finfo(torch.float16).tiny)
    q = torch.round(blocks / safe[..., None]).clamp(-8, 7).to(torch.int16).reshape(flat.shape[0], -1)[:, :fan]
    codes = (q.reshape(-1) + 8).to(torch.uint8)
    if codes.numel() % 2:
        codes = torch.cat([codes, torch.zeros(1, dtype=torch.uint8)])
    packed = codes[0::2] | (codes[1::2] << 4)
    return packed, scale


def dequantize_tensor_4bit(packed: torch.Tensor, scale: torch.Tensor, shape: Sequence[int],
                           group_size: int | None = None) -> torch.Tensor:
    """The fp32 weight of `shape` from `quantize_tensor_4bit`'s codes and scales."""
    out_ch = int(shape[0])
    fan = int(np.prod(shape[1:]))
    codes = torch.stack([packed & 0x0F, packed >> 4], dim=1).reshape(-1)[:out_ch * fan]
    q = codes.to(torch.float32).sub_(8.0).reshape(out_ch, fan)
    g = fan if group_size is None else int(group_size)
    groups = -(-fan // g)
    if scale.shape != (out_ch, groups):
        raise ValueError(f"4-bit scales of shape {tuple(scale.shape)} do not fit a weight {tuple(shape)} "
                         f"with group size {g}")
    per = scale.float().repeat_interleave(g, dim=1)[:, :fan]
    return (q * per).reshape(tuple(int(s) for s in shape))


def quantize_state_4bit(state: dict[str, torch.Tensor], group_size: int | None = 32
                        ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A state dict -> (tensors to store, the `quantization` record): conv / linear weights
    become `<name>.q4` + `<name>.q4scale`; everything else is kept as it is."""
    tensors: dict[str, torch.Tensor] = {}
    shapes: dict[str, list[int]] = {}
    for name, t in state.items():
        if _is_q4_weight(name, t):
            packed, scale = quantize_tensor_4bit(t, group_size)
            tensors[f"{name}.q4"], tensors[f"{name}.q4scale"] = packed, scale
            shapes[name] = list(t.shape)
        else:
            tensors[name] = t.detach().cpu().contiguous().clone()
    return tensors, {"scheme": Q4_SCHEME, "group_size": group_size, "shapes": shapes}


def dequantize_state_4bit(tensors: dict[str, torch.Tensor], record: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The fp32 state dict a 4-bit file stands for."""
    if record.get("scheme") != Q4_SCHEME:
        raise ValueError(f"unknown quantization scheme {record.get('scheme')!r}")
    group = record.get("group_size")
    state = {k: v for k, v in tensors.items() if not k.endswith((".q4", ".q4scale"))}
    for name, shape in record["shapes"].items():
        state[name] = dequantize_tensor_4bit(tensors[f"{name}.q4"], tensors[f"{name}.q4scale"], shape, group)
    return state


def save_model_4bit(model: nn.Module, path: str | os.PathLike, group_size: int | None = 32,
                    extra: dict[str, Any] | None = None, overwrite: bool = False) -> Path:
    """Write `model` as a 4-bit weight-only unetkit model file (see the module docstring);
    `load_model(path)` returns the dequantised fp32 model. `extra` defaults to the metadata the
    model was loaded with (preprocessing etc.), so a predictor treats the file like the original."""
    from unetkit.io.checkpoint import save_model

    if extra is None:
        extra = dict(getattr(model, "unetkit_meta", {}).get("extra", {}) or {})
    tensors, record = quantize_state_4bit(model.state_dict(), group_size)
    return save_model(model, path, extra=extra, overwrite=overwrite, state=tensors, quantization=record)
