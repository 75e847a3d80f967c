"""Cross-validation: K folds of one config, each a complete run (the one `train()` / Trainer path)
in its own subfolder; out-of-fold predictions, a CV summary, post-processing chosen on those
predictions, and an ensemble manifest that `unetkit predict RUN ...` uses.

    from unetkit.training import TrainConfig, train_folds
    result = train_folds(cfg)                       # all cfg.data.num_folds folds
    result = train_folds(cfg, folds=[2])            # only fold 2 (add others later with resume=)
    result = train_folds(None, resume="runs/cv")    # unfinished folds resume, finished ones are skipped

The run folder:
    config.yaml            the shared config (data.num_folds = K)
    splits.json            the K folds: seeded k-fold over the case names, or a copy of data.split_file
    cv.json                the folds asked for
    fold_<i>/              a complete run of fold i (config.yaml, splits.json, model files, metrics.csv, ...)
    fold_<i>/validation/   out-of-fold predictions: fold i's validation cases predicted by its final
                           model (last.safetensors), without post-processing, as nnU-Net keeps them
    fold_<i>/validation.json   their per-case confusion counts (written last: the fold is complete)
    cv_summary.json/.csv   Dice, IoU, precision, recall per fold, pooled over all cases, per class;
                           and the post-processing trials
    cv_per_case.csv        one row per case and class
    ensemble.json          the fold models and the chosen post-processing (written last). The plan is
                           also stored in each fold's last.safetensors, so `predict` applies it.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from unetkit.errors import ConfigError
from unetkit.inference.predictor import ENSEMBLE_MANIFEST  # the file Predictor.from_run reads
from unetkit.training.artifacts import write_json
from unetkit.training.config import TrainConfig
from unetkit.training.trainer import FitResult, default_run_name, prepare_run_dir

CV_MANIFEST = "cv.json"
CHECKPOINT = "last"  # the fold's final model: best.safetensors was chosen on the very cases it would predict


@dataclass
class CVResult:
    run_dir: Path
    num_folds: int
    trained: dict[int, FitResult] = field(default_factory=dict)  # folds trained (or resumed) by this call
    skipped: list[int] = field(default_factory=list)  # folds already finished
    complete: bool = False  # every fold finished and predicted: summary and ensemble.json written
    summary: dict[str, Any] | None = None


def is_cv_run(path: str | os.PathLike) -> bool:
    """Whether `path` is a cross-validation run folder (made by `train_folds`)."""
    return (Path(path) / CV_MANIFEST).is_file()


def fold_dir(run_dir: str | os.PathLike, fold: int) -> Path:
    return Path(run_dir) / f"fold_{fold}"


def train_folds(config: TrainConfig | None, folds: Sequence[int] | None = None, resume: str | os.PathLike | None = None,
                **train_kwargs: Any) -> CVResult:
    """Train the folds `folds` (default: all `config.data.num_folds`) of a cross-validation run.

    Each fold is a normal run in `RUN/fold_<i>/` trained by `unetkit.training.train`. With `resume`
    (a run folder made by this function) the folds asked for before plus `folds` are continued:
    a finished fold is skipped, an interrupted one resumes from its last checkpoint. When every fold
    is finished, the out-of-fold predictions are scored and post-processing is chosen (see the
    module docstring). `train_kwargs` go to `train()` (e.g. callbacks).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("cross-validation trains its folds one after another in one process; under torchrun "
                          "train a single split, or run train_folds without torchrun")
    folder = None
    if resume is not None:
        run_dir, base, num_folds, wanted = _open_run(Path(resume), folds)
    else:
        if config is None:
            raise ConfigError("train_folds() needs a config, or resume= a cross-validation run folder")
        run_dir, base, num_folds, wanted, folder = _new_run(config, folds)
    say = print if base.progress == "bar" else (lambda *a, **k: None)
    try:
        result = _run_folds(run_dir, base, num_folds, wanted, say, train_kwargs)
    except BaseException:
        if folder is not None:
            if any(fold_state(fold_dir(run_dir, f)) != "new" for f in range(num_folds)):
                folder.commit()  # the new run has started: a run it replaced goes
            else:
                folder.abandon()  # trained nothing: no half-made folder; a replaced run is put back
        raise
    if folder is not None:
        folder.commit()
    missing = [f for f in range(num_folds) if fold_state(fold_dir(run_dir, f)) != "predicted"]
    if missing:
        say(f"cross-validation: fold(s) {', '.join(map(str, missing))} of {num_folds} not trained yet; "
            f"continue with `unetkit train --resume {run_dir} --fold N` "
            "(Python: train_folds(None, resume=..., folds=[...]))")
        return result
    result.summary = summarize_cv(run_dir) if not (run_dir / ENSEMBLE_MANIFEST).is_file() else \
        json.loads((run_dir / "cv_summary.json").read_text(encoding="utf-8"))
    result.complete = True
    say(format_summary(result.summary))
    return result


