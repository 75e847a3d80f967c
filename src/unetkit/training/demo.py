"""`unetkit demo`: train a small U-Net on the embedded real nuclei image and score it on a
held-out region, next to an Otsu-threshold baseline.

The 512x512 DSB 2018 image is split by columns: random training tiles come from the left 70%,
the right 30% is never seen in training. The model of the last epoch is evaluated (the held-out
region is not used to pick a checkpoint), with the same post-processing for both methods:
connected components, touching nuclei split by a distance-transform watershed, objects under
`min_size` pixels removed. Object scores match predicted and true nuclei one-to-one at IoU >= 0.5.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from unetkit.training.config import TrainConfig

HELDOUT_FRACTION = 0.3
SPLIT_MIN_DISTANCE = 7  # watershed markers at least this far apart when splitting touching nuclei


def demo_config(out_dir: str = "runs", name: str = "demo", overwrite: bool = False, epochs: int = 20,
                progress: str = "bar") -> TrainConfig:
    """The demo's run: a 4-level U-Net (16..128 channels) on 128x128 tiles, BCE + Dice, Adam with
    warm-up and cosine decay. (Touching nuclei are split after prediction by a watershed; training
    with the 2015 border weight maps, `data.weight_map`, cost ~0.01 pixel Dice here.)"""
    config = TrainConfig()
    config.model.name = "unet"
    config.model.num_classes = 1
    config.model.kwargs = {"features": [16, 32, 64, 128]}
    config.data.dataset = "dsb2018-nuclei"
    config.data.val_fraction = HELDOUT_FRACTION
    config.data.patch_size = [128, 128]
    config.data.batch_size = 8
    config.data.samples_per_epoch = 192
    config.data.augmentation = "light"
    config.data.num_workers = 0
    config.data.weight_map = False
    config.loss.name = "combo"
    config.optim.lr = 3e-3
    config.schedule.name = "cosine"
    config.schedule.warmup_epochs = 0.5
    config.epochs = epochs
    config.early_stop_patience = None
    config.overlays = 1
    config.out_dir, config.name, config.overwrite, config.progress = out_dir, name, overwrite, progress
    return config


def run_demo(out_dir: str = "runs", name: str = "demo", overwrite: bool = False, epochs: int = 20,
             progress: str = "bar", min_size: int = 20) -> dict[str, Any]:
    """Train, evaluate, print the comparison table; returns the report (also in report_demo.json)."""
    from unetkit.datasets import load_dataset
    from unetkit.training.artifacts import write_json
    from unetkit.training.run import train

    start = time.monotonic()
    config = demo_config(out_dir, name, overwrite, epochs, progress)
    result = train(config)
    train_seconds = time.monotonic() - start

    sample = load_dataset("dsb2018-nuclei")[0]
    x0 = int(round(sample.image.shape[-1] * (1 - HELDOUT_FRACTION)))
    image = sample.image[:, :, x0:]
    truth_instances = sample.instances[:, x0:]
    unet_mask = predict_mask(result.run_dir / "last.safetensors", sample.image, x0, result.run_dir)
    otsu = otsu_mask(image[0])
    rows = {"otsu": score(otsu, truth_instances, min_size), "unet": score(unet_mask, truth_instances, min_size)}
    report = {
        "heldout_region": {"x_from": x0, "x_to": int(sample.image.shape[-1]), "y_from": 0,
                           "y_to": int(sample.image.shape[-2])},
        "true_nuclei": int(len(np.unique(truth_instances)) - 1),
        "otsu": rows["otsu"], "unet": rows["unet"],
        "train_seconds": round(train_seconds, 1), "total_seconds": round(time.monotonic() - start, 1),
        "run_dir": str(result.run_dir), "model": str(result.run_dir / "last.safetensors"),
        "machine": cpu_description(),
    }
    write_json(report, result.run_dir / "report_demo.json")
    print(format_table(report))
    return report


def predict_mask(model_path: Path, image: np.ndarray, x0: int, run_dir: Path) -> np.ndarray:
    """Binary mask (H, W - x0) of the held-out columns. The whole image is predicted, as a user would
    (so its normalisation matches training), and the held-out part is cut out; writes an overlay."""
    from unetkit.inference.overlay import overlay_figure
    from unetkit.inference.predictor import Predictor

    predictor = Predictor.from_checkpoint(model_path, device="cpu", roi_size=list(image.shape[1:]),  # one window
                                          tta=True)  # average over the 8 flips/rotations of the square
    labels = predictor.predict_array(image).labels[0][:, x0:]
    overlay_figure(image[:, :, x0:], labels, run_dir / "heldout_overlay.png", title="held-out region: U-Net",
                   overwrite=True)
    return labels > 0


def otsu_mask(image: np.ndarray) -> np.ndarray:
    from skimage.filters import threshold_otsu

    return image > threshold_otsu(image)


def score(mask: np.ndarray, truth_instances: np.ndarray, min_size: int) -> dict[str, float]:
    """Pixel Dice / IoU and object counts and F1 (IoU >= 0.5) of a binary mask: the objects scored by
    `unetkit.evaluation.object_scores`, as `unetkit evaluate --objects --split --min-distance 7
    --min-size 20` scores them against the instance labels."""
    from unetkit.evaluation.evaluate import object_scores

    truth = truth_instances > 0
    inter, total = float((mask & truth).sum()), float(mask.sum() + truth.sum())
    union = float((mask | truth).sum())
    objects = object_scores(mask.astype(np.int64), true_instances=truth_instances, split=True,
                            min_distance=SPLIT_MIN_DISTANCE, min_size=min_size, iou_threshold=0.5)
    return {"dice": 2 * inter / total if total else 1.0, "iou": inter / union if union else 1.0,
            "nuclei": objects["pred_objects"], "object_precision": objects["precision"],
            "object_recall": objects["recall"], "object_f1": objects["f1"]}


def cpu_description() -> str:
    """Where the times were measured, e.g. 'CPU Intel(R) Xeon(R) Processor (AVX2), 2 threads' (or the GPU)."""
    import platform

    import torch

    if torch.cuda.is_available():
        return f"GPU {torch.cuda.get_device_name(0)}"
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        pass
    capability = torch.backends.cpu.get_cpu_capability()
    return f"CPU {name} ({capability}), {torch.get_num_threads()} threads"


def format_table(report: dict[str, Any]) -> str:
    otsu, unet = report["otsu"], report["unet"]
    lines = [
        f"held-out region x={report['heldout_region']['x_from']}..{report['heldout_region']['x_to']} "
        f"of dsb2018-nuclei (never seen in training); {report['true_nuclei']} true nuclei",
        f"{'':28}{'Otsu':>10}{'U-Net':>10}",
        f"{'pixel Dice':28}{otsu['dice']:>10.3f}{unet['dice']:>10.3f}",
        f"{'pixel IoU':28}{otsu['iou']:>10.3f}{unet['iou']:>10.3f}",
        f"{'nuclei counted':28}{otsu['nuclei']:>10d}{unet['nuclei']:>10d}",
        f"{'object precision (IoU>=0.5)':28}{otsu['object_precision']:>10.3f}{unet['object_precision']:>10.3f}",
        f"{'object recall (IoU>=0.5)':28}{otsu['object_recall']:>10.3f}{unet['object_recall']:>10.3f}",
        f"{'object F1 (IoU>=0.5)':28}{otsu['object_f1']:>10.3f}{unet['object_f1']:>10.3f}",
        f"training {report['train_seconds']:.0f} s, total {report['total_seconds']:.0f} s on "
        f"{report.get('machine', 'this machine')}; run folder: {report['run_dir']}",
    ]
    return "\n".join(lines)
