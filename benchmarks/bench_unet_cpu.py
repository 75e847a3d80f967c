"""The classic U-Net (64..1024) target table: every backend side by side in one run.

    python benchmarks/bench_unet_cpu.py                       # 256x256, batch 4, 5 repeats (~8 min, 2 cores)
    python benchmarks/bench_unet_cpu.py --quick               # 3 repeats, no training compile
    python benchmarks/bench_unet_cpu.py --checkpoint run/model.safetensors   # + held-out Dice fp32 vs int8

Rows: the seed-style eager reference (benchmarks/reference_unet.py, weights copied from unetkit's
UNet, outputs asserted equal), unetkit eager, unetkit optimised (BN folded, channels-last,
inference_mode, torch.compile), ONNX Runtime fp32 and int8 (calibrated on tiles of the embedded
nuclei image), MONAI BasicUNet at the same widths when installed; training steps of the reference
vs channels-last (vs compiled with --compile-train). Timings are medians of interleaved repeats;
ratios are against the reference measured in the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_unet import reference_for  # noqa: E402

from unetkit.export.benchmark import (  # noqa: E402
    Case, format_report, inference_cases, machine_info, matmul_case, max_abs_diff, run_interleaved, summarise,
    training_cases,
)
from unetkit.models import UNet, count_flops  # noqa: E402

DATA = Path("/work/shared/data/dsb2018-nuclei")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def load_nuclei(image_path: Path, mask_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) image normalised per image to [0, 1] by its 1 / 99.8 percentiles, binary mask."""
    import tifffile

    img = tifffile.imread(str(image_path)).astype(np.float32)
    lo, hi = np.percentile(img, [1.0, 99.8])
    img = np.clip((img - lo) / max(hi - lo, 1e-6), 0.0, 1.0).astype(np.float32)
    mask = (tifffile.imread(str(mask_path)) > 0).astype(np.int64)
    return img, mask


def calibration_tiles(img: np.ndarray, size: int, batch: int, count: int) -> list[torch.Tensor]:
    """`count` tiles of size x size (with flips for variety) from the image, in batches."""
    h, w = img.shape
    rng = np.random.default_rng(0)
    tiles = []
    for i in range(count):
        y, x = rng.integers(0, h - size + 1), rng.integers(0, w - size + 1)
        t = img[y:y + size, x:x + size]
        tiles.append(t[::-1] if i % 2 else t)
    arr = np.ascontiguousarray(np.stack(tiles)[:, None], dtype=np.float32)
    return [torch.from_numpy(arr[i:i + batch]) for i in range(0, len(arr), batch)]


def dice(pred: np.ndarray, target: np.ndarray) -> float:
    total = float(pred.sum() + target.sum())
    return 1.0 if total == 0 else 2 * float((pred & target).sum()) / total


