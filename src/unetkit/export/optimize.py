"""Fast inference (and training) without changing results.

    fast = optimize_for_inference(model, example)      # fold BN, channels-last, inference_mode,
    logits = fast(images)                                # torch.compile when it helps (CPU + CUDA)

- `fold_batchnorm(model)`: a copy whose conv (or transposed conv) followed by a BatchNorm in the
  same `nn.Sequential` carries the BN's affine map in its weights and bias; the BN becomes an
  Identity. Same outputs in eval mode (up to float rounding).
- `to_channels_last(model)`: NHWC / NDHWC weights, which oneDNN (CPU) and cuDNN (tensor cores)
  run faster than the default layout.
- `optimize_for_inference(...)` -> `InferenceModel`: the above + `torch.inference_mode` +
  `torch.compile` (inductor with weight freezing) where a probe finds it equal and faster (CUDA;
  3D models on the CPU, decision cached), with an eager fallback; on CUDA mixed precision
  (fp16/bf16 autocast) and channels-last by default.
- `prepare_for_training(model)`: channels-last (+ optional compile) for the training step.

Measured figures for the classic U-Net are in BENCHMARKS.md at the repository root.
"""
from __future__ import annotations

import contextlib
import copy
import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_TS = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_BNS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
PRECISIONS = ("auto", "fp32", "fp16", "bf16")


# ---- batch-norm folding -------------------------------------------------------------------------
def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of `model` in eval mode with every conv -> BatchNorm pair folded into the conv.

    A pair is a conv (or transposed conv) immediately followed by a BatchNorm with
    `track_running_stats` inside one `nn.Sequential` (the way unetkit's `ConvNormAct` and most
    hand-written models build them). The conv gains a bias if it had none; the BN is replaced by
    `nn.Identity`, so module names and the state-dict layout of everything else are unchanged.
    The original model is untouched. Returns the copy (attribute `folded_batchnorms` = count).
    """
    folded = copy.deepcopy(model).eval()
    count = 0
    for module in folded.modules():
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = module._modules[a], module._modules[b]
            if not (isinstance(conv, _CONVS + _CONV_TS) and isinstance(bn, _BNS)):
                continue
            if bn.running_mean is None or bn.running_var is None:  # batch statistics at eval: cannot fold
                continue
            if bn.num_features != conv.out_channels:
                continue
            module._modules[a] = fuse_conv_bn_eval(conv, bn, transpose=isinstance(conv, _CONV_TS))
            module._modules[b] = nn.Identity()
            count += 1
    folded.folded_batchnorms = count
    return folded


def count_batchnorms(model: nn.Module) -> int:
    return sum(isinstance(m, _BNS) for m in model.modules())


# ---- memory layout ------------------------------------------------------------------------------
def spatial_dims_of(model: nn.Module, default: int = 2) -> int:
    """The model's `spatial_dims` attribute, or the dimensionality of its first conv weight."""
    dims = getattr(model, "spatial_dims", None)
    if dims is not None:
        return int(dims)
    for m in model.modules():
        if isinstance(m, _CONVS + _CONV_TS):
            return m.weight.dim() - 2
    return default


def memory_format_for(spatial_dims: int) -> torch.memory_format:
    """channels_last for 2D, channels_last_3d for 3D, contiguous otherwise."""
    return {2: torch.channels_last, 3: torch.channels_last_3d}.get(spatial_dims, torch.contiguous_format)


def to_channels_last(model: nn.Module) -> nn.Module:
    """Convert `model`'s 4D (2D models) or 5D (3D models) weights to channels-last, in place."""
    return model.to(memory_format=memory_format_for(spatial_dims_of(model)))


def channels_last_input(x: torch.Tensor) -> torch.Tensor:
    fmt = {4: torch.channels_last, 5: torch.channels_last_3d}.get(x.dim())
    return x.contiguous(memory_format=fmt) if fmt is not None else x


# ---- layout probe -------------------------------------------------------------------------------
_LAYOUT_CACHE: dict[str, bool] = {}


