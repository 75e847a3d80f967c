"""Size, speed and held-out Dice of the demo model in fp32, int8 (ONNX Runtime QDQ; torch oneDNN) and 4-bit
weight-only (group 32 / per channel), on the demo's own held-out columns of the nuclei image.

    unetkit demo --out-dir /tmp/runs --name demo
    python benchmarks/bench_quant_demo.py /tmp/runs/demo/last.safetensors

4-bit files are dequantised to fp32 when loaded (`load_model`): no runtime here executes
4-bit convolutions, so their speed is fp32's and only size and accuracy are reported as
theirs. Times: whole held-out region per pass, interleaved rounds, medians; on a shared
machine they are noise. The CPU and its flags are printed with the table.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import unetkit  # noqa: E402
from bench_peers import cpu_summary  # noqa: E402
from bench_unet_cpu import DATA, calibration_tiles, dice, foreground, load_nuclei  # noqa: E402
from unetkit.export.onednn_int8 import onednn_int8_available, quantize_torch_int8, save_model_int8  # noqa: E402
from unetkit.export.quantize import quantize_int8, save_model_4bit  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path, help="the demo's model file (last.safetensors)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--calibration-tiles", type=int, default=16)
    args = ap.parse_args(argv)
    model = unetkit.load_model(args.checkpoint)
    img, mask = load_nuclei(DATA / "image.tif", DATA / "instances.tif")
    region = model.unetkit_meta.get("extra", {}).get("split", {}).get("heldout_region")
    x0 = region[-1][0] if region else img.shape[1] // 2  # boxes [[y0, y1], [x0, x1]]: the held-out columns
    held, held_mask = img[:, x0:], mask[:, x0:].astype(bool)
    crop = tuple(slice(0, n // 16 * 16) for n in held.shape)
    x = torch.from_numpy(np.ascontiguousarray(held[crop]))[None, None]
    truth = held_mask[crop]
    calib = calibration_tiles(img[:, :x0], 128, 4, args.calibration_tiles)
    rows = quantised_rows(model, args.checkpoint, (1, 1, 128, 128), calib, "unetkit-qdemo-")
    feats = "-".join(map(str, model.unetkit_config.get("features", ())))
    compare(rows, lambda predictor: predictor(x), args.repeats, lambda out: dice(foreground(out)[0], truth),
            f"demo model ({model.unetkit_arch} {feats}): held-out columns {x0}.. of the nuclei image, "
            f"{tuple(x.shape[2:])}")
    return 0


def quantised_rows(model, model_file: Path, example_shape: tuple, calib, prefix: str,
                   fast_batch: tuple | None = None) -> list[tuple]:
    """(name, predictor, file bytes) for torch fp32, ONNX Runtime fp32 and int8 QDQ (calibrated on
    `calib`), torch oneDNN int8 (same calibration; saved, reloaded; skipped where oneDNN int8
    is missing), and 4-bit weights (group 32 and per channel, dequantised at load).
    `fast_batch` (the shape of the window batches the rows will be run on): also the fp32 and
    int8 models through `optimize_for_inference` (torch.compile kept where its probe finds it
    faster and equal on that shape)."""
    from unetkit.export.onnx import OnnxPredictor, export_onnx
    from unetkit.export.optimize import optimize_for_inference

    work = Path(tempfile.mkdtemp(prefix=prefix))
    rows = [("torch fp32", model, os.path.getsize(model_file))]
    if fast_batch is not None:
        fast = optimize_for_inference(model, fast_batch, channels_last="auto")
        print(f"[bench] fp32 fast: {fast.info}", file=sys.stderr)
        rows.append(("torch fp32 fast (optimize_for_inference)", fast, os.path.getsize(model_file)))
    export_onnx(model, work / "fp32.onnx", example_shape, dynamic_spatial=True)
    rows.append(("ONNX Runtime fp32", OnnxPredictor(work / "fp32.onnx"), os.path.getsize(work / "fp32.onnx")))
    t0 = time.perf_counter()
    rows.append(("ONNX Runtime int8 QDQ", quantize_int8(work / "fp32.onnx", calib, work / "int8.onnx"),
                 os.path.getsize(work / "int8.onnx")))
    print(f"[bench] int8 calibration: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    reason = onednn_int8_available()
    if reason is None:  # torch-native int8 on oneDNN: calibrated on the same batches, saved and reloaded
        t0 = time.perf_counter()
        path = save_model_int8(quantize_torch_int8(model, calib), work / "int8-torch.safetensors")
        print(f"[bench] torch int8 calibration: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        rows.append(("torch oneDNN int8", unetkit.load_model(path), os.path.getsize(path)))
        if fast_batch is not None:  # between int8 convs every map is channels-last
            fast = optimize_for_inference(rows[-1][1], fast_batch, channels_last=True)
            print(f"[bench] int8 fast: {fast.info}", file=sys.stderr)
            rows.append(("torch oneDNN int8 fast (optimize_for_inference)", fast, os.path.getsize(path)))
    else:
        print(f"[bench] no torch oneDNN int8 row: {reason}", file=sys.stderr)
    for group in (32, None):
        path = save_model_4bit(model, work / f"q4-{group}.safetensors", group_size=group)
        rows.append((f"4-bit weights, {'group 32' if group else 'per channel'} (dequantised at load)",
                     unetkit.load_model(path), os.path.getsize(path)))
    return rows


def compare(rows: list[tuple], run, repeats: int, score, title: str) -> None:
    """`run(predictor)` for every row in `repeats` interleaved rounds; prints size, held-out score
    (`score(output)`), max abs difference to the first row (torch fp32), median time and ratio."""
    outs, times = {}, {name: [] for name, _, _ in rows}
    for r in range(repeats):
        for name, predictor, _ in rows:
            t0 = time.perf_counter()
            with torch.no_grad():
                out = run(predictor)
            times[name].append(time.perf_counter() - t0)
            if r == 0:
                outs[name] = out
    first = rows[0][0]
    ref, base = outs[first].float(), statistics.median(times[first])
    print(f"\n### {title}\n")
    print(cpu_summary() + "\n")
    print(f"| model | file MB | Dice (held-out) | max abs logit diff vs {first} | median s | x {first} |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, _, size in rows:
        med = statistics.median(times[name])
        print(f"| {name} | {size / 2**20:.3f} | {score(outs[name]):.4f} | "
              f"{float((outs[name].float() - ref).abs().max()):.2e} | {med:.3f} | {base / med:.2f} |")


if __name__ == "__main__":
    sys.exit(main())
