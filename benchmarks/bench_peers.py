"""unetkit against nnU-Net's and MONAI's networks at equal architecture, side by side in one run.

Models (per table):
  3D: unetkit `unet` (down_mode='stride', instance norm, leaky ReLU, conv biases: nnU-Net's
      PlainConvUNet layer for layer) eager and with its fast path (`optimize_for_inference`: for
      inference torch.compile with freezing where its probe finds it faster and equal, as
      `Predictor(fast=True)` / `unetkit predict --fast` run it), nnU-Net `PlainConvUNet`,
      MONAI `DynUNet` (same kernels/strides/widths, no residual blocks); with --resenc also
      unetkit `resenc-unet` against nnU-Net `ResidualEncoderUNet`. On a CPU with oneDNN bf16
      also unetkit bf16: the training step in bf16 autocast (what the Trainer's amp 'auto' runs
      where its probe measures it >= 1.25x faster; the note says whether it does here) and
      bf16 inference (opt-in: not equal to fp32; max abs diff against unetkit eager).
  2D: the same at 256^2 (2D widths), plus MONAI `BasicUNet` (5 levels, max-pool: nearest in kind).
Cases: the training step (forward, cross-entropy, backward, SGD momentum step) and fp32
inference (eval, no_grad / inference_mode); the fast and bf16 training steps run with freed memory
retained, as the Trainer's loop does on the CPU (peers: glibc's defaults). Every round runs every
case once (interleaved), the table gives medians, ratios against nnU-Net's network (x nnU-Net) and the max abs difference:
unetkit's models carry the nnU-Net network's weights (models/nnunet_import.py), so the
difference of their logits from nnU-Net's is shown; the fast paths are compared with unetkit eager.
Peers that are not installed are skipped with a message
(`pip install --no-deps dynamic-network-architectures monai`).

    python benchmarks/bench_peers.py                     # 3D 48^3 and 2D 256^2, train + infer
    python benchmarks/bench_peers.py --dims 3 --sizes 48 64 96 128 --resenc
    python benchmarks/bench_peers.py --quick             # tiny settings: checks that it runs

Timings from a machine other jobs share are noise; take them on a quiet machine. A figure from
one CPU is not a claim about another: the CPU model and flags are printed with every table.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

import unetkit
from unetkit.export.benchmark import Case, _with_retained_memory, max_abs_diff, run_interleaved
from unetkit.export.optimize import (cpu_bf16_supported, optimize_for_inference, prepare_for_training,
                                     probe_cpu_autocast)
from unetkit.models.nnunet_import import nnunet_to_unetkit
from unetkit.models.summary import count_flops, count_parameters

_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


def cpu_summary() -> str:
    """CPU model, the SIMD/AMX flags that decide conv speed, cores, torch threads and versions."""
    model, flags = platform.processor() or "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model in ("unknown CPU", "x86_64", ""):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    have = [f for f in _FLAGS if f in flags] or ["(flags unknown)"]
    return (f"CPU: {model}; flags: {' '.join(have)}; {os.cpu_count()} cores, torch threads "
            f"{torch.get_num_threads()}; torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()})")


# ---- the peers ------------------------------------------------------------------------------------
def _nnunet(kind: str, dims: int, features: tuple[int, ...], classes: int, blocks: tuple[int, ...]) -> nn.Module | None:
    try:
        from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
    except ImportError:
        return None
    n = len(features)
    conv = {2: nn.Conv2d, 3: nn.Conv3d}[dims]
    kw = dict(conv_bias=True, norm_op={2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}[dims],
              norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True},
              deep_supervision=False)
    strides = [1] + [2] * (n - 1)
    if kind == "plain":
        return PlainConvUNet(1, n, features, conv, 3, strides, 2, classes, 2, **kw)
    return ResidualEncoderUNet(1, n, features, conv, 3, strides, blocks, classes, 1, **kw)


def _monai(kind: str, dims: int, features: tuple[int, ...], classes: int) -> nn.Module | None:
    try:
        from monai.networks.nets import BasicUNet, DynUNet
    except ImportError:
        return None
    if kind == "dynunet":
        n = len(features)
        strides = [[1] * dims] + [[2] * dims] * (n - 1)
        return DynUNet(dims, 1, classes, [[3] * dims] * n, strides, strides[1:], filters=list(features),
                       norm_name=("instance", {"affine": True}), act_name=("leakyrelu", {"negative_slope": 0.01,
                                                                                         "inplace": True}),
                       res_block=False)
    f = (list(features) + [features[-1]] * 5)[:5] + [features[0]]
    return BasicUNet(dims, 1, classes, features=tuple(f))


# ---- cases --------------------------------------------------------------------------------------
def _train_step(model: nn.Module, call: Callable, x: torch.Tensor, y: torch.Tensor,
                bf16: bool = False) -> Callable[[], Any]:
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step() -> Any:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = call(x)
            loss = F.cross_entropy(out.float(), y)
        loss.backward()
        opt.step()
        return out.detach().float()

    return step


def _infer(model: nn.Module, x: torch.Tensor) -> Callable[[], Any]:
    model.eval()

    def run() -> Any:
        with torch.no_grad():
            return model(x)

    return run


def build_cases(dims: int, size: int, batch: int, features: tuple[int, ...], classes: int, train: bool,
                infer: bool, resenc: bool, blocks: tuple[int, ...], log: Callable[[str], None]) -> list[Case]:
    torch.manual_seed(0)
    x = torch.randn(batch, 1, *([size] * dims))
    y = torch.randint(0, classes, (batch, *([size] * dims)))
    families = [("plain", "unet (stride)")] + ([("resenc", "resenc-unet")] if resenc else [])
    nets: list[tuple[str, nn.Module, str]] = []  # (label, model, compare-with label)
    for kind, ours_label in families:
        peer = _nnunet(kind, dims, features, classes, blocks)
        if peer is None:
            log("nnU-Net (dynamic-network-architectures) not installed: skipped; unetkit built with random "
                "weights (pip install --no-deps dynamic-network-architectures)")
            if kind == "plain":
                ours = unetkit.create_model("unet", spatial_dims=dims, num_classes=classes, features=features,
                                            norm="instance", act="leakyrelu", down_mode="stride", conv_bias=True)
            else:
                ours = unetkit.create_model("resenc-unet", spatial_dims=dims, num_classes=classes, features=features,
                                            blocks=blocks)
        else:
            ours, _ = nnunet_to_unetkit(peer.state_dict())
            nets.append((f"nnU-Net {type(peer).__name__}", peer, ""))
        nets.append((f"unetkit {ours_label}", ours, f"nnU-Net {type(peer).__name__}" if peer is not None else ""))
        nets.append((f"unetkit {ours_label} fast", ours, f"unetkit {ours_label}"))
        if cpu_bf16_supported():  # mixed precision, as the Trainer's amp 'auto' runs it where its probe says so
            nets.append((f"unetkit {ours_label} bf16", ours, f"unetkit {ours_label}"))
    for kind in ("dynunet",) + (("basicunet",) if dims == 2 else ()):
        net = _monai(kind, dims, features, classes)
        if net is None:
            log(f"MONAI not installed: {kind} skipped (pip install --no-deps monai)")
            break
        nets.append((f"MONAI {type(net).__name__}", net, ""))

    cases: list[Case] = []
    outputs: dict[tuple[str, str], Any] = {}
    for label, net, ref in nets:
        fast, bf16 = label.endswith(" fast"), label.endswith(" bf16")
        gflops = count_flops(copy.deepcopy(net).eval(), (1, 1, *([size] * dims))) / 1e9
        note = f"{count_parameters(net) / 1e6:.2f}M params"
        if infer:
            if fast:
                m = optimize_for_inference(net, x, channels_last="auto")
                fn = (lambda m=m: m(x))
                note_i = (note + ", " + ("channels-last" if m.channels_last else "default layout") + ", inference_mode, "
                          + ("torch.compile (probe: faster and equal)" if m.info["compiled"]
                             else f"compile: {m.info['compile_note']}"))
                log(f"{label}: {m.info}")
            elif bf16:
                m = optimize_for_inference(net, x, channels_last="auto", precision="bf16")
                fn = (lambda m=m: m(x))
                note_i = (note + ", bf16 autocast (opt-in for inference: not equal to fp32)"
                          + (", torch.compile (probe)" if m.info["compiled"] else ""))
            else:
                fn, note_i = _infer(net, x), note
            out = fn()
            outputs[("infer", label)] = out
            diff = max_abs_diff(out, outputs[("infer", ref)]) if ref and ("infer", ref) in outputs else None
            cases.append(Case(f"{label} | infer", "infer", fn, gflops, note_i, diff, warmed=True))
        if train:
            m = copy.deepcopy(net).train()
            if fast or bf16:
                call = prepare_for_training(m, channels_last="auto", example=x)
                note_t = note + f", {getattr(call, 'unetkit_layout', 'channels-last auto')}"
            else:
                call, note_t = m, note
            if bf16:
                chosen = probe_cpu_autocast(m, tuple(x.shape), train=True,
                                            channels_last=getattr(call, "unetkit_layout", "") == "channels-last")
                note_t += f", bf16 autocast (the Trainer's probe {'chooses' if chosen else 'does not choose'} it here)"
            step = _train_step(m, call, x, y, bf16=bf16)
            if fast or bf16:  # as the Trainer's loop runs on the CPU
                step = _with_retained_memory(step)
                note_t += ", freed memory retained (the Trainer's CPU loop)"
            out = step()  # warm-up step from the shared starting weights
            outputs[("train", label)] = out
            diff = max_abs_diff(out, outputs[("train", ref)]) if ref and ("train", ref) in outputs else None
            cases.append(Case(f"{label} | train", "train", step, gflops, note_t, diff, warmed=True))
    return cases


def format_table(title: str, cases: list[Case], batch: int) -> str:
    lines = [f"### {title}", "", cpu_summary(), "",
             "| model | case | median s | img/s | x nnU-Net | max abs diff | GFLOP/img | notes |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    med = {c.name: statistics.median(c.times) for c in cases}
    for c in cases:
        model, kind = c.name.split(" | ")
        ref = next((n for n in med if n.startswith("nnU-Net") and n.endswith(kind)
                    and (("Residual" in n) == ("resenc" in model or "Residual" in model))), None)
        ratio = f"{med[ref] / med[c.name]:.2f}" if ref else "-"
        diff = "-" if c.max_abs_diff is None else f"{c.max_abs_diff:.1e}"
        lines.append(f"| {model} | {kind} | {med[c.name]:.3f} | {batch / med[c.name]:.2f} | {ratio} | {diff} | "
                     f"{c.gflops_per_image:.3g} | {c.note} |")
    return "\n".join(lines)


def default_features(dims: int, size: int) -> tuple[int, ...]:
    """nnU-Net's widths (32 * 2**i, capped at 320 in 3D / 512 in 2D), as many stages as keep the
    bottleneck at >= 3 voxels (48^3: 5 stages, 32..320; 128^3: 6)."""
    cap, n = (320 if dims == 3 else 512), 1
    while size // 2**n >= 3 and n < (6 if dims == 3 else 7):
        n += 1
    return tuple(min(cap, 32 * 2**i) for i in range(n))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dims", type=int, nargs="+", default=[3, 2])
    ap.add_argument("--sizes", type=int, nargs="+", default=None, help="3D edge(s); default 48")
    ap.add_argument("--size2d", type=int, default=256)
    ap.add_argument("--batch3d", type=int, default=2)
    ap.add_argument("--batch2d", type=int, default=8)
    ap.add_argument("--features", type=int, nargs="+", default=None, help="widths (default: nnU-Net's rule)")
    ap.add_argument("--features2d", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    ap.add_argument("--classes", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--resenc", action="store_true", help="also resenc-unet vs nnU-Net ResidualEncoderUNet")
    ap.add_argument("--blocks", type=int, nargs="+", default=[1, 3, 4, 6, 6, 6])
    ap.add_argument("--no-train", action="store_true")
    ap.add_argument("--no-infer", action="store_true")
    ap.add_argument("--quick", action="store_true", help="tiny settings (a smoke test, not a measurement)")
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args(argv)
    log = lambda s: print(f"[bench_peers] {s}", file=sys.stderr, flush=True)  # noqa: E731
    if args.quick:
        args.sizes, args.size2d, args.batch3d, args.batch2d, args.repeats = [16], 32, 1, 2, 2
        args.features, args.features2d, args.blocks = [4, 8, 16], [4, 8, 16, 32, 64], [1, 1, 2]
    tables, rows = [], []
    configs = []
    for d in args.dims:
        if d == 3:
            configs += [(3, s, args.batch3d, tuple(args.features or default_features(3, s))) for s in (args.sizes or [48])]
        else:
            configs.append((2, args.size2d, args.batch2d, tuple(args.features2d)))
    for dims, size, batch, feats in configs:
        blocks = tuple((list(args.blocks) + [args.blocks[-1]] * 8)[:len(feats)])
        log(f"{dims}D {size}^{dims} batch {batch} widths {feats}: building ...")
        cases = build_cases(dims, size, batch, feats, args.classes, not args.no_train, not args.no_infer,
                            args.resenc, blocks, log)
        log(f"timing {len(cases)} cases x {args.repeats} interleaved rounds ...")
        run_interleaved(cases, args.repeats, torch.device("cpu"), warmup=0)
        title = f"{dims}D {'x'.join([str(size)] * dims)}, batch {batch}, widths {'-'.join(map(str, feats))}, fp32"
        tables.append(format_table(title, cases, batch))
        print(tables[-1] + "\n", flush=True)
        rows += [{"table": title, "name": c.name, "median_s": statistics.median(c.times), "times": c.times,
                  "max_abs_diff": c.max_abs_diff, "gflops_per_image": c.gflops_per_image, "note": c.note}
                 for c in cases]
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cpu": cpu_summary(), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