def _cpu_id() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def _probe_cache_file() -> Path:
    root = os.environ.get("UNETKIT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "unetkit")
    return Path(root) / "layout_probe.json"


def _layout_key(model: nn.Module, shape: Sequence[int], train: bool) -> str:
    import hashlib
    import json

    record = {"arch": getattr(model, "unetkit_arch", type(model).__name__),
              "config": getattr(model, "unetkit_config", None),
              "params": [list(p.shape) for p in model.parameters()][:64]}
    digest = hashlib.sha1(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return (f"{_cpu_id()}|{torch.backends.cpu.get_cpu_capability()}|threads={torch.get_num_threads()}|"
            f"torch={torch.__version__}|{digest}|{tuple(int(s) for s in shape)}|{'train' if train else 'infer'}")


def _forward_gflops(model: nn.Module, shape: Sequence[int]) -> float | None:
    """Forward GFLOPs of `model` on a batch of `shape` (None when the meta-device count fails)."""
    from unetkit.models.summary import count_flops

    try:
        with torch.device("meta"):
            meta = copy.deepcopy(model).to("meta")
        return count_flops(meta, (1, *shape[1:])) * shape[0] / 1e9
    except Exception:  # no meta kernel for some op: measure
        return None


PROBE_NOISE = 0.25  # a probe whose repeats of one variant differ by more (max / min - 1) is not cached on disk


def _cached_probe(key: str, measure: Callable[[], tuple[bool, bool]], cache: bool) -> bool:
    """A probe's decision: from memory, else `$UNETKIT_CACHE/layout_probe.json`, else `measure()`,
    which returns (decision, steady). A steady decision is stored in both; one measured while the
    timings swung (another job on the cores) is used by this process only, and measured again by
    the next (a read-only home keeps every decision in memory only)."""
    if cache:
        known = _cached_decision(key)
        if known is not None:
            return known
    decision, steady = measure()
    _store_decision(key, bool(decision), persist=cache and steady)
    return bool(decision)


def _faster(model: nn.Module, shape: Sequence[int], train: bool, candidate: dict[str, Any], repeats: int,
            margin: float, baseline: dict[str, Any] | None = None) -> tuple[bool, bool]:
    """Whether `candidate` (channels_last: bool, autocast: dtype | None) runs a training step's
    forward + backward (`train`) or an inference forward of copies of `model` on random data of
    `shape` faster than `baseline` (default: fp32 in the default layout) by `margin`: each variant
    warmed up, then `repeats` interleaved rounds, medians. Returns (decision, steady): steady when
    no variant's repeats differ by more than PROBE_NOISE. The global RNG is restored."""
    import statistics

    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        gen = torch.Generator(device="cpu").manual_seed(0)
        x = torch.randn(tuple(shape), generator=gen).to(device)
        runs = []
        for variant in (baseline or {"channels_last": False, "autocast": None}, candidate):
            m = copy.deepcopy(model).to(device)
            m.train(train)
            cl, dtype = bool(variant.get("channels_last")), variant.get("autocast")
            if cl:
                to_channels_last(m)
            xi = channels_last_input(x) if cl else x

            def run(m: nn.Module = m, xi: torch.Tensor = xi, dtype: torch.dtype | None = dtype) -> None:
                with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                    if train:
                        out = m(xi)
                        loss = sum(o.float().square().mean()
                                   for o in (out if isinstance(out, (list, tuple)) else [out]))
                    else:
                        with torch.inference_mode():
                            m(xi)
                if train:
                    loss.backward()
                    m.zero_grad(set_to_none=True)

            run()  # warm-up (oneDNN primitive creation)
            runs.append((run, []))
        for _ in range(max(1, repeats)):
            for run, times in runs:
                times.append(_time_once(run))
    t_default, t_candidate = (statistics.median(times) for _, times in runs)
    steady = all(max(times) <= (1.0 + PROBE_NOISE) * min(times) for _, times in runs)
    return t_candidate < (1.0 - margin) * t_default, steady


def probe_channels_last(model: nn.Module, example: torch.Tensor | Sequence[int], train: bool = True,
                        repeats: int = 3, cache: bool = True, margin: float = 0.03,
                        min_gflops: float = 1.0) -> bool:
    """Whether channels-last (NHWC / NDHWC) runs `model` faster than the default layout on this
    machine, measured: a training step's forward + backward (`train=True`) or an inference
    forward on `example` (a batch or its shape), each layout warmed up, then `repeats`
    interleaved rounds, medians; channels-last must win by `margin`. The model is not touched
    (copies are timed) and the global RNG is restored. Decisions are cached per CPU, threads,
    torch version, model and input shape, in memory and in `$UNETKIT_CACHE/layout_probe.json`
    (default ~/.cache/unetkit), so the probe runs once per machine and model. Below `min_gflops`
    forward GFLOPs on `example` there is nothing worth measuring: the default measured on the
    CPUs this project was timed on is returned (2D channels-last, 3D default layout).
    """
    shape = tuple(example.shape) if isinstance(example, torch.Tensor) else tuple(example)
    if len(shape) not in (4, 5):
        return False
    if min_gflops > 0 and (_forward_gflops(model, shape) or min_gflops) < min_gflops:
        return len(shape) == 4
    return _cached_probe(_layout_key(model, shape, train),
                         lambda: _faster(model, shape, train, {"channels_last": True}, repeats, margin), cache)


def cpu_bf16_supported() -> bool:
    """Whether this CPU runs oneDNN bf16 convolutions (AVX-512 BF16 / AMX, or oneDNN's AVX-512
    emulation); on AVX2-only CPUs bf16 is emulated slowly and never probed."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def probe_cpu_autocast(model: nn.Module, example: torch.Tensor | Sequence[int], train: bool = True,
                       channels_last: bool = False, repeats: int = 3, cache: bool = True, margin: float = 0.2,
                       min_gflops: float = 1.0) -> bool:
    """Whether bf16 autocast (mixed precision: bf16 convolutions and matmuls, fp32 weights, norms,
    losses and optimiser) runs `model` on the CPU at least 1 / (1 - `margin`) times as fast as fp32
    (1.25x by default), measured as `probe_channels_last` measures a layout (same cache, same
    rules), in the layout the model will run in. CPUs with native bf16 (AMX, AVX-512 BF16) run it
    2-2.5x faster (BENCHMARKS.md); on others it is slower or not supported and stays off. Models
    under `min_gflops` forward GFLOPs on `example` stay fp32 without measuring."""
    shape = tuple(example.shape) if isinstance(example, torch.Tensor) else tuple(example)
    if len(shape) not in (4, 5) or next(model.parameters()).device.type != "cpu" or not cpu_bf16_supported():
        return False
    if min_gflops > 0 and (_forward_gflops(model, shape) or min_gflops) < min_gflops:
        return False
    key = _layout_key(model, shape, train) + f"|bf16-autocast|cl={int(channels_last)}"
    candidate = {"channels_last": channels_last, "autocast": torch.bfloat16}
    baseline = {"channels_last": channels_last, "autocast": None}
    return _cached_probe(key, lambda: _faster(model, shape, train, candidate, repeats, margin, baseline), cache)


def _cached_decision(key: str) -> bool | None:
    """A probe's decision under `key`: from memory, else from the cache file, else None."""
    if key in _LAYOUT_CACHE:
        return _LAYOUT_CACHE[key]
    try:
        import json

        stored = json.loads(_probe_cache_file().read_text())
        if key in stored:
            _LAYOUT_CACHE[key] = bool(stored[key])
            return _LAYOUT_CACHE[key]
    except (OSError, ValueError):
        pass
    return None


def _store_decision(key: str, decision: bool, persist: bool = True) -> None:
    """Remember a probe's decision in memory and (atomically) in the cache file."""
    _LAYOUT_CACHE[key] = decision
    if not persist:
        return
    try:
        import json

        from unetkit.io.atomic import atomic_path

        path = _probe_cache_file()
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError):
            stored = {}
        stored[key] = decision
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(stored, indent=1, sort_keys=True))
    except OSError:  # read-only home: keep the in-memory decision
        pass


