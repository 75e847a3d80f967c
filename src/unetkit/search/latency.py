"""Latency on the target device: measured, cached per device, and predicted per operation.

    spec = LatencySpec(device="cpu", precision="fp32", batch=1, size=(512, 512))
    cache = LatencyCache.for_device(spec)            # $UNETKIT_CACHE_DIR or ~/.cache/unetkit, latency/<device>.json
    seconds = cache.measure(candidate, spec)["seconds"]   # a whole network, measured once per device
    feats = candidate_features(candidate, spec, cache)    # its operations, looked up in the per-op table
    predictor = LatencyPredictor.fit([feats, ...], [seconds, ...])
    predictor.predict(feats)

What is timed is the deployment path of each precision, on one fixed random batch:
- cpu / fp32: `optimize_for_inference` (BatchNorm folded, channels-last, inference mode; no compile);
- cpu / int8: the fp32 ONNX export quantised to static int8 (QDQ, per channel), run by ONNX Runtime
  with as many threads as torch uses;
- cuda / amp: `optimize_for_inference` with bf16/fp16 autocast on the GPU (synchronised timings).
Each measurement is the median of `repeats` runs after `warmup` runs.

The predictor is a per-layer lookup (as in FBNet's latency table and nn-Meter's kernel-level
prediction): a meta-device forward pass (no compute) lists a network's operations at their actual
input shapes (`trace_ops`); every distinct convolution signature (kind, channels, kernel, stride,
groups, spatial size, batch, precision) is timed alone once on the device, with the deployment's
threads, channels-last layout and inference mode, and kept in the per-device cache file; the
elementwise, concatenation, pooling and resampling operations are their bytes moved times a
measured seconds-per-byte of their class. A network's latency is predicted as
a * (sum of its operations' table latencies) + b * (number of operations) + c, with a split into
one factor for the timed convolutions and one for the bytes-modelled rest, all >= 0, fitted to
the measured whole networks by relative error. int8 (ONNX Runtime) has no per-operation
table: the same model is fitted on the fp32 table's sums, a linear correction. `held_out_errors`
reports the error on candidates held out of the fit; `predictor_report` measures and reports it.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import random
import re
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode

from unetkit.io.atomic import atomic_path

PRECISIONS = {"cpu": ("fp32", "int8"), "cuda": ("amp", "fp32")}
CACHE_VERSION = 2  # 1: whole-network entries only; 2: + the per-operation table ("ops")
# the predictor: seconds = a1 * (table sum of the timed convolutions) + a2 * (table sum of the
# operations modelled by bytes) + b * (operations) + c
FEATURES = ("conv_s", "other_s", "ops", "const")
# with fewer than 2 measurements per coefficient, a * (whole table sum) + c
FEW_FEATURES = ("op_sum_s", "const")
COEFS = ("op_sum_s",) + FEATURES


# ---- what is measured ---------------------------------------------------------------------------
@dataclass(frozen=True)
class LatencySpec:
    """The target: device, precision, batch and input size, channels in and out."""

    device: str = "cpu"  # cpu | cuda
    precision: str = "fp32"  # cpu: fp32 | int8; cuda: amp | fp32
    batch: int = 1
    size: tuple = (512, 512)
    in_channels: int = 1
    num_classes: int = 1
    repeats: int = 5
    warmup: int = 1
    threads: int = 0  # CPU threads of the deployment (0: torch's current setting)

    def __post_init__(self) -> None:
        if self.device not in PRECISIONS:
            raise ValueError(f"device must be one of {sorted(PRECISIONS)}, got '{self.device}'")
        if self.precision not in PRECISIONS[self.device]:
            raise ValueError(f"precision '{self.precision}' is not measured on {self.device}; "
                             f"choose from {list(PRECISIONS[self.device])}")
        if self.batch < 1 or len(self.size) != 2 or min(self.size) < 16:
            raise ValueError(f"need batch >= 1 and a 2D input size of at least 16x16, got batch {self.batch}, "
                             f"size {tuple(self.size)}")
        object.__setattr__(self, "size", tuple(int(s) for s in self.size))
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0 (0: torch's setting), got {self.threads}")

    @property
    def cpu_threads(self) -> int:
        return self.threads or torch.get_num_threads()

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.batch, self.in_channels, *self.size)

    def entry_key(self, candidate_key: str) -> str:
        """What one cached measurement is of (the device is the cache file)."""
        return (f"{candidate_key}|{self.precision}|b{self.batch}|{self.size[0]}x{self.size[1]}"
                f"|c{self.in_channels}k{self.num_classes}")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown-cpu"


def device_info(spec: LatencySpec) -> dict[str, Any]:
    """What makes timings comparable: CPU model, its instruction set as torch uses it, threads,
    torch (and ONNX Runtime for int8; GPU and CUDA for cuda) versions."""
    info: dict[str, Any] = {"cpu": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                            "threads": spec.cpu_threads, "torch": torch.__version__, "device": spec.device}
    if spec.device == "cuda":
        info["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "unavailable"
        info["cuda"] = torch.version.cuda
    if spec.precision == "int8":
        try:
            import onnxruntime

            info["onnxruntime"] = onnxruntime.__version__
        except ImportError:
            info["onnxruntime"] = None
    return info


def device_key(info: dict[str, Any]) -> str:
    return "|".join(f"{k}={info[k]}" for k in sorted(info))


def default_cache_dir() -> Path:
    root = os.environ.get("UNETKIT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "unetkit")
    return Path(root) / "latency"


# ---- timing -------------------------------------------------------------------------------------
def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_runs(run: Callable[[], Any], repeats: int, warmup: int, device: str = "cpu",
              cap_s: float | None = None, clock: Callable[[], float] = time.perf_counter) -> list[float]:
    """Seconds of each of `repeats` calls after `warmup` calls. A call slower than `cap_s` ends the
    timing early (a candidate far over the budget needs no median to be rejected)."""
    for _ in range(warmup):
        run()
    times: list[float] = []
    for _ in range(repeats):
        _sync(device)
        t0 = clock()
        run()
        _sync(device)
        times.append(clock() - t0)
        if cap_s is not None and times[-1] > cap_s:
            break
    return times


def deployed_runner(model: nn.Module, spec: LatencySpec, workdir: str | None = None) -> Callable[[], Any]:
    """A no-argument callable running `model` as deployed for `spec` on one fixed random batch."""
    from unetkit.export.optimize import optimize_for_inference

    torch.manual_seed(0)
    x = torch.randn(spec.input_shape)
    if spec.precision == "int8":
        from unetkit.export.onnx import OnnxPredictor, export_onnx
        from unetkit.export.quantize import quantize_onnx_int8

        work = workdir or tempfile.mkdtemp(prefix="unetkit-latency-")
        fp32, q = os.path.join(work, "fp32.onnx"), os.path.join(work, "int8.onnx")
        export_onnx(model, fp32, (1, *spec.input_shape[1:]), dynamic_spatial=True, check=False)
        quantize_onnx_int8(fp32, [torch.randn(1, *spec.input_shape[1:]) for _ in range(2)], q)
        pred = OnnxPredictor(q, threads=spec.cpu_threads)
        xn = x.numpy()
        return lambda: pred(xn)
    dev = torch.device(spec.device)
    fast = optimize_for_inference(model.to(dev), compile=False,
                                  precision="auto" if spec.precision == "amp" else "fp32", device=dev)
    xd = x.to(dev)
    return lambda: fast(xd)


def measure_candidate(candidate: Any, spec: LatencySpec, cap_s: float | None = None) -> dict[str, Any]:
    """Build `candidate` (random weights), deploy it as `spec` says and time it: {"seconds": median,
    "times": [...], "capped": bool}."""
    torch.manual_seed(0)
    model = candidate.build(spec.in_channels, spec.num_classes).eval()
    before = torch.get_num_threads()
    torch.set_num_threads(spec.cpu_threads)
    try:
        with tempfile.TemporaryDirectory(prefix="unetkit-latency-") as work:
            run = deployed_runner(model, spec, work)
            times = time_runs(run, spec.repeats, spec.warmup, spec.device, cap_s)
    finally:
        torch.set_num_threads(before)
    return {"seconds": statistics.median(times), "min_seconds": min(times), "times": [round(t, 6) for t in times],
            "capped": len(times) < spec.repeats}


# ---- the cache ----------------------------------------------------------------------------------
class LatencyCache:
    """Measurements of one device in one JSON file, read once and rewritten atomically after
    every new measurement: {"version", "key", "device": info, "entries": {key: whole-network
    record}, "ops": {key: per-operation record}}. The file name carries a hash of the device
    fingerprint, so another CPU, thread count or library version gets a new, empty table."""

    def __init__(self, path: str | Path, info: dict[str, Any]) -> None:
        self.path = Path(path)
        self.info = info
        self.entries: dict[str, dict[str, Any]] = {}
        self.ops: dict[str, dict[str, Any]] = {}
        self._announced = False
        if self.path.is_file():
            from unetkit.errors import DataError

            try:
                data = json.loads(self.path.read_text())
                self.entries = dict(data["entries"])
                self.ops = dict(data.get("ops", {}))
            except (OSError, ValueError, KeyError, TypeError) as err:
                raise DataError(f"{self.path}: unreadable latency cache ({err}); delete it to measure again") from None
            if data.get("version", 1) > CACHE_VERSION:
                raise DataError(f"{self.path}: latency cache version {data.get('version')} is newer than this "
                                f"unetkit reads ({CACHE_VERSION}); delete it to measure again")
            if data.get("key") not in (None, device_key(info)):
                raise DataError(f"{self.path}: latency cache of another device ({data.get('key')})")

    @classmethod
    def for_device(cls, spec: LatencySpec, cache_dir: str | Path | None = None) -> "LatencyCache":
        info = device_info(spec)
        key = device_key(info)
        slug = re.sub(r"[^a-z0-9]+", "-", f"{spec.device}-{info['cpu']}".lower()).strip("-")[:48]
        name = f"{slug}-{hashlib.sha1(key.encode()).hexdigest()[:10]}.json"
        directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        return cls(directory / name, info)

    def get(self, candidate_key: str, spec: LatencySpec) -> dict[str, Any] | None:
        return self.entries.get(spec.entry_key(candidate_key))

    def put(self, candidate_key: str, spec: LatencySpec, record: dict[str, Any]) -> None:
        self.entries[spec.entry_key(candidate_key)] = record
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {"version": CACHE_VERSION, "key": device_key(self.info), "device": self.info,
                "entries": self.entries, "ops": self.ops}
        with atomic_path(self.path, overwrite=True) as tmp:
            Path(tmp).write_text(json.dumps(data, indent=1, sort_keys=True))

    def measure(self, candidate: Any, spec: LatencySpec, cap_s: float | None = None,
                measure: Callable[..., dict[str, Any]] = measure_candidate, fresh: bool = False) -> dict[str, Any]:
        """The cached record of `candidate` under `spec`, measured (and stored) when missing.
        A record cut short by `cap_s` is measured again when a later cap is looser."""
        record = None if fresh else self.get(candidate.key, spec)
        if record is not None and not (record.get("capped") and (cap_s is None or record["seconds"] <= cap_s)):
            return {**record, "cached": True}
        record = dict(measure(candidate, spec, cap_s))
        record["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        self.put(candidate.key, spec, record)
        return {**record, "cached": False}



    # ---- the per-operation table --------------------------------------------------------------
    def op_seconds(self, ops: Sequence["Op"], spec: LatencySpec, timer: Callable[..., float] | None = None,
                   rate_timer: Callable[..., float] | None = None,
                   log: Callable[[str], None] = lambda s: None) -> list[float]:
        """The table latency of each of `ops` (a trace of one network) on this device: timed
        operations (convolutions) are looked up by signature and timed alone when missing, each
        distinct signature once; the others are their bytes moved times their class's measured
        seconds per byte (one measurement per class and input). New entries are saved once."""
        timer = timer or time_op
        rate_timer = rate_timer or time_rate
        prec = op_precision(spec)
        missing: dict[str, Op] = {}
        for op in ops:
            key = f"{prec}|{op.sig}" if op.timed else _rate_key(op.cls, spec)
            if key not in self.ops and key not in missing:
                missing[key] = op
        if missing:
            n_timed = sum(op.timed for op in missing.values())
            if n_timed and not self._announced:
                self._announced = True
                log(f"latency table: timing each convolution new to this device's table alone ({prec}, once; "
                    f"{len(self.ops)} entries so far) ...")
            before = torch.get_num_threads()
            torch.set_num_threads(spec.cpu_threads)
            try:
                for key, op in missing.items():
                    if not op.timed:
                        self.ops[key] = {"s_per_mb": rate_timer(op.cls, spec), "how": "rate"}
                        continue
                    try:
                        self.ops[key] = {"seconds": timer(op, spec), "how": "timed"}
                    except (RuntimeError, NotImplementedError, TypeError, ValueError) as err:
                        # cannot run alone: modelled by its bytes moved like an elementwise operation
                        self.ops[key] = {"seconds": None, "how": f"bytes ({type(err).__name__}: {str(err)[:120]})"}
            finally:
                torch.set_num_threads(before)
            self.save()
        out = []
        for op in ops:
            rec = self.ops[f"{prec}|{op.sig}"] if op.timed else None
            if rec is not None and rec.get("seconds") is not None:
                out.append(float(rec["seconds"]))
                continue
            rate_key = _rate_key(op.cls if not op.timed else "eltwise", spec)
            if rate_key not in self.ops:
                self.ops[rate_key] = {"s_per_mb": rate_timer("eltwise", spec), "how": "rate"}
                self.save()
            out.append(op.mbytes * float(self.ops[rate_key]["s_per_mb"]))
        return out


# ---- the trace: a network's operations at their input shapes ------------------------------------
_SKIP_OPS = frozenset((
    "detach", "view", "_unsafe_view", "t", "permute", "expand", "as_strided", "slice", "select", "unsqueeze",
    "squeeze", "alias", "clone", "empty", "zeros", "ones", "fill_", "new_empty", "copy_", "lift_fresh",
    "contiguous", "_to_copy", "empty_like", "zeros_like", "to", "empty_strided", "new_zeros"))
CONV_OPS = frozenset(("convolution", "_convolution", "conv2d", "conv3d", "conv_transpose2d", "conv_transpose3d"))
RATE_CLASSES = ("eltwise", "cat", "pool", "nearest", "linear")


@dataclass(frozen=True)
class TensorSpec:
    shape: tuple
    dtype: str


@dataclass
class Op:
    """One operation of a traced forward pass: `sig` identifies it with its exact input shapes and
    arguments; `timed` ones (convolutions) are timed alone, the others are modelled by `mbytes`
    (megabytes read + written) and their class `cls`."""

    name: str
    sig: str
    timed: bool
    cls: str
    mbytes: float
    flops: float = 0.0
    depthwise: bool = False
    func: Any = None  # the aten overload, and its arguments with tensors as TensorSpec (to replay)
    args: tuple = ()


def _desc(value: Any) -> str:
    if isinstance(value, TensorSpec):
        return f"{value.dtype}[{','.join(str(d) for d in value.shape)}]"
    if isinstance(value, (list, tuple)):
        return "(" + ",".join(_desc(v) for v in value) + ")"
    return repr(value)


def _rate_class(name: str) -> str:
    if "upsample_nearest" in name:
        return "nearest"
    if "upsample" in name or "interpolate" in name or "grid_sampler" in name:
        return "linear"
    if "pool" in name:
        return "pool"
    if name in ("cat", "stack"):
        return "cat"
    return "eltwise"


def _rate_key(cls: str, spec: LatencySpec) -> str:
    return f"{op_precision(spec)}|rate|{cls}|b{spec.batch}|{spec.size[0]}x{spec.size[1]}"


def op_precision(spec: LatencySpec) -> str:
    """The precision operations are timed in: int8 networks are predicted from the fp32 table
    (an ONNX Runtime int8 graph has no per-operation equivalent in torch)."""
    return "fp32" if spec.precision == "int8" else spec.precision


class _Tracer(TorchDispatchMode):
    """Records every aten operation of a forward pass on meta tensors (no compute)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[Op] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        from torch.utils._pytree import tree_flatten, tree_map

        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = str(func.overloadpacket.__name__)
        if name in _SKIP_OPS or "batch_norm" in name:  # BatchNorm: folded into the convolutions when deployed
            return out
        to_spec = lambda v: TensorSpec(tuple(v.shape), str(v.dtype).replace("torch.", "")) \
            if isinstance(v, torch.Tensor) else v  # noqa: E731
        spec_args = tree_map(to_spec, tuple(args))
        spec_kwargs = tree_map(to_spec, dict(kwargs))
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        written = sum(float(t.numel()) * 4 for t in outs)
        if name in CONV_OPS:
            x, w = args[0], args[1]
            transposed = bool(args[6]) if name in ("convolution", "_convolution") and len(args) > 6 else \
                name.startswith("conv_transpose")
            groups = int(args[8]) if name in ("convolution", "_convolution") and len(args) > 8 else 1
            k = math.prod(w.shape[2:])
            if transposed:  # weight (in, out/groups, *k): every input pixel scatters out/groups * k MACs
                flops = 2.0 * x.numel() * w.shape[1] * k
            else:  # weight (out, in/groups, *k)
                flops = 2.0 * outs[0].numel() * w.shape[1] * k
            read = float(x.numel()) * 4
            cls, timed = "conv", True
        else:
            flops, groups = 0.0, 1
            read = sum(float(t.numel()) * 4 for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor))
            cls, timed = _rate_class(name), False
        sig = f"{func}{_desc(spec_args)}" + (_desc(tuple(sorted(spec_kwargs.items()))) if spec_kwargs else "")
        self.ops.append(Op(name, sig, timed, cls, (read + written) / 2**20, flops, groups > 1, func,
                           (spec_args, spec_kwargs)))
        return out


