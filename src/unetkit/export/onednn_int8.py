"""Torch-native static int8 for the U-Net family (2D and 3D), on PyTorch's oneDNN int8 convolutions.

    qmodel = quantize_torch_int8(model, calibration_batches)       # calibration="minmax"|"percentile"
    logits = qmodel(images)                                         # same call and outputs as `model`
    save_model_int8(qmodel, "unet-int8.safetensors")                # unetkit model file; load_model runs it

Every `nn.Conv2d` / `nn.Conv3d` (zero padding) becomes an `Int8Conv`: it quantises its input to
uint8 per tensor (range calibrated by observing that conv's input on real patches) and runs
`torch.ops.onednn.qconv_pointwise` with int8 weights (symmetric, one scale per output channel,
levels -127..127; -63..63 on CPUs without VNNI / AMX int8, whose u8 x s8 pair sums saturate at 16
bits otherwise) and fp32 bias, producing fp32 output. BatchNorm that directly follows a conv is
folded into it first. Transposed convs, norms, activations, pooling, upsampling and concatenation
stay fp32; activations between layers are channels-last (the layout the oneDNN kernels take), the
model's output is returned contiguous. CPU only.

Where it helps: oneDNN runs these convolutions with AVX-512 VNNI / AMX int8 instructions where the
CPU has them (recent Xeons); that is where it can beat torch fp32. Only the convolutions get
faster: norms, activations, concatenation and transposed convs cost what they cost in fp32 (plus
one fp32 -> uint8 quantisation of each conv input), so the whole-network gain is smaller than the
per-conv one and grows with the width of the network. On AVX2-only CPUs it may not be faster at
all. Measure on the target CPU (benchmarks/bench_quant3d.py, bench_quant_demo.py) and let that
decide. Where torch lacks these ops, use the ONNX Runtime path (`quantize_int8`).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from unetkit.errors import ConfigError, UnsupportedError
from unetkit.models.layers import InstanceNorm

INT8_SCHEME = "int8-onednn-static"
TORCH_CALIBRATION_METHODS = ("minmax", "percentile")
PERCENTILE = 99.99          # "percentile" calibration keeps [0.01 %, 99.99 %] of each conv's inputs
_SAMPLE = 1 << 20           # values per batch and conv the percentile is taken on (a random subset)
# torch marks quantize_per_tensor deprecated (2.13); it is the fused fp32 -> uint8 kernel we need.
warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor.*deprecated", category=UserWarning)


def onednn_int8_available() -> str | None:
    """None when this torch and CPU can run oneDNN int8 convolutions, else the reason."""
    try:
        ops = torch.ops.onednn
        ops.qconv_prepack, ops.qconv_pointwise  # noqa: B018 - attribute lookups raise if missing
    except (AttributeError, RuntimeError):
        return f"this torch ({torch.__version__}) has no torch.ops.onednn.qconv_pointwise"
    if not torch.backends.mkldnn.is_available():
        return f"this torch ({torch.__version__}) is built without oneDNN (mkldnn)"
    try:  # a 1x1 conv on a 1x1 image: the CPU kernels exist and run
        x = torch.ones(1, 1, 1, 1, dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
        w = torch.ones(1, 1, 1, 1, dtype=torch.int8)
        s = torch.ones(1)
        packed = torch.ops.onednn.qconv_prepack(w, s, 1.0, 0, [1, 1], [0, 0], [1, 1], 1, None)
        torch.ops.onednn.qconv_pointwise(x, 1.0, 0, packed, s, torch.zeros(1, dtype=torch.int64), None,
                                         [1, 1], [0, 0], [1, 1], 1, 1.0, 0, torch.float32, "none", [], "")
    except Exception as err:  # noqa: BLE001 - any failure means: not usable here
        return f"oneDNN int8 convolution does not run on this CPU ({type(err).__name__}: {err})"
    return None


def cpu_has_int8_dot_product() -> bool:
    """True when the CPU has VNNI or AMX int8 (u8 x s8 dot products into 32 bits; read from
    /proc/cpuinfo). Without them oneDNN's int8 kernels add u8 x s8 pairs in 16 bits, which
    saturates for 8-bit weights; False where it cannot be told (weights then use 7 bits)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[-1].split())
            break
    return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})


def _require_onednn() -> None:
    reason = onednn_int8_available()
    if reason is not None:
        raise UnsupportedError(f"torch int8 (oneDNN) is not available: {reason}. Use the ONNX Runtime "
                               "int8 path instead: unetkit.export.quantize_int8 / `unetkit export --format int8`")


