"""Benchmark harness: inference and training throughput of a model under several backends,
measured side by side in one run (interleaved repeats, medians), with FLOPs, achieved GFLOP/s
as a fraction of this machine's measured fp32 matrix-multiply rate, peak memory, and the max
abs difference of every fast path from the eager reference.

    report = benchmark_model("unet", size=256, batch=4, repeats=5, backends=("eager", "optimized"))
    print(format_report(report))

Backends (inference): "eager" (the model as written: default layout, no fusion, no_grad - the
reference), "optimized" (`optimize_for_inference`: BN folding, channels-last, inference_mode,
torch.compile when it helps), "onnx" (ONNX Runtime fp32), "int8" (ONNX Runtime static int8).
Training: "eager" vs "channels-last" (+ "compiled" with `compile_train=True`).
"""
from __future__ import annotations

import copy
import os
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

INFER_BACKENDS = ("eager", "optimized", "onnx", "int8")


# ---- measurements -------------------------------------------------------------------------------
def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def matmul_gflops(n: int = 4096, repeats: int = 5, device: str | torch.device = "cpu") -> float:
    """Median fp32 GFLOP/s of an n x n matrix product (2 n**3 FLOPs) on `device`."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        _sync()
        t0 = time.perf_counter()
        torch.mm(a, b)
        _sync()
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9


def matmul_case(n: int = 4096, device: str | torch.device = "cpu") -> "Case":
    """The fp32 n x n matrix product as a benchmark case, so the reference rate is measured in
    the same interleaved rounds as the models (same background load)."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    return Case(f"fp32 matmul {n}x{n}", "matmul", lambda: torch.mm(a, b), 2 * n**3 / 1e9,
                "torch.mm, the reference rate for '% matmul'")


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):  # not Linux: no sampling
        return 0


class PeakMemory:
    """Peak memory above the level at entry: CUDA allocator peak on GPU, else resident set size
    sampled every `interval` s by a thread (CPU; Linux)."""

    def __init__(self, device: torch.device, interval: float = 0.002) -> None:
        self.cuda = device.type == "cuda"
        self.interval = interval
        self.peak = 0

    def __enter__(self) -> "PeakMemory":
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
            return self
        self._base = _rss_bytes()
        self._max = self._base
        self._stop = threading.Event()

        def sample() -> None:
            while not self._stop.is_set():
                self._max = max(self._max, _rss_bytes())
                time.sleep(self.interval)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self._base
            return
        self._stop.set()
        self._thread.join()
        self._max = max(self._max, _rss_bytes())
        self.peak = max(0, self._max - self._base)


@dataclass
class Case:
    """One row of a benchmark: a callable run once per repeat on a fixed batch."""

    name: str
    kind: str  # "infer" or "train"
    fn: Callable[[], Any]
    gflops_per_image: float  # forward GFLOPs of one image for this case's model
    note: str = ""
    max_abs_diff: float | None = None
    times: list[float] = field(default_factory=list)
    peak_bytes: int = 0
    warmed: bool = False  # already run once (no warm-up call needed)


def run_interleaved(cases: Sequence[Case], repeats: int, device: torch.device, warmup: int = 1) -> None:
    """Warm every case up, then time `repeats` rounds, each round running every case once (so
    load from other processes hits all cases alike); fills `times` and `peak_bytes`."""
    for case in cases:
        for _ in range(0 if case.warmed else warmup):
            case.fn()
    for _ in range(repeats):
        for case in cases:
            with PeakMemory(device) as mem:
                _sync()
                t0 = time.perf_counter()
                case.fn()
                _sync()
                dt = time.perf_counter() - t0
            case.times.append(dt)
            case.peak_bytes = max(case.peak_bytes, mem.peak)