def _run_folds(run_dir: Path, base: TrainConfig, num_folds: int, wanted: list[int], say: Any,
               train_kwargs: dict[str, Any]) -> CVResult:
    from unetkit.training.run import train

    result = CVResult(run_dir, num_folds)
    for fold in wanted:
        where = fold_dir(run_dir, fold)
        state = fold_state(where)
        if state in ("trained", "predicted"):
            say(f"fold {fold}: finished before, skipped ({where})")
            result.skipped.append(fold)
        elif state == "started":
            say(f"fold {fold}/{num_folds}: resuming {where}")
            result.trained[fold] = train(None, resume=where, **train_kwargs)
        else:
            say(f"fold {fold}/{num_folds}: training into {where}")
            result.trained[fold] = train(fold_config(base, run_dir, fold, restart=state == "empty"), **train_kwargs)
        if fold_state(where) != "predicted":
            predict_validation(where, base)
    return result


# ---- the run folder ---------------------------------------------------------------------------
def _new_run(config: TrainConfig, folds: Sequence[int] | None) -> tuple[Path, TrainConfig, int, list[int], Any]:
    """Check the data and the folds, then create the run folder with config.yaml, splits.json, cv.json."""
    from unetkit.data.splits import load_splits, make_kfold, save_splits

    config = TrainConfig.from_dict(config.to_dict())
    data = config.data
    if data.fold is not None:
        raise ConfigError("data.fold selects one split of a single run; for cross-validation give the folds "
                          "to train_folds(folds=[...]) (CLI: --fold N) and leave data.fold unset")
    if getattr(config, "no_val", False):
        raise ConfigError("cross-validation validates every fold on its held-out cases; no_val (--no-val) "
                          "does not apply to it")
    if data.split_file is not None:
        split_folds = load_splits(data.split_file)["folds"]
        num_folds = len(split_folds)
        if num_folds < 2:
            raise ConfigError(f"{data.split_file}: holds {num_folds} split; cross-validation needs at least 2 folds")
        data.num_folds = num_folds
    else:
        num_folds = data.num_folds
        split_folds = None
    if num_folds < 2:
        raise ConfigError(f"data.num_folds must be at least 2 for cross-validation, got {num_folds}")
    wanted = _check_folds(folds, num_folds)
    names, images, sample = _case_names(config)
    if split_folds is None:
        if len(names) < num_folds:
            raise ConfigError(f"{images or data.dataset}: cross-validation with {num_folds} folds needs at least "
                              f"{num_folds} cases; there are {len(names)} (lower --folds)")
        split_folds = make_kfold(names, num_folds, config.seed)
    else:
        unknown = sorted({n for f in split_folds for n in f["train"] + f["val"]} - set(names))
        if unknown:
            raise ConfigError(f"{data.split_file}: names cases that are not in the data: {', '.join(unknown[:5])}")

    from unetkit.training.distributed import DistContext

    dist = DistContext()
    run_dir = Path(config.out_dir) / default_run_name(config)
    config.name = run_dir.name
    folder = prepare_run_dir(config, run_dir, False, dist)  # unetkit.training.runfolder.RunFolder
    try:
        empty = run_dir / "checkpoints"  # the folds keep the checkpoints; the CV folder has none
        if empty.is_dir() and not any(empty.iterdir()):
            empty.rmdir()
        source = str(images) if images is not None else f"sample dataset {data.dataset}"
        if sample is not None:  # written once here and shared by the folds
            from unetkit.datasets import write_samples

            write_samples(sample, run_dir / "data")
            data.images, data.masks, data.mask_suffix, data.dataset = str(run_dir / "data"), None, "", None
            data.dataset_options = {}
            write_config(config, run_dir / "config.yaml")
        save_splits(run_dir / "splits.json", split_folds, seed=config.seed, overwrite=True, source=source)
        write_json({"version": 1, "num_folds": num_folds, "folds": wanted, "source": source,
                    "checkpoint": CHECKPOINT}, run_dir / CV_MANIFEST)
    except BaseException:
        folder.abandon()  # holds nothing but what was just written; a replaced run is put back
        raise
    return run_dir, config, num_folds, wanted, folder


