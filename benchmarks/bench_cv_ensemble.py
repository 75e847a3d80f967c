"""Ensemble of cross-validation folds vs the single fold models, on held-out synthetic cells.

A pool of `--count` synthetic-cells images (2D, `--classes` classes with background) is trained with
`unetkit.training.train_folds` (`--folds` folds, each fold a normal run). A separate set of
`--test` images (another seed, never seen in training or selection) is then scored with
`unetkit.evaluation.evaluate_folder`:
  - each fold's final model alone (no post-processing),
  - the ensemble of all folds (`Predictor.from_run`: probabilities averaged), without and with the
    post-processing chosen on the out-of-fold predictions.
Also printed: the CV (out-of-fold) Dice and the post-processing chosen.

    python benchmarks/bench_cv_ensemble.py [--folds 5] [--epochs 30] [--size 96] [--count 15] [--test 8]
    python benchmarks/bench_cv_ensemble.py --out W --reuse   # score the folds of W/cv finished so far
    python benchmarks/bench_cv_ensemble.py --folds 2 --epochs 1 --size 48 --count 4 --test 2 --batch-size 2   # smoke run
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from unetkit.datasets import write_dataset
from unetkit.evaluation.evaluate import evaluate_folder
from unetkit.training import TrainConfig, train_folds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--count", type=int, default=15, help="images in the cross-validation pool")
    parser.add_argument("--test", type=int, default=8, help="held-out test images")
    parser.add_argument("--classes", type=int, default=3, help="classes including background (2..4)")
    parser.add_argument("--features", default="8,16,32")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--out", default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--reuse", action="store_true", help="no training: score the finished folds of --out/cv "
                        "(the ensemble of those folds, without post-processing when the CV is incomplete)")
    args = parser.parse_args()

    work = Path(args.out or tempfile.mkdtemp(prefix="bench-cv-"))
    pool, test = work / "pool", work / "test"
    if args.reuse:
        return score_finished(work, test)
    write_dataset("synthetic-cells", pool, size=args.size, count=args.count, num_classes=args.classes, seed=1,
                  overwrite=True)
    write_dataset("synthetic-cells", test, size=args.size, count=args.test, num_classes=args.classes, seed=2,
                  overwrite=True)
    k = args.classes if args.classes > 2 else 1  # model outputs: 1 = binary (sigmoid), else softmax over all
    cfg = TrainConfig().with_overrides([
        f"data.images={pool}", f"data.num_folds={args.folds}", f"data.patch_size=[{args.size},{args.size}]",
        f"data.batch_size={args.batch_size}", "data.num_workers=0", "data.augmentation=light", f"model.num_classes={k}",
        f"model.kwargs.features=[{args.features}]", "optim.lr=3e-3", "schedule.name=cosine",
        "early_stop_patience=null", f"epochs={args.epochs}", "progress=quiet", "tensorboard=false", "overlays=0",
        f"out_dir={work}", "name=cv", "overwrite=true",
    ])
    start = time.perf_counter()
    result = train_folds(cfg)
    train_s = time.perf_counter() - start
    run = result.run_dir

    def score(source, name: str, **options) -> float:
        summary = evaluate_folder(source, test, work / "eval" / name, hd95=False, overwrite=True,
                                  predictor_options={"device": "cpu", **options})
        return float(summary["mean_dice"])

    singles = [score(run / f"fold_{f}" / "last.safetensors", f"fold_{f}", postprocessing=[])
               for f in range(args.folds)]
    ensemble = score(run, "ensemble", postprocessing=[])
    ensemble_pp = score(run, "ensemble_pp")
    summary = result.summary
    rows = {
        "cv_dice_out_of_fold": summary["pooled"]["dice"]["mean"],
        "postprocessing": summary["postprocessing"]["description"],
        "test_dice_per_fold": singles,
        "test_dice_mean_single_fold": float(np.mean(singles)),
        "test_dice_best_single_fold": float(np.max(singles)),
        "test_dice_ensemble": ensemble,
        "test_dice_ensemble_postprocessed": ensemble_pp,
        "training_seconds": train_s,
        "settings": vars(args),
    }
    print(f"{args.folds} folds x {args.epochs} epochs on {args.count} images of {args.size}^2, "
          f"{args.classes - 1} object class(es); {args.test} held-out test images")
    print(f"  CV (out-of-fold) Dice       {rows['cv_dice_out_of_fold']:.4f}")
    print("  test Dice per fold          " + " ".join(f"{d:.4f}" for d in singles))
    print(f"  mean single fold            {rows['test_dice_mean_single_fold']:.4f}")
    print(f"  best single fold            {rows['test_dice_best_single_fold']:.4f}")
    print(f"  ensemble of folds           {ensemble:.4f}")
    print(f"  ensemble + post-processing  {ensemble_pp:.4f}  ({rows['postprocessing']})")
    print(f"  training {train_s:.0f} s (shared machine: re-take timings on a quiet one); work folder {work}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


def score_finished(work: Path, test: Path) -> None:
    run = work / "cv"
    folds = [f for f in range(100) if (run / f"fold_{f}" / "report.json").is_file()]
    files = [run / f"fold_{f}" / "last.safetensors" for f in folds]

    def score(source, name: str) -> float:
        summary = evaluate_folder(source, test, work / "eval" / name, hd95=False, overwrite=True,
                                  predictor_options={"device": "cpu", "postprocessing": []})
        return float(summary["mean_dice"])

    singles = [score(path, f"fold_{f}") for f, path in zip(folds, files)]
    ensemble = score(files, "ensemble_finished")
    print(f"finished folds {folds} of {run}; held-out test images: {test}")
    print("  test Dice per fold          " + " ".join(f"{d:.4f}" for d in singles))
    print(f"  mean single fold            {np.mean(singles):.4f}")
    print(f"  ensemble of these folds     {ensemble:.4f}")


if __name__ == "__main__":
    main()