def summarise(cases: Sequence[Case], batch: int, matmul: float, reference: dict[str, str]) -> list[dict]:
    """Rows with medians, images/s, GFLOP/s (training counted as 3x forward), fraction of the
    matmul rate (from the "matmul" case when there is one, else `matmul`), and the speed ratio
    against the kind's reference case."""
    medians = {c.name: statistics.median(c.times) for c in cases}
    for c in cases:
        if c.kind == "matmul":
            matmul = c.gflops_per_image / medians[c.name]
    rows = []
    for c in cases:
        med = medians[c.name]
        flops = c.gflops_per_image * (1 if c.kind == "matmul" else batch * (3 if c.kind == "train" else 1))
        ref = reference.get(c.kind)
        rows.append({
            "name": c.name, "kind": c.kind, "median_s": med, "min_s": min(c.times), "max_s": max(c.times),
            "repeats": len(c.times), "images_per_s": None if c.kind == "matmul" else batch / med,
            "gflops_per_image": c.gflops_per_image,
            "gflops_per_s": flops / med, "fraction_of_matmul": flops / med / matmul if matmul else None,
            "speedup_vs_reference": (medians[ref] / med) if ref in medians else None,
            "peak_mem_mb": c.peak_bytes / 2**20, "max_abs_diff": c.max_abs_diff, "note": c.note,
        })
    return rows


def max_abs_diff(a: Any, b: Any) -> float:
    if isinstance(a, (list, tuple)):
        return max(max_abs_diff(x, y) for x, y in zip(a, b))
    return float((a.detach().float().cpu() - b.detach().float().cpu()).abs().max())


# ---- building the cases -------------------------------------------------------------------------
def _forward_flops(model: nn.Module, shape: Sequence[int]) -> float:
    from unetkit.models.summary import count_flops

    try:
        meta = copy.deepcopy(model).to("meta")
        return count_flops(meta, (1, *shape[1:])) / 1e9
    except Exception:  # some ops have no meta kernel: count on a real one-image input
        return count_flops(copy.deepcopy(model).cpu(), (1, *shape[1:])) / 1e9


def _loss(out: Any, target: torch.Tensor) -> torch.Tensor:
    out = out[0] if isinstance(out, (list, tuple)) else out
    if out.shape[1] == 1:
        return F.binary_cross_entropy_with_logits(out, target.float().unsqueeze(1))
    return F.cross_entropy(out, target)


def _with_retained_memory(step: Callable[[], Any]) -> Callable[[], Any]:
    """Run `step` with freed memory retained (as the Trainer's loop on the CPU) and glibc's defaults
    restored afterwards, so the other cases in the same process run with the defaults."""
    from unetkit.export.optimize import retained_cpu_memory

    def wrapped() -> Any:
        with retained_cpu_memory():
            return step()

    return wrapped


