"""Peak memory of sliding-window inference against image size (each size in a fresh subprocess).

    python benchmarks/bench_inference_memory.py                 # 2D 512^2..4096^2 + 3D 128^3, 256^3
    python benchmarks/bench_inference_memory.py --sizes 512 1024 --no-3d --whole

Columns (MiB): `rss before` = process memory with torch, the model and the input image loaded;
`peak` = highest resident memory during inference (VmHWM, reset just before inference);
`buffers` = the result the caller asked for: the (N, K, *S) float32 output + the (*S) weight sum;
`working` = peak - rss before - buffers: the memory inference itself needs, which should not
depend on the image size. `--whole` adds one forward pass on the whole image for comparison.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

MIB = 1024 * 1024


def _status(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024 / MIB
    return float("nan")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def child(dims: int, size: int, roi: int, whole: bool, features: list[int], classes: int) -> dict:
    import torch

    import unetkit
    from unetkit.inference import sliding_window_inference

    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = unetkit.create_model("unet", spatial_dims=dims, features=tuple(features), num_classes=classes).eval()
    image = torch.rand((1, 1) + (size,) * dims)
    before = _status("VmRSS")
    exact_peak = _reset_peak()
    start = time.perf_counter()
    if whole:
        with torch.no_grad():
            out = model(image)
    else:
        out = sliding_window_inference(image, model, roi, overlap=0.25, batch_size=4)
    seconds = time.perf_counter() - start
    peak = _status("VmHWM")
    buffers = (out.numel() + (0 if whole else image.numel())) * 4 / MIB
    return {"dims": dims, "size": size, "mode": "whole" if whole else f"windows {roi}",
            "before": before, "peak": peak, "buffers": buffers, "working": peak - before - buffers,
            "seconds": seconds, "exact_peak": exact_peak}


def run(dims: int, size: int, roi: int, whole: bool, features: list[int], classes: int) -> dict:
    cmd = [sys.executable, __file__, "--child", json.dumps([dims, size, roi, whole, features, classes])]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
    if done.returncode != 0:
        return {"dims": dims, "size": size, "mode": "whole" if whole else f"windows {roi}", "error": done.stderr[-300:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    parser.add_argument("--roi", type=int, default=256)
    parser.add_argument("--features", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--sizes-3d", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--roi-3d", type=int, default=64)
    parser.add_argument("--no-3d", action="store_true")
    parser.add_argument("--whole", action="store_true", help="also time/measure whole-image passes (2D, <= 2048)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*json.loads(args.child))))
        return
    jobs = [(2, s, args.roi, False, args.features) for s in args.sizes]
    if args.whole:
        jobs += [(2, s, args.roi, True, args.features) for s in args.sizes if s <= 2048]
    if not args.no_3d:
        jobs += [(3, s, args.roi_3d, False, [8, 16, 32]) for s in args.sizes_3d]
    print(f"2D: unet features {tuple(args.features)}, 2 classes; 3D: unet features (8, 16, 32); "
          "overlap 0.25, batch 4, fp32, 2 CPU threads")
    print("| image | inference | rss before (MiB) | peak (MiB) | buffers (MiB) | working (MiB) | seconds |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for job in jobs:
        r = run(*job, classes=2)
        shape = "x".join([str(r["size"])] * r["dims"])
        if "error" in r:
            print(f"| {shape} | {r['mode']} | error: {r['error'].strip().splitlines()[-1]} | | | | |")
            continue
        print(f"| {shape} | {r['mode']} | {r['before']:.0f} | {r['peak']:.0f} | {r['buffers']:.0f} | "
              f"{r['working']:.0f} | {r['seconds']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
