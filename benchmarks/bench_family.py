"""The U-Net family side by side on this machine's CPU: parameters, forward GFLOPs and inference
throughput of each registered model's default (paper) configuration, plus U-Net++ per prune level.

    python benchmarks/bench_family.py                 # all models, 2D 256x256 (nnFormer 3D 64x128x128)
    python benchmarks/bench_family.py --models "unet*" --budget 5
    python benchmarks/bench_family.py --prune-dice    # also train a U-Net++ briefly: Dice per prune level

Throughput: batch 1, torch.inference_mode, eval mode, median over repeats after one warm-up;
the number of repeats shrinks for slow models (about `--budget` seconds each).
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np
import torch

import unetkit
from unetkit.models import count_flops, count_parameters, list_models, model_info

NATURAL_3D = (64, 128, 128)  # nnFormer's Synapse crop


def images_per_second(model: torch.nn.Module, x: torch.Tensor, budget: float) -> tuple[float, int]:
    """(median images/s, repeats) of `model(x)`."""
    model.eval()
    with torch.inference_mode():
        model(x)  # warm-up: allocations, oneDNN primitives (the first two calls are slow)
        start = time.perf_counter()
        model(x)
        first = time.perf_counter() - start
        repeats = int(max(3, min(20, budget / max(first, 1e-3))))
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return x.shape[0] / statistics.median(times), repeats


def row(label: str, model: torch.nn.Module, shape: tuple[int, ...], budget: float, **extra: Any) -> dict[str, Any]:
    flops = count_flops(model, shape)
    ips, reps = images_per_second(model, torch.randn(shape), budget)
    return {"model": label, "params": count_parameters(model), "gflops": flops / 1e9, "ips": ips,
            "input": "x".join(map(str, shape[2:])), "repeats": reps, **extra}


def print_rows(rows: list[dict[str, Any]], reference: dict[str, Any] | None) -> None:
    print(f"{'model':<22}{'input':<12}{'params':>14}{'paper':>10}{'GFLOPs':>9}{'img/s':>9}{'vs unet':>9}  repeats")
    for r in rows:
        paper = f"{r['paper'] / 1e6:.2f}M" if r.get("paper") else "-"
        rel = f"{r['ips'] / reference['ips']:.1f}x" if reference and r["input"] == reference["input"] else "-"
        print(f"{r['model']:<22}{r['input']:<12}{r['params']:>14,}{paper:>10}{r['gflops']:>9.2f}{r['ips']:>9.2f}"
              f"{rel:>9}  {r['repeats']}")


def prune_dice(steps: int = 300) -> None:
    """Train a U-Net++ (16..256, deep supervision) on 64x64 crops of the nuclei sample's left
    half and report Dice of every prune level on its right half."""
    import tifffile

    image = tifffile.imread("/work/shared/data/dsb2018-nuclei/image.tif").astype(np.float32)
    mask = (tifffile.imread("/work/shared/data/dsb2018-nuclei/instances.tif") > 0).astype(np.float32)
    lo, hi = np.percentile(image, (1, 99.8))
    image = np.clip((image - lo) / (hi - lo), 0, 1).astype(np.float32)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = unetkit.create_model("unet++", num_classes=1, features=(16, 32, 64, 128, 256), deep_supervision=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    start = time.perf_counter()
    for _ in range(steps):
        ys, xs = rng.integers(0, 512 - 64, 8), rng.integers(0, 256 - 64, 8)
        img = torch.from_numpy(np.stack([image[y:y + 64, x:x + 64] for y, x in zip(ys, xs)]))[:, None]
        tgt = torch.from_numpy(np.stack([mask[y:y + 64, x:x + 64] for y, x in zip(ys, xs)]))[:, None]
        optimizer.zero_grad()
        outs = model(img)
        loss = sum(torch.nn.functional.binary_cross_entropy_with_logits(o, tgt) for o in outs) / len(outs)
        loss.backward()
        optimizer.step()
    print(f"\nU-Net++ 16..256 with deep supervision, {steps} Adam steps of 8 crops 64x64 "
          f"({time.perf_counter() - start:.0f} s); Dice on the right half (512x256):")
    test_img = torch.from_numpy(image[:, 256:])[None, None]
    test_mask = torch.from_numpy(mask[:, 256:])[None, None]
    model.eval()
    print(f"{'level':<8}{'params':>12}{'GFLOPs':>9}{'img/s':>9}{'Dice':>8}")
    for level in range(1, 5):
        pruned = model.prune(level)
        with torch.inference_mode():
            pred = (pruned(test_img) > 0).float()
        dice = (2 * (pred * test_mask).sum() / (pred.sum() + test_mask.sum())).item()
        ips, _ = images_per_second(pruned, test_img, 3.0)
        print(f"L{level:<7}{count_parameters(pruned):>12,}{count_flops(pruned, tuple(test_img.shape)) / 1e9:>9.2f}"
              f"{ips:>9.2f}{dice:>8.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="*", help="shell-style pattern of registered names")
    parser.add_argument("--size", type=int, default=256, help="2D input size")
    parser.add_argument("--budget", type=float, default=8.0, help="seconds of timed repeats per model")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--prune-dice", action="store_true", help="train a U-Net++ and report Dice per prune level")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, batch 1")
    rows = []
    for name in list_models(args.models):
        entry = model_info(name)
        dims = 2 if 2 in entry.info["dims"] else 3
        size = (572,) * 2 if name == "unet-original" else (args.size,) * 2 if dims == 2 else NATURAL_3D
        torch.manual_seed(0)
        model = unetkit.create_model(name, spatial_dims=dims)
        rows.append(row(name, model, (1, 1, *size), args.budget, paper=entry.info.get("paper_params")))
        if name == "unet++":
            full = unetkit.create_model(name, deep_supervision=True)
            for level in range(1, len(full.unetkit_config["features"])):
                rows.append(row(f"  unet++ prune L{level}", full.prune(level), (1, 1, *size), args.budget))
        print(f"... {rows[-1]['model']}", flush=True)
    reference = next((r for r in rows if r["model"] == "unet"), None)
    print()
    print_rows(rows, reference)
    if args.prune_dice:
        prune_dice()


if __name__ == "__main__":
    main()