def train_step_fn(model: nn.Module, call: Callable, x: torch.Tensor, target: torch.Tensor,
                  lr: float = 1e-4) -> Callable[[], torch.Tensor]:
    """A closure running one SGD (momentum) step on a fixed batch; returns the loss."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)

    def step() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = _loss(call(x), target)
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def inference_cases(
    model: nn.Module,
    x: torch.Tensor,
    backends: Iterable[str] = INFER_BACKENDS,
    compile: bool | str = "auto",
    calibration: Sequence[Any] | None = None,
    workdir: str | None = None,
    gflops: float | None = None,
    prefix: str = "",
    log: Callable[[str], None] = lambda s: None,
) -> list[Case]:
    """Cases for `model` on batch `x`; every fast path is checked against eager on `x`."""
    from unetkit.export.optimize import optimize_for_inference

    device = x.device
    model = model.eval().to(device)
    gflops = gflops if gflops is not None else _forward_flops(model, x.shape)
    with torch.no_grad():
        want = model(x)
    cases = []
    backends = list(backends)
    for backend in backends:
        name = f"{prefix}{backend}"
        if backend == "eager":
            def fn(model=model) -> Any:
                with torch.no_grad():
                    return model(x)
            cases.append(Case(name, "infer", fn, gflops, "default layout, no fusion, no_grad", 0.0))
        elif backend == "optimized":
            log(f"{name}: fold BN, channels-last, compile={compile} ...")
            fast = optimize_for_inference(model, x, compile=compile)
            info = fast.info
            note = f"fold BN ({info['folded_batchnorms']}), channels-last, inference_mode"
            note += f", compiled ({info.get('compile_warmup_s', '?')} s warm-up)" if info["compiled"] else \
                f", eager ({info['compile_note']})"
            if info["autocast"] != "fp32":
                note += f", autocast {info['autocast']}"
            cases.append(Case(name, "infer", lambda fast=fast: fast(x), gflops, note, max_abs_diff(fast(x), want)))
            if info["compiled"]:  # also report the uncompiled fast path
                cases.append(Case(f"{name}-nocompile", "infer", lambda fast=fast: fast.run_eager(x), gflops,
                                  "fold BN, channels-last, inference_mode (no compile)",
                                  max_abs_diff(fast.run_eager(x), want)))
        elif backend in ("onnx", "int8"):
            try:
                from unetkit.export.onnx import OnnxPredictor, export_onnx
                from unetkit.export.quantize import quantize_onnx_int8
            except ImportError as err:
                log(f"{name}: skipped ({err})")
                continue
            work = workdir or tempfile.mkdtemp(prefix="unetkit-bench-")
            fp32 = os.path.join(work, "model-fp32.onnx")
            if not os.path.exists(fp32):
                log(f"{name}: exporting ONNX ...")
                export_onnx(model.cpu(), fp32, (1, *x.shape[1:]), dynamic_spatial=True)
                model.to(device)
            if backend == "onnx":
                pred = OnnxPredictor(fp32)
                note = "ONNX Runtime fp32 (graph optimisations: all)"
            else:
                q = os.path.join(work, "model-int8.onnx")
                calib = list(calibration) if calibration is not None else [torch.rand_like(x).cpu() for _ in range(4)]
                log(f"{name}: int8 calibration on {sum(len(c) for c in calib)} tiles ...")
                t0 = time.perf_counter()
                quantize_onnx_int8(fp32, calib, q)
                pred = OnnxPredictor(q)
                note = (f"ONNX Runtime int8 QDQ per-channel, calibrated on {sum(len(c) for c in calib)} "
                        f"{'image' if calibration is not None else 'random'} tiles ({time.perf_counter() - t0:.0f} s)")
            xc = x.cpu()
            cases.append(Case(name, "infer", lambda pred=pred: pred(xc), gflops, note, max_abs_diff(pred(xc), want)))
        else:
            raise ValueError(f"unknown backend '{backend}'; choose from {INFER_BACKENDS}")
    return cases


def training_cases(model: nn.Module, x: torch.Tensor, target: torch.Tensor, compile_train: bool = False,
                   gflops: float | None = None, prefix: str = "train-",
                   reference: nn.Module | None = None) -> list[Case]:
    """Training-step cases: eager (default layout; `reference` if given), channels-last
    (+ compiled). Each starts from the same weights; max_abs_diff is the difference of the
    first step's loss from eager's."""
    from unetkit.export.optimize import channels_last_input, prepare_for_training, retain_cpu_memory

    gflops = gflops if gflops is not None else _forward_flops(model, x.shape)
    base = copy.deepcopy(reference if reference is not None else model).train()
    eager = train_step_fn(base, base, x, target)
    ref_loss = float(eager())  # the warm-up step
    cases = [Case(f"{prefix}eager", "train", eager, gflops, "default layout, fp32, SGD step", 0.0, warmed=True)]
    variants = [("channels-last", False, False), ("channels-last + retained memory", False, True)]
    if compile_train:
        variants.append(("compiled + retained memory", True, True))
    xc = channels_last_input(x)
    for label, comp, retain in variants:
        if retain and not retain_cpu_memory(False):
            continue  # not glibc: nothing to compare
        m = copy.deepcopy(model).train()
        call = prepare_for_training(m, channels_last=True, compile=comp)
        step = train_step_fn(m, call, xc, target)
        if retain:
            step = _with_retained_memory(step)
        t0 = time.perf_counter()
        first = float(step())  # warm-up from the same weights as eager (compiles when `comp`)
        note = "channels-last, fp32" + (f", torch.compile ({time.perf_counter() - t0:.0f} s warm-up)" if comp else "")
        if retain:
            note += ", retain_cpu_memory during the step"
        cases.append(Case(f"{prefix}{label}", "train", step, gflops, note, abs(first - ref_loss), warmed=True))
    return cases


# ---- one-call benchmark -------------------------------------------------------------------------
def benchmark_model(
    model: str | nn.Module = "unet",
    size: int = 256,
    batch: int = 4,
    dims: int = 2,
    repeats: int = 5,
    train: bool = True,
    backends: Sequence[str] = ("eager", "optimized", "onnx", "int8"),
    compile: bool | str = "auto",
    compile_train: bool = False,
    in_channels: int = 1,
    num_classes: int = 2,
    model_kwargs: dict[str, Any] | None = None,
    calibration: Sequence[Any] | None = None,
    device: str | None = None,
    matmul_n: int = 4096,
    log: Callable[[str], None] = lambda s: None,
) -> dict[str, Any]:
    """Benchmark a registered model (by name) or a model instance; returns a JSON-able report
    {"config": ..., "machine": ..., "rows": [...]} (see `summarise` for the row fields)."""
    from unetkit.models.registry import create_model

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(0)
    if isinstance(model, str):
        name = model
        net = create_model(model, spatial_dims=dims, in_channels=in_channels, num_classes=num_classes,
                           **(model_kwargs or {}))
    else:
        name, net = type(model).__name__, model
    net = net.to(dev)
    shape = (batch, in_channels, *([size] * dims))
    x = torch.randn(shape, device=dev)
    gflops = _forward_flops(net, shape)
    log(f"{name}: {gflops:.2f} GFLOP per image forward")
    cases = [matmul_case(matmul_n, dev)] + inference_cases(net, x, backends, compile, calibration, gflops=gflops, log=log)
    if train:
        target = torch.randint(0, max(num_classes, 2) if num_classes > 1 else 2, (batch, *([size] * dims)),
                               device=dev)
        cases += training_cases(net, x, target, compile_train, gflops)
    log(f"timing {len(cases)} cases x {repeats} interleaved repeats ...")
    run_interleaved(cases, repeats, dev)
    rows = summarise(cases, batch, 0.0, {"infer": "eager", "train": "train-eager"})
    matmul = rows[0]["gflops_per_s"]
    return {
        "config": {"model": name, "size": size, "batch": batch, "dims": dims, "repeats": repeats,
                   "backends": list(backends), "compile": compile, "compile_train": compile_train},
        "machine": machine_info(dev, matmul),
        "rows": rows,
    }


def machine_info(device: torch.device, matmul: float) -> dict[str, Any]:
    """Device, versions, threads, and the matmul rate measured in the run."""
    import platform

    info = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "matmul_gflops": matmul, "python": platform.python_version()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return info


def format_report(report: dict[str, Any]) -> str:
    """A markdown table of a report's rows."""
    m = report["machine"]
    lines = [f"machine: {m['device']} ({m.get('cpu_capability', '')}, {m['threads']} threads), torch {m['torch']}, "
             f"fp32 matmul {m['matmul_gflops']:.0f} GFLOP/s",
             "",
             "| case | median s | images/s | x ref | GFLOP/s | % matmul | peak MB | max abs diff | notes |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in report["rows"]:
        diff = "-" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.1e}"
        ratio = "-" if r["speedup_vs_reference"] is None else f"{r['speedup_vs_reference']:.2f}"
        frac = "-" if r["fraction_of_matmul"] is None else f"{100 * r['fraction_of_matmul']:.0f}%"
        ips = "-" if r["images_per_s"] is None else f"{r['images_per_s']:.2f}"
        lines.append(f"| {r['name']} | {r['median_s']:.3f} | {ips} | {ratio} | "
                     f"{r['gflops_per_s']:.0f} | {frac} | {r['peak_mem_mb']:.0f} | {diff} | {r['note']} |")
    return "\n".join(lines)


def report_json(report: dict[str, Any]) -> dict[str, Any]:
    return {**report, "rows": [dict(r) for r in report["rows"]]}


__all__ = ["matmul_gflops", "matmul_case", "PeakMemory", "Case", "run_interleaved", "summarise", "inference_cases",
           "training_cases", "benchmark_model", "format_report", "machine_info", "max_abs_diff"]