def foreground(logits: torch.Tensor) -> np.ndarray:
    logits = logits.detach().float().cpu()
    if logits.shape[1] == 1:
        return (logits[:, 0] > 0).numpy()
    return (logits.argmax(1) > 0).numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="3 repeats, training without compile")
    ap.add_argument("--base", type=int, default=64, help="first level width (64 = classic)")
    ap.add_argument("--no-train", dest="train", action="store_false")
    ap.add_argument("--compile-train", action="store_true", help="also time a torch.compile'd training step")
    ap.add_argument("--no-compile", dest="compile", action="store_false", help="optimised inference without compile")
    ap.add_argument("--backends", default="eager,optimized,onnx,int8")
    ap.add_argument("--no-monai", dest="monai", action="store_false")
    ap.add_argument("--jit", action="store_true", help="also time torch.jit.freeze + optimize_for_inference")
    ap.add_argument("--checkpoint", type=Path, help="trained unetkit model file: held-out Dice fp32 vs int8")
    ap.add_argument("--image", type=Path, default=DATA / "image.tif")
    ap.add_argument("--mask", type=Path, default=DATA / "instances.tif")
    ap.add_argument("--calibration-tiles", type=int, default=16)
    ap.add_argument("--json", type=Path, help="write the full report here")
    args = ap.parse_args()
    if args.quick:
        args.repeats = min(args.repeats, 3)
        args.compile_train = False
    torch.manual_seed(0)
    size, batch = args.size, args.batch

    if args.checkpoint:
        from unetkit import load_model

        model = load_model(args.checkpoint).eval()
        log(f"loaded {args.checkpoint}: {model.unetkit_arch} {model.unetkit_config.get('features')}")
    else:
        model = UNet(2, 1, 2, features=tuple(args.base * 2**i for i in range(5))).eval()
        # random-init BN statistics are 0/1; give them realistic values so folding is really tested
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.normal_(0, 0.1)
                    m.running_var.uniform_(0.5, 2.0)
    in_ch = model.unetkit_config.get("in_channels", 1)
    ref = reference_for(model).eval()
    x = torch.randn(batch, in_ch, size, size)
    with torch.no_grad():
        ref_out, uk_out = ref(x), model(x)
    ref_diff = max_abs_diff(ref_out, uk_out)
    log(f"reference vs unetkit UNet: max abs diff {ref_diff:.2e}")
    assert ref_diff <= 1e-5, "the reference and unetkit's UNet must compute the same function"

    gflops = count_flops(model, (1, in_ch, size, size)) / 1e9
    log(f"{gflops:.2f} GFLOP per image forward")

    img, mask = load_nuclei(args.image, args.mask)
    # calibrate on the training part, score Dice on the held-out part: the model file's split when it
    # has one (the demo's right 30%), else the top / bottom halves
    region = getattr(model, "unetkit_meta", {}).get("extra", {}).get("split", {}).get("heldout_region")
    if region:
        x0 = region[2]
        train_part, held_part, held_mask = img[:, :x0], img[:, x0:], mask[:, x0:]
        held_name = f"held-out columns {x0}..{img.shape[1]} of {args.image.name} (the model's split)"
    else:
        half = img.shape[0] // 2
        train_part, held_part, held_mask = img[:half], img[half:], mask[half:]
        held_name = f"bottom half of {args.image.name}"
    calib = calibration_tiles(train_part, min(size, *train_part.shape), batch, args.calibration_tiles)

    # ---- inference -----------------------------------------------------------------------------
    def ref_fn() -> torch.Tensor:
        with torch.no_grad():
            return ref(x)

    cases = [matmul_case(4096)]  # timed in the same interleaved rounds: the '% matmul' denominator
    cases += [Case("reference eager (seed-style)", "infer", ref_fn, gflops, "nn.Conv2d/BN/ReLU, default layout, no_grad", 0.0)]
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    work = tempfile.mkdtemp(prefix="unetkit-bench-")
    cases += inference_cases(model, x, backends, compile="auto" if args.compile else False, calibration=calib,
                             workdir=work, gflops=gflops, prefix="unetkit ", log=log)
    for c in cases:  # diffs against the reference's output
        if c.name.startswith("unetkit"):
            c.max_abs_diff = max_abs_diff(c.fn(), ref_out)
    if args.jit:
        import warnings

        from unetkit.export import fold_batchnorm

        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about shape arithmetic (constant here)
            frozen = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(fold_batchnorm(model), x)))

        def jit_fn() -> torch.Tensor:
            with torch.no_grad():
                return frozen(x)
        cases.append(Case("torch.jit freeze+optimize_for_inference", "infer", jit_fn, gflops, "oneDNN via TorchScript",
                          max_abs_diff(jit_fn(), ref_out)))
    if args.monai:
        try:
            from monai.networks.nets import BasicUNet

            f = tuple(args.base * 2**i for i in range(5)) + (args.base,)
            mon = BasicUNet(2, in_ch, 2, features=f, norm=("batch", {}), act=("relu", {"inplace": True})).eval()
            mon_gflops = count_flops(mon, (1, in_ch, size, size)) / 1e9

            def monai_fn() -> torch.Tensor:
                with torch.no_grad():
                    return mon(x)
            cases.append(Case("MONAI BasicUNet eager", "infer", monai_fn, mon_gflops,
                              f"features={f}, batch norm; own weights ({mon_gflops:.1f} GFLOP/img)"))
        except ImportError:
            log("MONAI not installed: skipping BasicUNet (pip install unetkit[bench])")
    try:
        import segmentation_models_pytorch  # noqa: F401
    except Exception as err:
        log(f"segmentation_models_pytorch unavailable ({type(err).__name__}): skipping its Unet")

    # ---- training ------------------------------------------------------------------------------
    if args.train:
        target = torch.randint(0, 2, (batch, size, size))
        log("training cases: warm-up steps ...")
        cases += training_cases(model, x, target, compile_train=args.compile_train, gflops=gflops,
                                prefix="train ", reference=ref)
        cases[[c.name for c in cases].index("train eager")].name = "train reference eager (seed-style)"

    log(f"timing {len(cases)} cases x {args.repeats} interleaved repeats ...")
    run_interleaved(cases, args.repeats, torch.device("cpu"))
    rows = summarise(cases, batch, 0.0, {"infer": "reference eager (seed-style)",
                                            "train": "train reference eager (seed-style)"})
    report = {"config": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                         "gflops_per_image": gflops, "reference_vs_unetkit_max_abs_diff": ref_diff},
              "machine": machine_info(torch.device("cpu"), rows[0]["gflops_per_s"]), "rows": rows}

    # ---- int8 fidelity -------------------------------------------------------------------------
    if "int8" in backends:
        from unetkit.export.onnx import OnnxPredictor

        q = OnnxPredictor(os.path.join(work, "model-int8.onnx"))
        crop = tuple(slice(0, n // 16 * 16) for n in held_part.shape)
        held = torch.from_numpy(np.ascontiguousarray(held_part[crop]))[None, None]
        with torch.no_grad():
            fp = model(held)
        qi = q(held)
        fp_fg, q_fg = foreground(fp), foreground(qi)
        fid = {"held_out": f"{held_name}, {tuple(held.shape[2:])}",
               "max_abs_diff_logits": max_abs_diff(qi, fp), "agreement_dice_int8_vs_fp32": dice(q_fg, fp_fg),
               "pixel_agreement": float((q_fg == fp_fg).mean()), "fp32_foreground_fraction": float(fp_fg.mean())}
        if args.checkpoint:
            tgt = held_mask[crop].astype(bool)
            fid["dice_fp32"] = dice(fp_fg[0], tgt)
            fid["dice_int8"] = dice(q_fg[0], tgt)
            fid["dice_difference"] = abs(fid["dice_fp32"] - fid["dice_int8"])
        else:
            fid["note"] = "random-init model: Dice against the mask needs --checkpoint (a trained model)"
        report["int8_fidelity"] = fid

    print()
    print(format_report(report))
    print()
    by = {r["name"]: r for r in rows}
    opt = by.get("unetkit optimized")
    if opt:
        print(f"optimised inference: {opt['speedup_vs_reference']:.2f}x reference, "
              f"{100 * opt['fraction_of_matmul']:.0f}% of matmul, max abs diff {opt['max_abs_diff']:.1e}")
    if "unetkit int8" in by:
        print(f"int8 inference: {by['unetkit int8']['speedup_vs_reference']:.2f}x reference")
    for r in rows:
        if r["kind"] == "train" and r["speedup_vs_reference"] and "reference" not in r["name"]:
            print(f"{r['name']}: {r['speedup_vs_reference']:.2f}x reference step")
    if "int8_fidelity" in report:
        print("int8 fidelity:", json.dumps(report["int8_fidelity"]))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
        log(f"wrote {args.json}")


if __name__ == "__main__":
    main()