# ---- compile ------------------------------------------------------------------------------------
def compile_available() -> tuple[bool, str]:
    """Whether torch.compile can run here (a C++ compiler on CPU, triton on CUDA)."""
    if not hasattr(torch, "compile"):
        return False, "torch.compile is not available in this torch"
    try:
        from torch._inductor import cpp_builder  # noqa: F401
        import shutil

        if not torch.cuda.is_available() and shutil.which("g++") is None and shutil.which("clang++") is None:
            return False, "no C++ compiler (g++/clang++) for inductor's CPU backend"
    except Exception as err:  # pragma: no cover - very old or unusual builds
        return False, f"inductor unavailable ({err})"
    return True, ""


def _map_outputs(out: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    if isinstance(out, torch.Tensor):
        return fn(out)
    if isinstance(out, (list, tuple)):
        return type(out)(_map_outputs(o, fn) for o in out)
    return out


def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got '{precision}'")
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


class InferenceModel(nn.Module):
    """An inference-only wrapper: same call signature as the model (tensor or numpy in, float32
    tensor out on the model's device; lists for deep supervision), no gradients.

    Built by `optimize_for_inference`; `info` records what was applied (folded BNs, layout,
    compiled or why not, warm-up seconds, autocast dtype).
    """

    def __init__(self, model: nn.Module, channels_last: bool, autocast: torch.dtype | None,
                 info: dict[str, Any]) -> None:
        super().__init__()
        self.model = model
        self.channels_last = channels_last
        self.autocast = autocast
        self.info = info
        self._call: Callable = model
        self.compiled_shape: tuple[int, ...] | None = None  # the input shape the compiled call was built for
        for attr in ("spatial_dims", "num_classes", "size_divisor", "unetkit_arch", "unetkit_config",
                     "unetkit_meta"):
            if hasattr(model, attr):
                try:
                    setattr(self, attr, getattr(model, attr))
                except AttributeError:  # read-only property on the wrapper
                    pass

    @property
    def device(self) -> torch.device:
        p = next(self.model.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def train(self, mode: bool = True) -> "InferenceModel":
        if mode:
            raise RuntimeError("an InferenceModel is for inference only; train the original model")
        return super().train(False)

    def run_eager(self, x: torch.Tensor) -> Any:
        """The folded, channels-last model without compile (for comparisons)."""
        return self._run(self.model, x)

    def _run(self, fn: Callable, x: Any) -> Any:
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(np.ascontiguousarray(x))
        x = x.to(self.device, torch.float32)
        if self.channels_last:
            x = channels_last_input(x)
        with torch.inference_mode():
            if self.autocast is not None:
                with torch.autocast(self.device.type, dtype=self.autocast):
                    out = fn(x)
            else:
                out = fn(x)
        return _map_outputs(out, lambda t: t.float().contiguous())

    def forward(self, x: Any) -> Any:
        if self._call is self.model or self.compiled_shape is None:
            return self._run(self._call, x)
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(np.ascontiguousarray(x))
        per_sample, batch = tuple(self.compiled_shape[1:]), int(self.compiled_shape[0])
        if x.dim() != len(self.compiled_shape) or tuple(x.shape[1:]) != per_sample:
            return self._run(self.model, x)  # another shape: eager (no silent ~20 s recompile)
        if x.shape[0] == batch:
            return self._run(self._call, x)
        # the compiled shape's batch size: chunks, the last padded with copies of its last sample
        # (every op is per sample at inference, so the padding does not change the real outputs)
        outs = []
        for start in range(0, x.shape[0], batch):
            chunk = x[start:start + batch]
            n = chunk.shape[0]
            if n < batch:
                chunk = torch.cat([chunk, chunk[-1:].expand(batch - n, *chunk.shape[1:])])
            outs.append(_map_outputs(self._run(self._call, chunk), lambda t, n=n: t[:n]))
        return _cat_outputs(outs)


def optimize_for_inference(
    model: nn.Module,
    example: torch.Tensor | Sequence[int] | None = None,
    compile: bool | str = "auto",
    channels_last: bool | str = True,
    fold_bn: bool = True,
    precision: str = "auto",
    device: str | torch.device | None = None,
    verbose: bool = False,
) -> InferenceModel:
    """The fastest inference path that gives the same results (fp32 on CPU).

    Args:
        model: any model (not modified; a folded copy is used).
        example: an input batch, or its shape (N, C, *S), used to warm up and, for
            compile="auto", to check that the compiled model is correct and faster.
        compile: True (compile, fall back to eager with a warning if it fails), False, or
            "auto": compile and keep it only if it matches eager (1e-4, or 5e-2 under autocast)
            and is faster on `example` (interleaved timings, median). On CPU this probe runs
            for 3D models of >= 1 GFLOP on `example` (inductor fuses instance norm + activation
            and prepacks the conv weights); its decision is cached per machine, threads, torch,
            model and shape like `probe_channels_last`'s (a cached "eager" skips compiling). 2D
            CPU models stay eager: no gain over BN folding + channels-last was measured there,
            for ~20 s of warm-up. The model "auto" compiled runs compiled on `example`'s per-sample
            shape (other batch sizes in chunks of its batch, the last padded) and eager on others.
        channels_last: NHWC/NDHWC weights and inputs; "auto": on CUDA yes, on the CPU as
            `probe_channels_last` measures on `example` (cached per machine and model).
        fold_bn: fold conv -> BatchNorm pairs.
        precision: "auto" (fp32 on CPU; bf16 or fp16 autocast on CUDA), "fp32", "fp16", "bf16".
        device: where to run (default: the model's device).
    """
    if compile not in (True, False, "auto"):
        raise ValueError(f"compile must be True, False or 'auto', got {compile!r}")
    p = next(model.parameters(), None)
    device = torch.device(device) if device is not None else (p.device if p is not None else torch.device("cpu"))
    base = fold_batchnorm(model) if fold_bn else copy.deepcopy(model).eval()
    base = base.to(device)
    for param in base.parameters():
        param.requires_grad_(False)
    if channels_last == "auto":
        if example is None:
            raise ValueError("channels_last='auto' needs an example batch (or its shape) to probe")
        shape = tuple(example.shape) if isinstance(example, torch.Tensor) else tuple(example)
        channels_last = device.type == "cuda" or probe_channels_last(base, shape, train=False)
    if channels_last:
        to_channels_last(base)
    dtype = _autocast_dtype(precision, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed window sizes: pick the fastest conv algorithms once
    info: dict[str, Any] = {"folded_batchnorms": getattr(base, "folded_batchnorms", 0),
                            "channels_last": channels_last, "device": str(device),
                            "autocast": str(dtype).replace("torch.", "") if dtype else "fp32",
                            "compiled": False, "compile_note": "not requested"}
    wrapped = InferenceModel(base, channels_last, dtype, info)
    if example is not None and not isinstance(example, torch.Tensor):
        example = torch.randn(tuple(example))
    if compile is False:
        return wrapped
    probe_key = None
    if compile == "auto" and device.type != "cuda":
        why_not = _cpu_compile_unsuitable(base, example)
        if why_not:
            info["compile_note"] = f"auto: eager ({why_not})"
            return wrapped
        probe_key = _layout_key(base, tuple(example.shape), train=False) + f"|compile|{info['autocast']}"
        if _cached_decision(probe_key) is False:
            info["compile_note"] = "auto: eager (cached probe: compiled was not faster or differed here)"
            return wrapped
    ok, why = compile_available()
    if not ok:
        info["compile_note"] = why
        if compile is True:
            warnings.warn(f"torch.compile unavailable ({why}); running eager", stacklevel=2)
        return wrapped
    # what modules build lazily (int8 packed weights and scales) is built now, so the compiled
    # graph sees constants instead of breaking on their construction
    for module in base.modules():
        prepare = getattr(module, "prepare_for_compile", None)
        if callable(prepare):
            prepare()
    want = wrapped._run(base, example) if compile == "auto" and example is not None else None
    try:
        # freezing: weights become constants, so inductor folds them and prepacks for oneDNN/cuBLAS
        compiled = torch.compile(base, dynamic=False, options={"freezing": True})
        if example is not None:
            t0 = time.perf_counter()
            got = wrapped._run(compiled, example)
            info["compile_warmup_s"] = round(time.perf_counter() - t0, 2)
    except Exception as err:  # inductor / dynamo failures: fall back, never break inference
        info["compile_note"] = f"compile failed, eager fallback: {type(err).__name__}: {str(err)[:200]}"
        if compile is True:
            warnings.warn(info["compile_note"], stacklevel=2)
        if probe_key is not None:
            _store_decision(probe_key, False)
        return wrapped
    if compile == "auto" and example is not None:
        diffs = []
        _map_outputs(_zip_outputs(got, want), lambda d: diffs.append(d) or d)
        diff = max(diffs) if diffs else 0.0
        # int8 models: a 1e-7 change before a quantiser moves a value by a whole step, so compiled
        # and eager agree only to the quantisation noise, as under autocast (Dice is the check there)
        tol = 1e-4 if dtype is None and not getattr(base, "int8_layers", None) else 5e-2
        info["compile_max_abs_diff"] = float(diff)
        if diff > tol * max(1.0, _max_abs(want)):
            info["compile_note"] = f"compiled output differs from eager by {diff:.2e}: eager kept"
            if probe_key is not None:
                _store_decision(probe_key, False)
            return wrapped
        if probe_key is None or _cached_decision(probe_key) is None:  # CUDA: every time; CPU: once
            import statistics

            t_eager, t_comp = [], []
            for _ in range(2 if device.type == "cuda" else 3):  # interleaved: robust to other load
                t_eager.append(_time_once(lambda: wrapped._run(base, example)))
                t_comp.append(_time_once(lambda: wrapped._run(compiled, example)))
            te, tc = ((min(t_eager), min(t_comp)) if device.type == "cuda"
                      else (statistics.median(t_eager), statistics.median(t_comp)))
            info.update(eager_s=round(te, 4), compiled_s=round(tc, 4))
            faster = tc < (1.0 - CPU_COMPILE_MARGIN) * te if device.type == "cpu" else tc < te
            if probe_key is not None:
                _store_decision(probe_key, faster)
            if not faster:
                info["compile_note"] = "compiled not faster than eager on the example: eager kept"
                return wrapped
    wrapped._call = compiled
    if compile == "auto" and example is not None:  # decided for this shape: keep it to this shape
        wrapped.compiled_shape = tuple(int(v) for v in example.shape)
    info["compiled"] = True
    info["compile_note"] = "inductor, freezing=True" + (" (CPU probe)" if probe_key is not None else "")
    if verbose:
        print(f"optimize_for_inference: {info}")
    return wrapped


CPU_COMPILE_MIN_GFLOPS = 1.0  # below this on the example a CPU compile cannot repay its warm-up
CPU_COMPILE_MARGIN = 0.03  # on the CPU the compiled model must win by this (a 3% tie is timing noise)


def _cpu_compile_unsuitable(model: nn.Module, example: torch.Tensor | None) -> str | None:
    """Why compile="auto" does not probe compile for `model` on the CPU (None: it does)."""
    if example is None:
        return "no example to probe compile on"
    if spatial_dims_of(model) != 3:
        return "on CPU compile is probed for 3D models; 2D measured no faster than BN folding + channels-last"
    gflops = _forward_gflops(model, tuple(example.shape))
    if gflops is not None and gflops < CPU_COMPILE_MIN_GFLOPS:
        return f"{gflops:.2g} GFLOP on the example: too small to repay a compile"
    return None


def _cat_outputs(chunks: list[Any]) -> Any:
    first = chunks[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(chunks)
    if isinstance(first, (list, tuple)):
        return type(first)(_cat_outputs([c[i] for c in chunks]) for i in range(len(first)))
    return first


def _zip_outputs(a: Any, b: Any) -> Any:
    if isinstance(a, torch.Tensor):
        return (a - b).abs().max().float()
    return [_zip_outputs(x, y) for x, y in zip(a, b)]


def _max_abs(out: Any) -> float:
    vals: list[float] = []
    _map_outputs(out, lambda t: vals.append(float(t.abs().max())) or t)
    return max(vals) if vals else 0.0


def _time_once(fn: Callable[[], Any]) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0


# ---- CPU allocator ------------------------------------------------------------------------------
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc mallopt parameters
_GLIBC_DEFAULTS = {_M_TRIM_THRESHOLD: 128 * 1024, _M_MMAP_MAX: 65536}


def _libc():
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") else None
    except OSError:
        return None


def retain_cpu_memory(enable: bool = True) -> bool:
    """Keep freed CPU memory in the process (glibc: no mmap for large blocks, no trimming), so a
    training step reuses last step's activation buffers instead of faulting fresh zeroed pages
    from the kernel every step. `enable=False` restores glibc's defaults. Process-wide; returns
    False where unsupported (not Linux/glibc). Costs: the process keeps its peak memory.
    """
    libc = _libc()
    if libc is None:
        return False
    if enable:
        ok = libc.mallopt(_M_MMAP_MAX, 0) and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
    else:
        ok = all(libc.mallopt(k, v) for k, v in _GLIBC_DEFAULTS.items())
    return bool(ok)


@contextlib.contextmanager
def retained_cpu_memory(enable: bool = True):
    """`retain_cpu_memory()` for the duration of a block (a training loop), glibc's defaults after it,
    so the process gives its memory back once the block ends. `enable=False`: a no-op."""
    on = enable and retain_cpu_memory(True)
    try:
        yield on
    finally:
        if on:
            retain_cpu_memory(False)


# ---- training -----------------------------------------------------------------------------------
def prepare_for_training(model: nn.Module, channels_last: bool | str = True, compile: bool = False,
                         retain_memory: bool = False, example: torch.Tensor | Sequence[int] | None = None
                         ) -> nn.Module:
    """Channels-last weights (in place) and optionally `torch.compile`; returns the callable to
    train with (the model itself, or its compiled wrapper sharing the same parameters).

    `channels_last="auto"`: decided by `probe_channels_last` on `example` (a batch or its shape;
    required) on the CPU; on CUDA channels-last for 2D. Feed inputs through
    `channels_last_input(x)` (or leave them: convs convert on the fly). On CUDA also train under
    `torch.autocast` with a GradScaler for fp16 (the Trainer does this).
    `retain_memory`: call `retain_cpu_memory()` (CPU only; process-wide).
    The returned callable has `unetkit_layout` ('channels-last' or 'default layout').
    """
    if retain_memory and not torch.cuda.is_available():
        retain_cpu_memory(True)
    if channels_last == "auto":
        if example is None:
            raise ValueError("channels_last='auto' needs an example batch (or its shape) to probe")
        p = next(model.parameters(), None)
        on_cuda = p is not None and p.device.type == "cuda"
        channels_last = spatial_dims_of(model) == 2 if on_cuda else probe_channels_last(model, example, train=True)
    if channels_last:
        to_channels_last(model)
    layout = "channels-last" if channels_last else "default layout"
    call: Any = model
    if compile:
        ok, why = compile_available()
        if not ok:
            warnings.warn(f"torch.compile unavailable ({why}); training eager", stacklevel=2)
        else:
            call = torch.compile(model)
            layout += ", torch.compile"
    try:
        call.unetkit_layout = layout
    except AttributeError:  # pragma: no cover
        pass
    return call