def _open_run(run_dir: Path, folds: Sequence[int] | None) -> tuple[Path, TrainConfig, int, list[int]]:
    if not is_cv_run(run_dir):
        raise ConfigError(f"{run_dir}: not a cross-validation run (no {CV_MANIFEST}); a single run resumes with "
                          "train(None, resume=...) / `unetkit train --resume`")
    try:
        manifest = json.loads((run_dir / CV_MANIFEST).read_text(encoding="utf-8"))
        num_folds, asked = int(manifest["num_folds"]), [int(f) for f in manifest["folds"]]
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"{run_dir / CV_MANIFEST}: damaged ({err})") from None
    base = TrainConfig.from_yaml(run_dir / "config.yaml")
    wanted = sorted(set(asked) | set(_check_folds(folds, num_folds) if folds is not None else []))
    if wanted != sorted(asked):
        write_json({**manifest, "folds": wanted}, run_dir / CV_MANIFEST)
    return run_dir, base, num_folds, wanted


def _check_folds(folds: Sequence[int] | None, num_folds: int) -> list[int]:
    if folds is None:
        return list(range(num_folds))
    wanted = sorted({int(f) for f in folds})
    bad = [f for f in wanted if not 0 <= f < num_folds]
    if bad or not wanted:
        raise ConfigError(f"fold(s) {bad or folds} out of range: the run has {num_folds} folds (0..{num_folds - 1})")
    return wanted


def _case_names(config: TrainConfig) -> tuple[list[str], Path | None, Any]:
    """(case names, image folder or None, loaded sample dataset or None); a folder is checked as training would."""
    data = config.data
    if data.dataset is not None:
        from unetkit.datasets import DATASETS, load_dataset

        dims = config.model.spatial_dims
        if dims not in DATASETS.entry(data.dataset).info.get("dims", (2,)):
            raise ConfigError(f"sample dataset '{data.dataset}' has no {dims}D version")
        options = dict(data.dataset_options)
        if len(DATASETS.entry(data.dataset).info.get("dims", (2,))) > 1:
            options.setdefault("dims", dims)
        sample = load_dataset(data.dataset, **options)
        return [s.name for s in sample.samples], None, sample
    if data.images is None:
        raise ConfigError("no training data: set data.images (a folder) or data.dataset (a sample dataset)")
    from unetkit.data.checks import check_dataset
    from unetkit.data.folder import scan_folder

    images, masks = Path(data.images), Path(data.masks) if data.masks else None
    scan = scan_folder(images, masks, data.mask_suffix or None)
    check_dataset(images, masks, mask_suffix=data.mask_suffix or None, num_classes=max(2, config.model.num_classes),
                  mask_kind=data.mask_kind, spatial_dims=config.model.spatial_dims, scan=scan).raise_if_problems()
    return [c.name for c in scan.pairs], images, None


def fold_config(base: TrainConfig, run_dir: Path, fold: int, restart: bool = False) -> TrainConfig:
    """The config of fold `fold`: the shared config, validating on that fold of RUN/splits.json."""
    cfg = TrainConfig.from_dict(base.to_dict())
    cfg.data.fold, cfg.data.split_file = fold, str(run_dir / "splits.json")
    cfg.out_dir, cfg.name, cfg.overwrite = str(run_dir), f"fold_{fold}", restart
    return cfg


