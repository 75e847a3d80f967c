"""Auto-planned training vs a classical threshold, on one dataset folder.

    python benchmarks/bench_autoplan.py DATA [--test TEST] [--budget 3m] [--out-dir /tmp/bench]
    python benchmarks/bench_autoplan.py DATA --name hand -- --no-plan --features 16,32,64 ...   # a hand-tuned run

1. `unetkit train --images DATA --budget B` with no other flag (the plan for this device), timed.
2. Held-out cases: every case of TEST when given (never seen in training); else the run's own
   validation cases from splits.json (for a single image/volume: its held-out region).
3. The model (best.safetensors, else last) predicts each held-out case whole, as a user would.
4. Baseline: an Otsu threshold per image (per volume in 3D), its polarity (bright or dark
   foreground) chosen on the training cases. With more than one foreground class, also a
   multi-Otsu baseline: K-1 thresholds per image, each intensity band mapped to the class that
   fills most of it on the training cases; both are scored by the mean per-class Dice.
5. Printed: pixel Dice (pooled over the held-out cases, and the mean per case), object F1 at
   IoU >= 0.5 (touching objects split by a distance watershed in 2D, connected components in 3D),
   and the time of the run. `--json` writes the same.

Timings from a shared machine are not comparable; take the final table on a quiet one.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("--test", type=Path, default=None, help="held-out folder (default: the run's validation)")
    ap.add_argument("--budget", default="3m")
    ap.add_argument("--out-dir", type=Path, default=Path("/tmp/bench_autoplan"))
    ap.add_argument("--name", default="auto")
    ap.add_argument("--run", type=Path, default=None, help="score this finished run instead of training")
    ap.add_argument("--extra", nargs="*", default=[], help="more `unetkit train` flags (a hand-tuned run); "
                                                             "or give them after `--`")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=None, help="PyTorch CPU threads for scoring (e.g. 1 on a "
                                                                 "busy machine); the run plans its own")
    argv = sys.argv[1:]
    after = argv.index("--") if "--" in argv else len(argv)  # flags after `--` go to `unetkit train`
    args = ap.parse_args(argv[:after])
    args.extra = [*args.extra, *argv[after + 1:]]
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    seconds = None
    run_dir = args.run
    if run_dir is None:
        run_dir = args.out_dir / args.name
        cmd = [sys.executable, "-m", "unetkit.cli.main", "train", "--images", str(args.data), "--budget", args.budget,
               "--out-dir", str(args.out_dir), "--name", args.name, "--progress", "quiet", *args.extra]
        print("$", " ".join(cmd), flush=True)
        t0 = time.monotonic()
        subprocess.run(cmd, check=True)
        seconds = time.monotonic() - t0
    report = score_run(run_dir, args.data, args.test)
    report["seconds"] = None if seconds is None else round(seconds, 1)
    print(format_report(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


def score_run(run_dir: Path, data: Path, test: Path | None) -> dict:
    from unetkit.data.folder import scan_folder
    from unetkit.inference.predictor import Predictor

    model = run_dir / "best.safetensors"
    model = model if model.is_file() else run_dir / "last.safetensors"
    predictor = Predictor.from_checkpoint(model, device="auto")
    fold = json.loads((run_dir / "splits.json").read_text())["folds"][0]
    train_scan = scan_folder(data)
    if test is not None:
        held = [(c, None) for c in scan_folder(test).pairs]
    else:
        by_name = {c.name: c for c in train_scan.pairs}
        regions = fold.get("regions", {}).get("val", {})
        held = [(by_name[n], regions.get(n)) for n in fold["val"]]
    train_cases = [c for c in train_scan.pairs if c.name in set(fold["train"])]
    train_regions = fold.get("regions", {}).get("train", {})
    polarity = _otsu_polarity(train_cases, train_regions)
    classes = int(predictor.num_classes) if predictor.num_classes > 1 else 2
    band_map = _multiotsu_map(train_cases, train_regions, classes) if classes > 2 else None
    rows = []
    for case, box in held:
        image, labels, instances, spacing = _read(case)
        if box is not None and getattr(predictor, "target_spacing", None) is not None and spacing is not None \
                and not np.allclose(spacing, predictor.target_spacing, rtol=0.05):
            raise SystemExit(f"{case.name}: its held-out region is in target-spacing coordinates; "
                             "scoring a resampled single case is not supported here")
        pred_labels = predictor.predict_array(image, spacing=spacing).labels[0]
        otsu = _otsu(image, polarity)
        bands = _multiotsu(image, band_map, classes) if band_map is not None else None
        if box is not None:
            sl = tuple(slice(a, b) for a, b in box)
            image, labels, pred_labels, otsu = image[(slice(None),) + sl], labels[sl], pred_labels[sl], otsu[sl]
            instances = instances[sl] if instances is not None else None
            bands = bands[sl] if bands is not None else None
        truth = labels > 0
        row = {"case": case.name, "unet": _scores(pred_labels > 0, truth, instances), "otsu": _scores(otsu, truth, instances)}
        if band_map is not None:
            row["unet"]["classes"] = _class_counts(pred_labels, labels, classes)
            row["multiotsu"] = {"classes": _class_counts(bands, labels, classes)}
        rows.append(row)
    report = {"run_dir": str(run_dir), "model": model.name, "held_out": [r["case"] for r in rows],
              "otsu_polarity": polarity, "unet": _pool(rows, "unet"), "otsu": _pool(rows, "otsu"), "rows": rows}
    if band_map is not None:
        report["class_dice"] = {"unet": _class_dice(rows, "unet"), "multiotsu": _class_dice(rows, "multiotsu")}
        report["multiotsu_bands"] = band_map
    return report


def _read(case):
    from unetkit.data.io import read_input, read_labels

    from unetkit.inference.predictor import file_spacing

    read = [read_input(p) for p in case.images]
    image = np.concatenate([r[0] for r in read])
    truth_labels = read_labels(case.mask, image.ndim - 1)
    instances = read_labels(case.instances, image.ndim - 1) if case.instances is not None else None
    return image, truth_labels, instances, file_spacing(read[0][1])  # spacing: models with a target spacing


def _otsu(image: np.ndarray, polarity: str) -> np.ndarray:
    from skimage.filters import threshold_otsu

    gray = image.astype(np.float64).mean(axis=0)
    above = gray > threshold_otsu(gray)
    return above if polarity == "bright" else ~above


def _otsu_polarity(cases, regions: dict) -> str:
    """bright or dark foreground: whichever Otsu side scores the higher Dice on the training cases."""
    totals = {"bright": [0.0, 0.0], "dark": [0.0, 0.0]}
    for case in cases[:20]:
        image, labels, _, _ = _read(case)
        truth = labels > 0
        if case.name in regions:
            sl = tuple(slice(a, b) for a, b in regions[case.name])
            image, truth = image[(slice(None),) + sl], truth[sl]
        for side in totals:
            m = _otsu(image, side)
            totals[side][0] += 2 * float((m & truth).sum())
            totals[side][1] += float(m.sum() + truth.sum())
    return max(totals, key=lambda s: totals[s][0] / max(totals[s][1], 1.0))


def _multiotsu(image: np.ndarray, band_map: list[int], classes: int) -> np.ndarray:
    from skimage.filters import threshold_multiotsu

    gray = image.astype(np.float64).mean(axis=0)
    bands = np.digitize(gray, threshold_multiotsu(gray, classes=classes))
    return np.asarray(band_map)[bands]


def _multiotsu_map(cases, regions: dict, classes: int) -> list[int]:
    """For each of the `classes` intensity bands (dark to bright), the label filling most of it."""
    from skimage.filters import threshold_multiotsu

    counts = np.zeros((classes, classes))
    for case in cases[:20]:
        image, labels, _, _ = _read(case)
        if case.name in regions:
            sl = tuple(slice(a, b) for a, b in regions[case.name])
            image, labels = image[(slice(None),) + sl], labels[sl]
        gray = image.astype(np.float64).mean(axis=0)
        bands = np.digitize(gray, threshold_multiotsu(gray, classes=classes))
        np.add.at(counts, (bands.ravel(), np.clip(labels.ravel(), 0, classes - 1)), 1)
    return [int(i) for i in counts.argmax(axis=1)]


def _class_counts(pred: np.ndarray, truth: np.ndarray, classes: int) -> list[list[float]]:
    """[intersection, |pred| + |truth|] per foreground class."""
    return [[float(((pred == c) & (truth == c)).sum()), float((pred == c).sum() + (truth == c).sum())]
            for c in range(1, classes)]


def _class_dice(rows: list[dict], key: str) -> dict:
    """Per foreground class, Dice pooled over the held-out cases; and their mean."""
    per_class = []
    for c in range(len(rows[0][key]["classes"])):
        inter = sum(r[key]["classes"][c][0] for r in rows)
        total = sum(r[key]["classes"][c][1] for r in rows)
        per_class.append(2 * inter / total if total else float("nan"))
    return {"per_class": per_class, "mean": float(np.nanmean(per_class))}


def _scores(pred: np.ndarray, truth: np.ndarray, instances: np.ndarray | None) -> dict:
    from scipy import ndimage as ndi

    from unetkit.evaluation.measure import match_instances
    from unetkit.evaluation.postprocess import remove_small_instances, split_touching

    inter, total = float((pred & truth).sum()), float(pred.sum() + truth.sum())
    truth_inst = instances if instances is not None else ndi.label(truth)[0]
    if pred.ndim == 2 and instances is not None:  # touching cells: split as the demo does
        pred_inst = remove_small_instances(split_touching(pred, min_distance=7), 20)
    else:
        pred_inst = ndi.label(pred)[0]
    objects = match_instances(pred_inst, truth_inst, iou_threshold=0.5)
    return {"inter": inter, "total": total, "dice": 2 * inter / total if total else 1.0, "object_f1": objects["f1"]}


def _pool(rows: list[dict], key: str) -> dict:
    inter = sum(r[key]["inter"] for r in rows)
    total = sum(r[key]["total"] for r in rows)
    return {"dice_pooled": 2 * inter / total if total else 1.0,
            "dice_mean": float(np.mean([r[key]["dice"] for r in rows])) if rows else float("nan"),
            "object_f1_mean": float(np.mean([r[key]["object_f1"] for r in rows])) if rows else float("nan")}


def format_report(r: dict) -> str:
    lines = [f"run {r['run_dir']} ({r['model']}); held out: {len(r['held_out'])} case(s); "
             f"time {r['seconds'] if r['seconds'] is not None else 'n/a'} s; Otsu polarity {r['otsu_polarity']}",
             f"{'':24}{'Otsu':>10}{'auto U-Net':>12}"]
    for key, label in (("dice_pooled", "Dice (pooled)"), ("dice_mean", "Dice (mean per case)"),
                       ("object_f1_mean", "object F1 @ IoU 0.5")):
        lines.append(f"{label:24}{r['otsu'][key]:>10.3f}{r['unet'][key]:>12.3f}")
    if "class_dice" in r:
        c = r["class_dice"]
        lines.append(f"{'mean class Dice':24}{c['multiotsu']['mean']:>10.3f}{c['unet']['mean']:>12.3f}"
                     f"   (baseline: multi-Otsu, bands -> {r['multiotsu_bands']}; per class "
                     f"{[round(x, 3) for x in c['multiotsu']['per_class']]} vs {[round(x, 3) for x in c['unet']['per_class']]})")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