def trace_ops(model: nn.Module, input_shape: Sequence[int]) -> list[Op]:
    """The operations of `model`'s eval forward pass on an input of `input_shape`, at their
    actual shapes, from a meta-device pass (no compute, no memory). BatchNorm is left out (the
    deployment folds it) and so are views and copies."""
    import copy

    meta = copy.deepcopy(model).to("meta").eval()
    tracer = _Tracer()
    with torch.no_grad(), tracer:
        meta(torch.empty(tuple(input_shape), device="meta"))
    return tracer.ops


def candidate_ops(candidate: Any, spec: LatencySpec) -> list[Op]:
    with torch.device("meta"):
        model = candidate.build(spec.in_channels, spec.num_classes)
    return trace_ops(model, spec.input_shape)


# ---- timing one operation alone -----------------------------------------------------------------
def _op_device_dtype(spec: LatencySpec) -> tuple[torch.device, torch.dtype]:
    if spec.device == "cuda" and spec.precision == "amp":
        from unetkit.export.optimize import _autocast_dtype

        return torch.device("cuda"), _autocast_dtype("auto", torch.device("cuda")) or torch.float32
    return torch.device(spec.device), torch.float32


def _materialize(value: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """Random tensors for TensorSpecs: floating ones in the deployment's dtype and, 4D / 5D,
    channels-last as `optimize_for_inference` runs them."""
    from torch.utils._pytree import tree_map

    def make(v: Any) -> Any:
        if not isinstance(v, TensorSpec):
            return v
        t_dtype = getattr(torch, v.dtype)
        if not t_dtype.is_floating_point:
            return torch.zeros(v.shape, dtype=t_dtype, device=device)
        t = torch.randn(v.shape, dtype=dtype, device=device)
        fmt = {4: torch.channels_last, 5: torch.channels_last_3d}.get(t.dim())
        return t.contiguous(memory_format=fmt) if fmt is not None else t

    return tree_map(make, value, is_leaf=lambda v: isinstance(v, TensorSpec))


def _time_call(run: Callable[[], Any], spec: LatencySpec, clock: Callable[[], float] = time.perf_counter,
               min_s: float = 2e-3, max_inner: int = 50) -> float:
    """Seconds of one call of `run`: one warm-up call, then `min(repeats, 3)` (a call over 20 ms: 1)
    timings of enough back-to-back calls to last about `min_s` (short operations are below timer
    noise); the fastest timing counts (other processes only ever add time; the fit's `a` calibrates the table to the
    whole networks' medians)."""
    device = spec.device
    _sync(device)
    t0 = clock()
    run()
    _sync(device)
    first = clock() - t0
    inner = max(1, min(max_inner, int(min_s / max(first, 1e-7))))
    repeats = max(1, min(spec.repeats, 3 if first < 10 * min_s else 1))  # a long operation: one timing is enough
    times = time_runs(lambda: [run() for _ in range(inner)], repeats, 0, device, clock=clock)
    return min(times) / inner


def time_op(op: Op, spec: LatencySpec) -> float:
    """Seconds of `op` run alone at its traced shapes on `spec`'s device (inference mode,
    channels-last, the deployment's dtype and threads)."""
    device, dtype = _op_device_dtype(spec)
    torch.manual_seed(0)
    args, kwargs = _materialize(op.args, device, dtype)
    with torch.inference_mode():
        return _time_call(lambda: op.func(*args, **kwargs), spec)


def time_rate(cls: str, spec: LatencySpec, channels: int = 16) -> float:
    """Seconds per megabyte moved (read + written) by a representative operation of `cls`
    (eltwise: add; cat; pool: 2x2 max-pool; nearest / linear: 2x up-sampling) on a tensor of
    `channels` x half the input size."""
    import torch.nn.functional as F

    device, dtype = _op_device_dtype(spec)
    h, w = max(1, spec.size[0] // 2), max(1, spec.size[1] // 2)
    torch.manual_seed(0)
    x = torch.randn(spec.batch, channels, h, w, device=device, dtype=dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randn_like(x)
    runs = {"eltwise": (lambda: torch.add(x, y), 3), "cat": (lambda: torch.cat([x, y], 1), 4),
            "pool": (lambda: F.max_pool2d(x, 2), 1.25),
            "nearest": (lambda: F.interpolate(x, scale_factor=2, mode="nearest"), 5),
            "linear": (lambda: F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False), 5)}
    run, tensors = runs[cls if cls in runs else "eltwise"]
    with torch.inference_mode():
        seconds = _time_call(run, spec)
    return seconds / (tensors * x.numel() * 4 / 2**20)


# ---- features and the predictor -----------------------------------------------------------------
def op_features(ops: Sequence[Op], seconds: Sequence[float] | None = None) -> dict[str, float]:
    """The predictor's features of a traced network: the sum of its operations' table latencies
    (`op_sum_s`, when `seconds` is given), its operation count, and its convolution GFLOPs."""
    feats = {"const": 1.0, "ops": float(len(ops)),
             "dense_gflop": sum(op.flops for op in ops if not op.depthwise) / 1e9,
             "depthwise_gflop": sum(op.flops for op in ops if op.depthwise) / 1e9}
    if seconds is not None:
        feats["conv_s"] = float(sum(s for op, s in zip(ops, seconds) if op.timed))
        feats["other_s"] = float(sum(s for op, s in zip(ops, seconds) if not op.timed))
        feats["op_sum_s"] = feats["conv_s"] + feats["other_s"]
    return feats


def candidate_features(candidate: Any, spec: LatencySpec, cache: LatencyCache | None = None,
                       log: Callable[[str], None] = lambda s: None) -> dict[str, float]:
    """Features of `candidate` under `spec`; with `cache`, the per-operation table latencies too
    (operations missing from the table are timed first)."""
    ops = candidate_ops(candidate, spec)
    return op_features(ops, cache.op_seconds(ops, spec, log=log) if cache is not None else None)


@dataclass
class LatencyPredictor:
    """seconds = a1 * conv_s + a2 * other_s + b * ops + c: the per-operation table's sums (timed
    convolutions; operations modelled by bytes, whose rate is the cruder), a cost per operation
    (dispatch, Python, caches between them) and a constant, coefficients >= 0, fitted to minimise
    relative error; while there are fewer than two measurements per coefficient, a * op_sum_s + c."""

    coef: dict[str, float]

    @classmethod
    def fit(cls, features: Sequence[dict[str, float]], seconds: Sequence[float]) -> "LatencyPredictor":
        from scipy.optimize import nnls

        if len(features) < 2:
            raise ValueError(f"fitting the latency predictor needs at least 2 measurements, got {len(features)}")
        used = FEATURES if len(features) >= 2 * len(FEATURES) else FEW_FEATURES
        a = np.array([[f[k] if k in used else 0.0 for k in COEFS] for f in features], dtype=np.float64)
        y = np.asarray(seconds, dtype=np.float64)
        scale = a.max(axis=0)
        scale[scale == 0] = 1.0
        w = 1.0 / y[:, None]  # relative error: every row divided by its measured time
        sol, _ = nnls((a / scale) * w, np.ones_like(y), maxiter=2000)
        return cls({k: float(v / s) for k, v, s in zip(COEFS, sol, scale)})

    def predict(self, features: dict[str, float]) -> float:
        return float(sum(c * features[k] for k, c in self.coef.items() if c))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def held_out_errors(features: Sequence[dict[str, float]], seconds: Sequence[float], folds: int = 0,
                    seed: int = 0) -> list[dict[str, Any]]:
    """The error of the predictor on candidates held out of its fit: the candidates are shuffled
    (seeded) into `folds` groups (0 or >= n: leave-one-out), and every group is predicted by a
    predictor fitted on the other groups only. One row per predicted candidate: index,
    measured_s, predicted_s, error = |predicted - measured| / measured."""
    n = len(features)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    k = n if folds <= 0 or folds >= n else folds
    rows = []
    for g in range(k):
        held = order[g::k]
        rest = [j for j in range(n) if j not in held]
        if len(rest) < 2:
            continue
        predictor = LatencyPredictor.fit([features[j] for j in rest], [seconds[j] for j in rest])
        for i in held:
            pred = predictor.predict(features[i])
            rows.append({"index": i, "measured_s": float(seconds[i]), "predicted_s": pred,
                         "error": abs(pred - seconds[i]) / seconds[i]})
    return sorted(rows, key=lambda r: r["index"])


def error_stats(errors: Sequence[float]) -> dict[str, Any]:
    """n, median, 90th percentile and max of relative errors."""
    if not errors:
        return {"n": 0, "median": None, "p90": None, "max": None}
    ordered = sorted(errors)
    return {"n": len(ordered), "median": statistics.median(ordered),
            "p90": ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))], "max": ordered[-1]}