def fold_state(where: Path) -> str:
    """new | empty (a folder without a checkpoint) | started | trained | predicted (out-of-fold done)."""
    if (where / "validation.json").is_file():
        return "predicted"
    report = where / "report.json"
    if report.is_file():
        try:
            finished = not json.loads(report.read_text(encoding="utf-8")).get("interrupted", False)
        except ValueError:
            finished = False
        if finished:
            return "trained"
    if (where / "checkpoints" / "last.pt").is_file():
        return "started"
    return "empty" if where.exists() else "new"


def write_config(config: TrainConfig, path: Path) -> None:
    from unetkit.io.atomic import atomic_path

    with atomic_path(path) as tmp:
        config.to_yaml(tmp)


# ---- out-of-fold predictions ------------------------------------------------------------------
def predict_validation(where: Path, base: TrainConfig) -> dict[str, Any]:
    """Predict fold `where`'s validation cases with its final model (the one Predictor path, no
    post-processing); write the masks to `where/validation/` and the per-case counts to
    `where/validation.json`."""
    from unetkit.data.dataset import SegmentationDataset
    from unetkit.data.folder import scan_folder
    from unetkit.data.io import read_labels, suffix_of, write_mask
    from unetkit.data.masks import to_semantic
    from unetkit.data.splits import get_fold
    from unetkit.inference.predictor import Predictor, file_spacing, read_input
    from unetkit.metrics import MetricAccumulator

    data, dims = base.data, base.model.spatial_dims
    num_classes = max(2, base.model.num_classes)
    split = get_fold(where / "splits.json", 0)
    scan = scan_folder(data.images, data.masks or None, data.mask_suffix or None)
    val = SegmentationDataset(scan, names=split["val"], spatial_dims=dims, normalize=data.normalize,
                              num_classes=num_classes, mask_kind=data.mask_kind, cache=False)
    predictor = Predictor.from_checkpoint(where / f"{CHECKPOINT}.safetensors", device=base.device,
                                          postprocessing=[])
    out = where / "validation"
    acc = MetricAccumulator(num_classes, include_background=False)
    cases = []
    for case in val.cases:
        parts = [read_input(p, dims) for p in case.images]
        image = np.concatenate([array for array, _ in parts])
        labels = predictor.predict_array(image, source=case.images[0], spacing=file_spacing(parts[0][1])).labels
        path = out / f"{case.name}{suffix_of(predictor.output_paths(case.images[0], out)['mask'])}"
        write_mask(path, labels, parts[0][1], overwrite=True)  # our own output (a rerun after a crash)
        truth = to_semantic(read_labels(case.mask, dims), val.mask_kind)[0]
        acc.update(torch.from_numpy(labels.astype(np.int64))[None], torch.from_numpy(truth)[None, None],
                   names=[case.name])
        cases.append({"name": case.name, "prediction": str(path.relative_to(where)), "reference": str(case.mask)})
    record = {"checkpoint": f"{CHECKPOINT}.safetensors", "mask_kind": val.mask_kind, "num_classes": num_classes,
              "spatial_dims": dims, "cases": cases, "counts": [c.tolist() for c in acc.counts],
              "summary": acc.compute()}
    write_json(record, where / "validation.json")
    return record


