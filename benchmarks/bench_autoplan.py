"""Auto-planned training vs a classical threshold, on one dataset folder.

    python benchmarks/bench_autoplan.py DATA [--test TEST] [--budget 3m] [--out-dir /tmp/bench]

1. `unetkit train --images DATA --budget B` with no other flag (the plan for this device), timed.
2. Held-out cases: every case of TEST when given (never seen in training); else the run's own
   validation cases from splits.json (for a single image/volume: its held-out region).
3. The model (best.safetensors, else last) predicts each held-out case whole, as a user would.
4. Baseline: an Otsu threshold per image (per volume in 3D), its polarity (bright or dark
   foreground) chosen on the training cases.
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
    ap.add_argument("--extra", nargs="*", default=[], help="more `unetkit train` flags (a hand-tuned run)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=None, help="PyTorch CPU threads for scoring (e.g. 1 on a "
                                                                 "busy machine); the run plans its own")
    args = ap.parse_args()
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
    polarity = _otsu_polarity(train_cases, fold.get("regions", {}).get("train", {}))
    rows = []
    for case, box in held:
        image, truth, instances = _read(case)
        pred = predictor.predict_array(image).labels[0] > 0
        otsu = _otsu(image, polarity)
        if box is not None:
            sl = tuple(slice(a, b) for a, b in box)
            image, truth, pred, otsu = image[(slice(None),) + sl], truth[sl], pred[sl], otsu[sl]
            instances = instances[sl] if instances is not None else None
        rows.append({"case": case.name, "unet": _scores(pred, truth, instances), "otsu": _scores(otsu, truth, instances)})
    return {"run_dir": str(run_dir), "model": model.name, "held_out": [r["case"] for r in rows],
            "otsu_polarity": polarity, "unet": _pool(rows, "unet"), "otsu": _pool(rows, "otsu"), "rows": rows}


def _read(case):
    from unetkit.data.io import read_input, read_labels

    image = np.concatenate([read_input(p)[0] for p in case.images])
    truth_labels = read_labels(case.mask, image.ndim - 1)
    instances = read_labels(case.instances, image.ndim - 1) if case.instances is not None else None
    return image, truth_labels > 0, instances


def _otsu(image: np.ndarray, polarity: str) -> np.ndarray:
    from skimage.filters import threshold_otsu

    gray = image.astype(np.float64).mean(axis=0)
    above = gray > threshold_otsu(gray)
    return above if polarity == "bright" else ~above


def _otsu_polarity(cases, regions: dict) -> str:
    """bright or dark foreground: whichever Otsu side scores the higher Dice on the training cases."""
    totals = {"bright": [0.0, 0.0], "dark": [0.0, 0.0]}
    for case in cases[:20]:
        image, truth, _ = _read(case)
        if case.name in regions:
            sl = tuple(slice(a, b) for a, b in regions[case.name])
            image, truth = image[(slice(None),) + sl], truth[sl]
        for side in totals:
            m = _otsu(image, side)
            totals[side][0] += 2 * float((m & truth).sum())
            totals[side][1] += float(m.sum() + truth.sum())
    return max(totals, key=lambda s: totals[s][0] / max(totals[s][1], 1.0))


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
    return "\n".join(lines)


if __name__ == "__main__":
    main()
