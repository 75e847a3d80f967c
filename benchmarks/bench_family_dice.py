"""Dice of every 2D model after the same short training budget on the embedded nuclei image.

Each model is trained by `unetkit.training.train` on random 96x96 tiles from the left 70% of the
dsb2018-nuclei image (the same seed, steps, optimiser, loss and schedule for all), then scored on
the held-out right 30% (mean per-image foreground Dice of the last epoch's validation). Widths are
reduced to CPU-sized configurations; nnFormer is 3D-only and not in this 2D table.

    python benchmarks/bench_family_dice.py [--steps 128] [--models unet,unet++]
"""
from __future__ import annotations

import argparse
import tempfile
import time

from unetkit.models import count_parameters, create_model
from unetkit.training import TrainConfig, train

SMALL = {
    "unet": {"features": [8, 16, 32, 64]},
    "unet-original": {"features": [8, 16, 32, 64]},
    "unet++": {"features": [8, 16, 32, 64]},
    "attention-unet": {"features": [8, 16, 32, 64]},
    "unet3+": {"features": [8, 16, 32, 64]},
    "unet-lite": {},
    "unet-realtime": {},
    "mobile-unet": {"width_mult": 0.5, "depth": 4},
    "hybrid": {"encoder": "mobilenet", "decoder": "unet++", "encoder_kwargs": {"width_mult": 0.5, "depth": 4}},
    "transunet": {"features": [32, 16], "cnn_blocks": [1, 1], "cnn_width": 16, "hidden": 64, "depth": 2,
                  "heads": 4, "mlp_dim": 128, "img_size": 96},
    "swin-unet": {"features": [24, 48, 96], "depths": [2, 2, 2], "heads": [2, 4, 8], "window": 4,
                  "patch_size": 2},
    "multitask-unet": {"features": [8, 16, 32, 64]},
    "temporal-unet": {"features": [8, 16, 32, 64], "frames": 1},
    "multimodal-unet": {"features": [8, 16, 32, 64], "modalities": [1]},
}


def run(name: str, steps: int, out_dir: str) -> dict:
    cfg = TrainConfig()
    cfg.model.name, cfg.model.num_classes, cfg.model.in_channels = name, 1, 1
    cfg.model.kwargs = dict(SMALL[name])
    patch = 140 if name == "unet-original" else 96  # 140 -> 52: a valid input of the 4-level valid network
    if name == "unet-original":
        cfg.model.num_classes = 2
        cfg.loss.name = "ce"
    cfg.data.dataset, cfg.data.val_fraction, cfg.data.patch_size = "dsb2018-nuclei", 0.3, [patch, patch]
    cfg.data.batch_size, cfg.data.samples_per_epoch, cfg.data.num_workers = 8, 128, 0
    cfg.data.augmentation = "light"
    cfg.optim.lr, cfg.schedule.name, cfg.schedule.warmup_epochs = 2e-3, "cosine", 0.5
    cfg.epochs = max(1, steps // 16)
    cfg.early_stop_patience, cfg.val_every = None, cfg.epochs
    cfg.out_dir, cfg.name, cfg.progress, cfg.tensorboard, cfg.overlays = out_dir, name, "quiet", False, 0
    start = time.monotonic()
    result = train(cfg)
    params = count_parameters(create_model(name, spatial_dims=2, in_channels=1, num_classes=cfg.model.num_classes,
                                           **cfg.model.kwargs))
    return {"model": name, "params": params, "steps": result.history[-1]["steps"],
            "dice": result.history[-1]["val_dice"], "seconds": time.monotonic() - start}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=128)
    ap.add_argument("--models", default=",".join(SMALL))
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as out_dir:
        for name in args.models.split(","):
            rows.append(run(name, args.steps, out_dir))
            r = rows[-1]
            print(f"{r['model']:<16}{r['params']:>10,}{r['steps']:>7}{r['dice']:>8.3f}{r['seconds']:>8.0f} s", flush=True)
    print("\n| model | params | steps | held-out Dice | seconds |\n|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['params']:,} | {r['steps']} | {r['dice']:.3f} | {r['seconds']:.0f} |")


if __name__ == "__main__":
    main()