def predictor_report(candidates: Sequence[Any], spec: LatencySpec, cache: LatencyCache, folds: int = 4,
                     seed: int = 0, fresh: bool = False,
                     log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Measure `candidates` (whole networks, through `cache`), build their per-operation features,
    and report the predictor's error on held-out candidates (`held_out_errors` with `folds`, seed).
    Returns {"rows": [{label, key, measured_s, predicted_s, error}], "stats", "predictor", "folds"}."""
    feats, secs, labels = [], [], []
    for i, cand in enumerate(candidates):
        feats.append(candidate_features(cand, spec, cache, log=log))
        rec = cache.measure(cand, spec, fresh=fresh)
        secs.append(rec["seconds"])
        labels.append(cand.label())
        log(f"  [{i + 1}/{len(candidates)}] {labels[-1]}: {rec['seconds'] * 1000:.2f} ms"
            f"{' (cached)' if rec.get('cached') else ''}, table sum {feats[-1]['op_sum_s'] * 1000:.2f} ms")
    rows = held_out_errors(feats, secs, folds, seed)
    for r in rows:
        r.update(label=labels[r["index"]], key=candidates[r["index"]].key, op_sum_s=feats[r["index"]]["op_sum_s"])
    return {"rows": rows, "stats": error_stats([r["error"] for r in rows]),
            "predictor": LatencyPredictor.fit(feats, secs).to_dict(), "folds": folds if 0 < folds < len(rows) else
            "leave-one-out", "seed": seed, "op_precision": op_precision(spec)}