def _conv_padding(conv: nn.Conv2d | nn.Conv3d) -> list[int] | None:
    """Explicit zero padding of `conv`, or None when it cannot run as an int8 conv here."""
    if conv.padding_mode != "zeros":
        return None
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            return [0] * len(conv.kernel_size)
        total = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
        if any(t % 2 for t in total):  # 'same' with asymmetric padding
            return None
        return [t // 2 for t in total]
    return [int(p) for p in conv.padding]


class Int8Conv(nn.Module):
    """A conv with int8 weights (per output channel) and a calibrated uint8 input quantiser, run by
    oneDNN; fp32 in, fp32 (channels-last) out. Built by `quantize_torch_int8`."""

    def __init__(self, conv: nn.Conv2d | nn.Conv3d) -> None:
        super().__init__()
        padding = _conv_padding(conv)
        if padding is None:
            raise ConfigError(f"{conv}: only zero-padded convs with symmetric padding run as int8")
        self.spatial_dims = len(conv.kernel_size)
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size = tuple(conv.kernel_size)
        self.stride, self.padding = [int(s) for s in conv.stride], padding
        self.dilation, self.groups = [int(d) for d in conv.dilation], int(conv.groups)
        self.register_buffer("weight_int8", torch.zeros(conv.weight.shape, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(conv.out_channels))
        self.register_buffer("bias", None if conv.bias is None else torch.zeros(conv.out_channels))
        self.register_buffer("input_scale", torch.ones(()))
        self.register_buffer("input_zero_point", torch.zeros((), dtype=torch.int64))
        self._packed: tuple | None = None

    def set_weight(self, weight: torch.Tensor, bias: torch.Tensor | None, levels: int = 127) -> None:
        """int8 symmetric per-output-channel codes of an fp32 `weight` (scale max|w| / levels)."""
        w = weight.detach().float().cpu()
        scale = w.reshape(w.shape[0], -1).abs().amax(dim=1) / float(levels)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero channel stays zero
        q = torch.round(w / scale.view(-1, *([1] * (w.dim() - 1)))).clamp(-levels, levels)
        self.weight_int8.copy_(q.to(torch.int8))
        self.weight_scale.copy_(scale)
        if self.bias is not None:
            self.bias.copy_(bias.detach().float().cpu())
        self._packed = None

    def set_input_range(self, lo: float, hi: float) -> None:
        """uint8 affine input quantiser covering [lo, hi] (widened to contain 0)."""
        lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
        scale = (hi - lo) / 255.0 if hi > lo else 1.0
        self.input_scale.fill_(scale)
        self.input_zero_point.fill_(int(np.clip(round(-lo / scale), 0, 255)))
        self._packed = None

    def __getstate__(self) -> dict:  # the packed weight is an opaque oneDNN tensor: rebuilt on use
        state = super().__getstate__()
        state["_packed"] = None
        return state

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._packed = None

    def _prepared(self) -> tuple:
        if self._packed is None:
            x_scale, x_zp = float(self.input_scale), int(self.input_zero_point)
            packed = torch.ops.onednn.qconv_prepack(self.weight_int8, self.weight_scale, x_scale, x_zp,
                                                    self.stride, self.padding, self.dilation, self.groups, None)
            self._packed = (packed, x_scale, x_zp, torch.zeros(self.out_channels, dtype=torch.int64))
        return self._packed

    def prepare_for_compile(self) -> None:
        """Pack now (`optimize_for_inference` calls this before torch.compile): traced, the lazy
        packing would read the scales as Python numbers and break the graph at every conv."""
        self._prepared()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        packed, x_scale, x_zp, w_zp = self._prepared()
        fmt = torch.channels_last_3d if self.spatial_dims == 3 else torch.channels_last
        x = x.float().contiguous(memory_format=fmt)
        if torch.compiler.is_compiling():
            # the same affine uint8 map written out (ONNX QuantizeLinear: round half to even, then
            # saturate), which inductor fuses into the pass computing x (norm + activation);
            # quantize_per_tensor makes a quantized tensor, which would break the graph here
            qx = torch.clamp(torch.round(x / x_scale) + x_zp, 0, 255).to(torch.uint8)
        else:
            qx = torch.quantize_per_tensor(x, x_scale, x_zp, torch.quint8).int_repr()
        return torch.ops.onednn.qconv_pointwise(
            qx, x_scale, x_zp, packed, self.weight_scale, w_zp, self.bias, self.stride, self.padding,
            self.dilation, self.groups, 1.0, 0, torch.float32, "none", [], "")

    def dequantized_weight(self) -> torch.Tensor:
        """The fp32 weight the int8 codes stand for."""
        return self.weight_int8.float() * self.weight_scale.view(-1, *([1] * (self.weight_int8.dim() - 1)))

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, groups={self.groups}, int8 (oneDNN)")


def _contiguous_output(module: nn.Module, args: Any, output: Any) -> Any:
    if isinstance(output, torch.Tensor):
        return output.contiguous()
    if isinstance(output, (list, tuple)):
        return type(output)(o.contiguous() if isinstance(o, torch.Tensor) else o for o in output)
    return output


def _quantizable(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules()
            if type(m) in (nn.Conv2d, nn.Conv3d) and _conv_padding(m) is not None}


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _as_tensor(batch: Any) -> torch.Tensor:
    from unetkit.export.quantize import _as_numpy

    return torch.from_numpy(_as_numpy(batch))


def _observe(model: nn.Module, names: list[str], batches: Iterable[Any], method: str,
             seed: int = 0) -> dict[str, tuple[float, float]]:
    """(lo, hi) of each named conv's input over the batches: min / max, or the mean over batches
    of the [100 - PERCENTILE, PERCENTILE] percentiles (within the observed min / max)."""
    if isinstance(batches, (np.ndarray, torch.Tensor)):  # one (N, C, *S) array, not a list of batches
        batches = [batches]
    gen = torch.Generator().manual_seed(seed)
    stats: dict[str, dict[str, list[float]]] = {n: {"min": [], "max": [], "plo": [], "phi": []} for n in names}

    def hook(name: str):
        def fn(_module: nn.Module, args: tuple) -> None:
            x = args[0].detach().float()
            s = stats[name]
            s["min"].append(float(x.min()))
            s["max"].append(float(x.max()))
            if method == "percentile":
                flat = x.reshape(-1)
                if flat.numel() > _SAMPLE:
                    flat = flat[torch.randint(flat.numel(), (_SAMPLE,), generator=gen)]
                lo, hi = np.percentile(flat.numpy(), [100.0 - PERCENTILE, PERCENTILE])
                s["plo"].append(float(lo))
                s["phi"].append(float(hi))
        return fn

    handles = [model.get_submodule(n).register_forward_pre_hook(hook(n)) for n in names]
    count = 0
    try:
        with torch.no_grad():
            for batch in batches:
                model(_as_tensor(batch))
                count += 1
    finally:
        for h in handles:
            h.remove()
    if count == 0:
        raise ConfigError("quantize_torch_int8 needs at least one calibration batch")
    out = {}
    for n, s in stats.items():
        if not s["min"]:
            raise ConfigError(f"calibration never reached layer '{n}' (is it used in forward?)")
        lo, hi = min(s["min"]), max(s["max"])
        if method == "percentile":
            lo, hi = max(lo, float(np.mean(s["plo"]))), min(hi, float(np.mean(s["phi"])))
        out[n] = (lo, hi)
    return out


def _prepare(model: nn.Module) -> tuple[nn.Module, bool]:
    """An eval-mode copy with conv -> BatchNorm pairs folded (True when any was)."""
    from unetkit.export.optimize import fold_batchnorm

    folded = fold_batchnorm(model)
    return folded, bool(getattr(folded, "folded_batchnorms", 0))


def _swap_in(model: nn.Module, names: list[str]) -> dict[str, Int8Conv]:
    layers = {}
    for n in names:
        layers[n] = Int8Conv(model.get_submodule(n))
        _replace(model, n, layers[n])
    return layers


def _channels_last_norms(model: nn.Module) -> None:
    """unetkit's InstanceNorm takes `F.instance_norm` on channels-last inputs (for training accuracy),
    about 4x slower there than the GroupNorm kernel it uses on default-layout inputs; between int8
    convs every map is channels-last, so these norms always take the GroupNorm kernel (same
    function and parameters; about 2e-6 less accurate, far below the int8 steps)."""
    for m in model.modules():
        if type(m) is InstanceNorm:
            m.__class__ = GroupKernelInstanceNorm


class GroupKernelInstanceNorm(InstanceNorm):
    """unetkit's InstanceNorm (same function and parameters) on the GroupNorm kernel in every layout."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


def _finish(model: nn.Module, names: list[str], record: dict[str, Any]) -> nn.Module:
    _channels_last_norms(model)
    model.register_forward_hook(_contiguous_output)
    model.int8_layers = list(names)
    model.int8_record = record
    return model


def quantize_torch_int8(model: nn.Module, calibration_batches: Iterable[Any],
                        calibration: str = "minmax") -> nn.Module:
    """A copy of `model` whose convs run as oneDNN int8 (see the module docstring), for inference.

    Args:
        model: an fp32 model (the original is untouched).
        calibration_batches: an iterable of batches of real patches (N, C, *S), normalised as for the
            model: arrays, tensors, (image, target) pairs or dicts with "image"; or one such array.
            A few dozen patches are enough.
        calibration: input ranges from the observed "minmax" or the "percentile" (0.01 .. 99.99 %).

    The returned module keeps the model's attributes (spatial_dims, num_classes, unetkit_config...)
    and has `int8_layers` (the quantised conv names). Raises UnsupportedError when this torch / CPU
    has no oneDNN int8 convolution, ConfigError for a model with no conv to quantise.
    """
    if calibration not in TORCH_CALIBRATION_METHODS:
        raise ConfigError(f"calibration must be one of {TORCH_CALIBRATION_METHODS}, got '{calibration}'")
    _require_onednn()
    qmodel, folded = _prepare(model)
    qmodel = qmodel.float().cpu()
    names = list(_quantizable(qmodel))
    if not names:
        raise ConfigError(f"{type(model).__name__} has no zero-padded Conv2d / Conv3d to quantise to int8")
    ranges = _observe(qmodel, names, calibration_batches, calibration)
    levels = 127 if cpu_has_int8_dot_product() else 63
    convs = {n: qmodel.get_submodule(n) for n in names}
    for n, layer in _swap_in(qmodel, names).items():
        layer.set_weight(convs[n].weight, convs[n].bias, levels)
        layer.set_input_range(*ranges[n])
    record = {"scheme": INT8_SCHEME, "layers": names, "folded_batchnorm": folded, "calibration": calibration,
              "weight_levels": levels}
    return _finish(qmodel, names, record)


def save_model_int8(qmodel: nn.Module, path: str | os.PathLike, extra: dict[str, Any] | None = None,
                    overwrite: bool = False) -> Path:
    """Write a `quantize_torch_int8` model as a unetkit model file: int8 weights, their scales, the
    input quantisers and every fp32 tensor, metadata key `quantization` (scheme int8-onednn-static).
    `load_model(path)` rebuilds the int8 model, so `unetkit predict` runs it. `extra` defaults to
    the metadata the fp32 model was loaded with (preprocessing etc.)."""
    from unetkit.io.checkpoint import save_model

    record = getattr(qmodel, "int8_record", None)
    if record is None:
        raise ConfigError(f"{type(qmodel).__name__} is not a quantize_torch_int8 model")
    if extra is None:
        extra = dict(getattr(qmodel, "unetkit_meta", {}).get("extra", {}) or {})
    return save_model(qmodel, path, extra=extra, overwrite=overwrite, quantization=record)


def int8_model_from_state(model: nn.Module, state: dict[str, torch.Tensor], record: dict[str, Any]) -> nn.Module:
    """The int8 model a saved file stands for: `model` is the freshly built fp32 architecture.
    Raises ValueError / RuntimeError when the file does not fit it, UnsupportedError without oneDNN."""
    if record.get("scheme") != INT8_SCHEME:
        raise ValueError(f"unknown quantization scheme {record.get('scheme')!r}")
    _require_onednn()
    if int(record.get("weight_levels", 127)) > 63 and not cpu_has_int8_dot_product():
        warnings.warn("this int8 model has 8-bit weights, made for a CPU with VNNI / AMX int8; this CPU has "
                      "neither, so its int8 sums may saturate: re-quantise it here (quantize_torch_int8 then "
                      "uses 7-bit weights) or check its accuracy", RuntimeWarning, stacklevel=3)
    qmodel = _prepare(model)[0] if record.get("folded_batchnorm") else model.eval()
    names = list(record["layers"])
    for n in names:
        try:
            conv = qmodel.get_submodule(n)
        except AttributeError:
            raise ValueError(f"layer '{n}' is not in the model") from None
        if type(conv) not in (nn.Conv2d, nn.Conv3d):
            raise ValueError(f"layer '{n}' is a {type(conv).__name__}, not a conv")
    _swap_in(qmodel, names)
    qmodel.load_state_dict(state, strict=True)
    return _finish(qmodel, names, dict(record))
