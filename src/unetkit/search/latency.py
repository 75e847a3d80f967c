"""Latency on the target device: measured, cached per device, and predicted by a cheap model.

    spec = LatencySpec(device="cpu", precision="fp32", batch=1, size=(512, 512))
    cache = LatencyCache.for_device(spec)            # $UNETKIT_CACHE_DIR or ~/.cache/unetkit, latency/<device>.json
    seconds = cache.measure(candidate, spec)         # measured once per device, then read back
    predictor = LatencyPredictor.fit(features, seconds)
    predictor.predict(layer_features(candidate.build(), spec.input_shape))

What is timed is the deployment path of each precision, on one fixed random batch:
- cpu / fp32: `optimize_for_inference` (BatchNorm folded, channels-last, inference mode; no compile);
- cpu / int8: the fp32 ONNX export quantised to static int8 (QDQ, per channel), run by ONNX Runtime
  with as many threads as torch uses;
- cuda / amp: `optimize_for_inference` with bf16/fp16 autocast on the GPU (synchronised timings).
Each measurement is the median of `repeats` runs after `warmup` runs.

The predictor is a non-negative linear model of per-operation features read from a meta-device
forward pass (no compute): dense convolution GFLOPs, depthwise/grouped convolution GFLOPs,
convolution input+output megabytes, the megabytes written by every other operation (activations,
resampling, concatenation, additions; BatchNorm left out, as deployment folds it), and the number
of operations (per-call overheads). It is fitted to minimise relative error, so small and large
models count alike; `leave_one_out_errors` reports its error on held-out measured candidates.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import platform
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
FEATURES = ("const", "dense_gflop", "depthwise_gflop", "conv_mb", "other_mb", "ops_100")
# with fewer than 2 measurements per feature, the fit uses only these (the others get 0)
FEW_FEATURES = ("const", "dense_gflop", "depthwise_gflop", "other_mb")


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
    """Measurements of one device in one JSON file ({"device": info, "entries": {key: record}}),
    read once and rewritten atomically after every new measurement."""

    def __init__(self, path: str | Path, info: dict[str, Any]) -> None:
        self.path = Path(path)
        self.info = info
        self.entries: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            from unetkit.errors import DataError

            try:
                data = json.loads(self.path.read_text())
                self.entries = dict(data["entries"])
            except (OSError, ValueError, KeyError, TypeError) as err:
                raise DataError(f"{self.path}: unreadable latency cache ({err}); delete it to measure again") from None
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
        data = {"key": device_key(self.info), "device": self.info, "entries": self.entries}
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


# ---- features and the predictor -----------------------------------------------------------------
class _OpCounter(TorchDispatchMode):
    """Counts, per aten operation, convolution FLOPs and bytes written (meta tensors only)."""

    def __init__(self) -> None:
        super().__init__()
        self.dense = self.depthwise = 0.0
        self.conv_bytes = self.other_bytes = 0.0
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = str(func.overloadpacket.__name__)
        if name in ("detach", "view", "_unsafe_view", "t", "permute", "expand", "as_strided", "slice", "select",
                    "unsqueeze", "squeeze", "alias", "clone", "empty", "zeros", "ones", "fill_", "new_empty",
                    "copy_", "lift_fresh", "contiguous", "_to_copy", "empty_like", "zeros_like", "to"):
            return out
        if "batch_norm" in name:  # folded into the convolutions when deployed
            return out
        outs = out if isinstance(out, (list, tuple)) else [out]
        written = sum(float(t.numel()) * 4 for t in outs if isinstance(t, torch.Tensor))
        self.ops += 1
        if name in ("convolution", "conv2d", "conv3d", "_convolution", "conv_transpose2d", "conv_transpose3d"):
            x, w = args[0], args[1]
            transposed = bool(args[6]) if name in ("convolution", "_convolution") and len(args) > 6 else \
                name.startswith("conv_transpose")
            groups = int(args[8]) if name in ("convolution", "_convolution") and len(args) > 8 else 1
            k = math.prod(w.shape[2:])
            if transposed:  # weight (in, out/groups, *k): every input pixel scatters out/groups * k MACs
                flops = 2.0 * x.numel() * w.shape[1] * k
            else:  # weight (out, in/groups, *k)
                flops = 2.0 * outs[0].numel() * w.shape[1] * k
            if groups > 1:
                self.depthwise += flops
            else:
                self.dense += flops
            self.conv_bytes += written + float(x.numel()) * 4
        else:
            self.other_bytes += written
        return out


def layer_features(model: nn.Module, input_shape: Sequence[int]) -> dict[str, float]:
    """The predictor's features of `model` on an input of `input_shape`, from a meta-device
    forward pass in eval mode (no compute, no memory)."""
    import copy

    meta = copy.deepcopy(model).to("meta").eval()
    counter = _OpCounter()
    with torch.no_grad(), counter:
        meta(torch.empty(tuple(input_shape), device="meta"))
    return {"const": 1.0, "dense_gflop": counter.dense / 1e9, "depthwise_gflop": counter.depthwise / 1e9,
            "conv_mb": counter.conv_bytes / 2**20, "other_mb": counter.other_bytes / 2**20,
            "ops_100": counter.ops / 100.0}


def candidate_features(candidate: Any, spec: LatencySpec) -> dict[str, float]:
    with torch.device("meta"):
        model = candidate.build(spec.in_channels, spec.num_classes)
    return layer_features(model, spec.input_shape)


@dataclass
class LatencyPredictor:
    """seconds = sum(coef[f] * features[f]), coefficients >= 0, fitted to relative error (on
    `FEW_FEATURES` only while there are fewer than two measurements per feature)."""

    coef: dict[str, float]

    @classmethod
    def fit(cls, features: Sequence[dict[str, float]], seconds: Sequence[float]) -> "LatencyPredictor":
        from scipy.optimize import nnls

        if len(features) < 2:
            raise ValueError(f"fitting the latency predictor needs at least 2 measurements, got {len(features)}")
        used = FEATURES if len(features) >= 2 * len(FEATURES) else FEW_FEATURES
        a = np.array([[f[k] if k in used else 0.0 for k in FEATURES] for f in features], dtype=np.float64)
        y = np.asarray(seconds, dtype=np.float64)
        scale = a.max(axis=0)
        scale[scale == 0] = 1.0
        w = 1.0 / y[:, None]  # relative error: every row divided by its measured time
        sol, _ = nnls((a / scale) * w, np.ones_like(y), maxiter=2000)
        return cls({k: float(v / s) for k, v, s in zip(FEATURES, sol, scale)})

    def predict(self, features: dict[str, float]) -> float:
        return float(sum(self.coef[k] * features[k] for k in FEATURES))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def leave_one_out_errors(features: Sequence[dict[str, float]], seconds: Sequence[float]) -> list[float]:
    """For each measured candidate, the relative error |predicted - measured| / measured of a
    predictor fitted on all the others (held out)."""
    errors = []
    for i in range(len(features)):
        rest_f = [f for j, f in enumerate(features) if j != i]
        rest_s = [s for j, s in enumerate(seconds) if j != i]
        if len(rest_f) < 2:
            continue
        pred = LatencyPredictor.fit(rest_f, rest_s).predict(features[i])
        errors.append(abs(pred - seconds[i]) / seconds[i])
    return errors