# ---- summary, post-processing, ensemble -------------------------------------------------------
def summarize_cv(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Score the out-of-fold predictions of every fold (per fold, pooled, per class), choose the
    post-processing on them, store it in the fold model files, and write ensemble.json."""
    from unetkit.data.io import read_labels
    from unetkit.data.masks import to_semantic
    from unetkit.evaluation.measure import write_rows_csv
    from unetkit.evaluation.postprocess import describe_postprocessing, select_postprocessing
    from unetkit.io.checkpoint import update_extra
    from unetkit.metrics import MetricAccumulator

    run_dir = Path(run_dir)
    base = TrainConfig.from_yaml(run_dir / "config.yaml")
    num_folds = int(json.loads((run_dir / CV_MANIFEST).read_text(encoding="utf-8"))["num_folds"])
    records = [json.loads((fold_dir(run_dir, f) / "validation.json").read_text(encoding="utf-8"))
               for f in range(num_folds)]
    num_classes, dims = records[0]["num_classes"], records[0]["spatial_dims"]

    def accumulator(chosen: list[int]) -> MetricAccumulator:
        acc = MetricAccumulator(num_classes, include_background=False)
        for f in chosen:
            acc.merge({"num_classes": num_classes, "metrics": list(acc.metrics), "surface": [],
                       "names": [c["name"] for c in records[f]["cases"]],
                       "counts": [np.asarray(c, dtype=np.int64) for c in records[f]["counts"]]})
        return acc

    per_fold = [accumulator([f]) for f in range(num_folds)]
    pooled = accumulator(list(range(num_folds)))
    pairs = []
    for f, record in enumerate(records):
        for case in record["cases"]:
            pred_path, ref_path = fold_dir(run_dir, f) / case["prediction"], Path(case["reference"])
            pairs.append((lambda p=pred_path: read_labels(p, dims),
                          lambda p=ref_path, k=record["mask_kind"]: to_semantic(read_labels(p, dims), k)[0]))
    choice = select_postprocessing(pairs, base.model.num_classes)

    summary = {"num_folds": num_folds, "checkpoint": f"{CHECKPOINT}.safetensors", "num_classes": num_classes,
               "folds": [{"fold": f, **acc.compute()} for f, acc in enumerate(per_fold)],
               "pooled": pooled.compute(),
               "mean_of_folds": {"dice": float(np.mean([a.compute()["dice"]["mean"] for a in per_fold]))},
               "postprocessing": {**choice, "description": describe_postprocessing(choice["steps"])}}
    write_json(summary, run_dir / "cv_summary.json")
    rows = []
    for scope, acc in [*((f"fold_{f}", a) for f, a in enumerate(per_fold)), ("pooled", pooled)]:
        result = acc.compute()
        for name in result["dice"]["per_class"]:
            row: dict[str, Any] = {"scope": scope, "class": name, "cases": result["num_images"]}
            for metric in acc.metrics:
                values = result[metric]["per_class"][name]
                row.update({f"{metric}_mean": values["mean"], f"{metric}_std": values["std"],
                            f"{metric}_global": values["global"]})
            rows.append(row)
    write_rows_csv(rows, run_dir / "cv_summary.csv", overwrite=True)
    case_rows = [{"fold": f, **row} for f, acc in enumerate(per_fold) for row in acc.rows()]
    write_rows_csv(case_rows, run_dir / "cv_per_case.csv", overwrite=True)

    models = [f"fold_{f}/{CHECKPOINT}.safetensors" for f in range(num_folds)]
    origin = f"cross-validation of {run_dir} ({num_folds} folds)"
    for model in models:
        update_extra(run_dir / model, {"postprocessing": choice["steps"], "postprocessing_source": origin})
    write_json({"format": "unetkit-ensemble", "version": 1, "models": models, "postprocessing": choice["steps"],
                "postprocessing_source": origin, "cv_summary": "cv_summary.json"}, run_dir / ENSEMBLE_MANIFEST)
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """A few lines for the terminal: Dice per fold, pooled, per class, and the post-processing."""
    lines = ["cross-validation (out-of-fold predictions, Dice):"]
    for row in summary["folds"]:
        lines.append(f"  fold {row['fold']}: {row['dice']['mean']:.4f} ({row['num_images']} cases)")
    pooled = summary["pooled"]["dice"]
    lines.append(f"  pooled: mean {pooled['mean']:.4f}, global {pooled['global']:.4f}; per class: "
                 + ", ".join(f"{k} {v['mean']:.4f}" for k, v in pooled["per_class"].items()))
    pp = summary["postprocessing"]
    lines.append(f"  post-processing: {pp['description']} (mean Dice {pp['baseline']['mean_dice']:.4f} -> "
                 f"{pp['final']['mean_dice']:.4f})")
    return "\n".join(lines)
