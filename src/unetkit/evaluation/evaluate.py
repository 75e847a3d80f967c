"""`evaluate_folder`: score a model file, an ensemble (several model files or a cross-validation
run folder), or masks already predicted, against a labelled folder.

Outputs in `out_dir`:
    per_image.csv   one row per image and class: dice, iou, precision, recall, hd95, pixel counts
    per_class.csv   per class: mean / std / median Dice and means of the other metrics
    objects.csv     (objects=True) per image: object tp, fp, fn, precision, recall, f1 at IoU >= threshold,
                    and which ground truth it used: the instance labels of `instances/` where the
                    folder has them (as `write-dataset` writes), else connected components of the mask
    summary.json    dataset-level numbers (mean foreground Dice, per class, objects) and what they cover
    dice.png        per-image Dice distribution: histogram and box plot per class

A class absent from both the ground truth and the prediction of an image is left out of every mean
(its per_image.csv cells are empty), as in nnU-Net: see `unetkit.metrics.aggregate`. summary.json
names the convention and counts the images, classes and left-out pairs behind each figure.

Ground-truth masks: binary models compare against `mask > 0`; multi-class models against the
stored class indices (values outside 0..K-1 other than `ignore_index` are an error).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from unetkit.data.folder import scan_folder
from unetkit.data.io import is_image_file, read_mask, stem_of
from unetkit.errors import DataError
from unetkit.evaluation.measure import match_instances, write_rows_csv
from unetkit.evaluation.postprocess import instances_from_labels, remove_small_instances
from unetkit.io.atomic import atomic_path
from unetkit.io.figures import new_figure, save_figure
from unetkit.metrics import confusion_counts, dice, hausdorff_distance_95, iou, precision, recall
from unetkit.metrics.aggregate import CONVENTION, aggregate_scores, nan_stats, present_classes

OUTPUTS = ("per_image.csv", "per_class.csv", "summary.json", "dice.png")


def evaluate_folder(source: str | os.PathLike | Sequence[str | os.PathLike], data_dir: str | os.PathLike,
                    out_dir: str | os.PathLike,
                    masks_dir: str | os.PathLike | None = None, num_classes: int | None = None,
                    class_names: Sequence[str] | None = None, ignore_index: int | None = None,
                    include_background: bool = False, hd95: bool = True, objects: bool = False,
                    split: bool = False, min_distance: int = 5, iou_threshold: float = 0.5, min_size: int = 0,
                    spacing: Sequence[float] | None = None, overwrite: bool = False,
                    predictor_options: dict[str, Any] | None = None, progress: bool = False) -> dict[str, Any]:
    """Evaluate predictions of `source` on the labelled images of `data_dir`.

    Args:
        source: a model file (images are predicted), a list of model files or a cross-validation run
            folder (an ensemble, `Predictor.load`), or a folder of predicted masks named by image
            stem (a `predict` output folder works: its `masks/` subfolder is used). The models'
            post-processing is applied (`predictor_options={"postprocessing": []}` turns it off).
        data_dir: images + masks, any layout `unetkit.data.folder.scan_folder` knows; `masks_dir`
            names the masks folder explicitly.
        num_classes: classes including background (default: from the model; for a predictions
            folder, 2 when the masks are binary (0/1 or 0/255), else the largest label + 1).
        objects: also score object detection with `object_scores`: predicted instances are connected
            components per class (split by watershed when `split`, smaller than `min_size` removed);
            true instances are the case's instance labels (`instances/`) when present, else the
            connected components of its mask. summary.json says which.
        spacing: pixel size for HD95 (default: pixels).
    Returns:
        the summary dict (also written to summary.json).
    """
    out_dir = Path(out_dir)
    targets = [out_dir / name for name in OUTPUTS + (("objects.csv",) if objects else ())]
    if not overwrite:
        for target in targets:
            if target.exists():
                raise FileExistsError(f"{target} exists; pass overwrite=True (--overwrite) to replace it")
    cases = scan_folder(data_dir, masks_dir).pairs
    if not cases:
        raise DataError(f"{data_dir}: no image with a matching mask")
    predict, num_classes, binary, names, described = _prediction_source(source, cases, num_classes, class_names,
                                                                        predictor_options or {})
    classes = list(range(0 if include_background else 1, num_classes))
    rows: list[dict[str, Any]] = []
    object_rows: list[dict[str, Any]] = []
    iterator = cases
    if progress:
        from tqdm import tqdm

        iterator = tqdm(cases, desc="evaluate", unit="image")
    for case in iterator:
        pred = predict(case)
        true = _target(read_mask(case.mask), case.mask, num_classes, binary, ignore_index)
        if pred.shape != true.shape:
            raise DataError(f"{case.mask}: mask shape {true.shape} != prediction shape {pred.shape}")
        rows += _image_rows(case.name, pred, true, classes, names, num_classes, ignore_index, hd95, spacing)
        if objects:
            true_instances = None
            if case.instances is not None:
                true_instances = read_mask(case.instances)
                if true_instances.shape != true.shape:
                    raise DataError(f"{case.instances}: instance labels {true_instances.shape} != mask {true.shape}")
                if ignore_index is not None:
                    true_instances = np.where(true == ignore_index, 0, true_instances)
            scores = object_scores(pred, true, true_instances, split=split, min_distance=min_distance,
                                   min_size=min_size, iou_threshold=iou_threshold, ignore_index=ignore_index)
            object_rows.append({"image": case.name, **scores,
                                "ground_truth": "instances" if true_instances is not None else "components"})
    summary = _summary(rows, object_rows, classes, names, source, data_dir, num_classes, iou_threshold)
    summary.update(described)
    write_rows_csv(rows, out_dir / "per_image.csv", overwrite=overwrite)
    write_rows_csv(summary.pop("_class_rows"), out_dir / "per_class.csv", overwrite=overwrite)
    if objects:
        write_rows_csv(object_rows, out_dir / "objects.csv", overwrite=overwrite)
    with atomic_path(out_dir / "summary.json", overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps(_json_safe(summary), indent=2))
    dice_plot(rows, out_dir / "dice.png", overwrite=overwrite)
    return summary


def object_scores(pred: np.ndarray, true: np.ndarray | None = None, true_instances: np.ndarray | None = None,
                  split: bool = False, min_distance: int = 5, min_size: int = 0, iou_threshold: float = 0.5,
                  ignore_index: int | None = None) -> dict[str, Any]:
    """Object detection scores of predicted class labels `pred` (*S) against true instances.

    Predicted instances: connected components per class (watershed-split when `split`), those under
    `min_size` pixels dropped. Truth: `true_instances` when given (instance ids), else the connected
    components of the class labels `true` (touching objects then merge: fewer, larger true objects).
    Returns `match_instances`' scores plus `pred_objects` / `true_objects` counts. The demo scores
    with this function too, so both report the same numbers for the same prediction.
    """
    pred_instances = instances_from_labels(pred, split=split, min_distance=min_distance)
    if min_size > 0:
        pred_instances = remove_small_instances(pred_instances, min_size)
    if true_instances is None:
        if true is None:
            raise ValueError("object_scores needs true class labels or true instances")
        true_instances = instances_from_labels(np.where(true == ignore_index, 0, true)
                                               if ignore_index is not None else true)
    scores = match_instances(pred_instances, true_instances, iou_threshold)
    return {**scores, "pred_objects": int(scores["tp"] + scores["fp"]),
            "true_objects": int(scores["tp"] + scores["fn"])}


def _prediction_source(source: str | os.PathLike, cases: list, num_classes: int | None,
                       class_names: Sequence[str] | None, options: dict[str, Any]):
    """(case -> predicted labels (*S), num_classes, binary, class names, what the model applies)."""
    if isinstance(source, (list, tuple)) or Path(source).is_file() or _is_run_folder(Path(source)):
        from unetkit.inference.predictor import Predictor, file_spacing, read_input

        predictor = Predictor.load(source, **options)
        if predictor.mode == "multilabel":
            raise DataError(f"{source}: evaluate supports binary and multi-class models, not multilabel")
        binary = predictor.mode == "binary"
        k = 2 if binary else predictor.num_classes
        names = list(class_names or predictor.class_names or [])

        def predict(case) -> np.ndarray:
            parts = [read_input(p, predictor.spatial_dims) for p in case.images]
            image = np.concatenate([array for array, _ in parts])
            return predictor.predict_array(image, source=case.images[0], spacing=file_spacing(parts[0][1])).labels[0]

        described = {"models": len(predictor.models), "postprocessing": predictor.postprocessing,
                     "postprocessing_note": predictor.describe_postprocessing()}
        return predict, k, binary, _names(names, k), described
    source = Path(source)
    if not source.is_dir():
        raise DataError(f"{source}: neither a model file nor a folder of predicted masks")
    folder = source / "masks" if (source / "masks").is_dir() else source
    found = {stem_of(p): p for p in sorted(folder.iterdir()) if p.is_file() and is_image_file(p)}
    missing = [c.name for c in cases if c.name not in found]
    if missing:
        raise DataError(f"{folder}: no predicted mask for {len(missing)} image(s): {', '.join(missing[:5])}"
                        + (" ..." if len(missing) > 5 else ""))
    if num_classes is None:
        values = set()
        for case in cases:
            values |= set(np.unique(read_mask(case.mask)).tolist())
        num_classes = 2 if values <= {0, 1} or values <= {0, 255} else int(max(values)) + 1
    binary = num_classes == 2

    def read_prediction(case) -> np.ndarray:
        pred = read_mask(found[case.name])
        return (pred > 0).astype(np.int64) if binary else pred.astype(np.int64)

    return read_prediction, num_classes, binary, _names(list(class_names or []), num_classes), {}


def _is_run_folder(path: Path) -> bool:
    """A training run folder (models inside), not a folder of predicted masks."""
    return path.is_dir() and any((path / name).is_file() for name in ("ensemble.json", "cv.json", "last.safetensors"))


def _names(names: list[str], num_classes: int) -> list[str]:
    return [names[c] if c < len(names) else ("background" if c == 0 else f"class_{c}")
            for c in range(num_classes)]


def _target(mask: np.ndarray, path: Path, num_classes: int, binary: bool, ignore_index: int | None) -> np.ndarray:
    ignored = mask == ignore_index if ignore_index is not None else np.zeros(mask.shape, bool)
    if binary:
        out = (mask > 0).astype(np.int64)
    else:
        out = mask.astype(np.int64)
        bad = (out >= num_classes) & ~ignored
        if bad.any():
            raise DataError(f"{path}: mask values {sorted(np.unique(out[bad]).tolist())[:5]} are outside "
                            f"0..{num_classes - 1}")
    if ignore_index is not None:
        out[ignored] = ignore_index
    return out


def _image_rows(name: str, pred: np.ndarray, true: np.ndarray, classes: list[int], names: list[str],
                num_classes: int, ignore_index: int | None, hd95: bool, spacing: Sequence[float] | None
                ) -> list[dict[str, Any]]:
    p = torch.from_numpy(pred.astype(np.int64))[None, None]
    t = torch.from_numpy(true)[None, None]
    counts = confusion_counts(p, t, num_classes, ignore_index=ignore_index)
    scores = {"dice": dice(counts)[0], "iou": iou(counts)[0], "precision": precision(counts)[0],
              "recall": recall(counts)[0]}
    valid = true != ignore_index if ignore_index is not None else np.ones(true.shape, bool)
    present = present_classes(counts[0].numpy())  # absent from truth and prediction: no score (NaN)
    rows = []
    for c in classes:
        row: dict[str, Any] = {"image": name, "class": c, "class_name": names[c],
                               **{k: float(v[c]) if present[c] else math.nan for k, v in scores.items()}}
        if hd95:
            row["hd95"] = hausdorff_distance_95((pred == c) & valid, (true == c) & valid, spacing) \
                if present[c] else math.nan
        row["true_pixels"] = int(counts[0, c, 0] + counts[0, c, 2])
        row["pred_pixels"] = int(counts[0, c, 0] + counts[0, c, 1])
        rows.append(row)
    return rows


def _summary(rows: list[dict[str, Any]], object_rows: list[dict[str, Any]], classes: list[int],
             names: list[str], source: Any, data_dir: Any, num_classes: int, iou_threshold: float
             ) -> dict[str, Any]:
    images = list(dict.fromkeys(r["image"] for r in rows))
    table = {(r["image"], r["class"]): r for r in rows}
    dice_values = np.array([[table[i, c]["dice"] for c in classes] for i in images], dtype=np.float64)
    present = ~np.isnan(dice_values)  # NaN marks a class absent from an image's truth and prediction
    overall = aggregate_scores(np.nan_to_num(dice_values), present, [names[c] for c in classes])
    class_rows = []
    for c in classes:
        sel = [r for r in rows if r["class"] == c]
        d = overall["per_class"][names[c]]
        row = {"class": c, "class_name": names[c], "images": d["images"], "dice_mean": d["mean"],
               "dice_std": d["std"], "dice_median": d["median"], "images_both_empty": len(sel) - d["images"]}
        for metric in ("iou", "precision", "recall"):
            row[f"{metric}_mean"] = nan_stats([r[metric] for r in sel])["mean"]
        if sel and "hd95" in sel[0]:
            scored = [r["hd95"] for r in sel if not math.isnan(r["hd95"])]
            finite = [v for v in scored if math.isfinite(v)]
            row["hd95_mean"] = float(np.mean(finite)) if finite else float("nan")
            row["hd95_infinite"] = len(scored) - len(finite)  # one of prediction / truth empty
        class_rows.append({k: float(v) if isinstance(v, np.floating) else v for k, v in row.items()})
    foreground = [j for j, c in enumerate(classes) if c > 0]  # num_classes >= 2: never empty
    fg = aggregate_scores(np.nan_to_num(dice_values[:, foreground]), present[:, foreground],
                          [names[classes[j]] for j in foreground])
    summary: dict[str, Any] = {
        "source": ", ".join(map(str, source)) if isinstance(source, (list, tuple)) else str(source),
        "data_dir": str(data_dir), "images": len(images), "num_classes": num_classes,
        "mean_dice": fg["mean"],  # over foreground classes present somewhere, each over the images with it
        "mean_dice_over": {
            "classes": fg["classes"], "of_classes": len(foreground), "images": fg["images"],
            "image_class_pairs": fg["pairs"], "both_empty_pairs": fg["both_empty"],
            "images_with_nothing_present": fg["empty_images"],
            "classes_absent_everywhere": [n for n, c in fg["per_class"].items() if c["images"] == 0],
        },
        "mean_dice_per_image": fg["image_mean"],
        "convention": CONVENTION,
        "classes": {r["class_name"]: {k: v for k, v in r.items() if k not in ("class_name",)} for r in class_rows},
        "_class_rows": class_rows,
    }
    if object_rows:
        tp, fp, fn = (int(sum(r[k] for r in object_rows)) for k in ("tp", "fp", "fn"))
        summary["objects"] = {
            "iou_threshold": iou_threshold, "tp": tp, "fp": fp, "fn": fn,
            "precision": tp / (tp + fp) if tp + fp else 1.0, "recall": tp / (tp + fn) if tp + fn else 1.0,
            "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0,
            "f1_mean_per_image": float(np.mean([r["f1"] for r in object_rows])),
            "true_objects": tp + fn, "pred_objects": tp + fp,
            "ground_truth": _ground_truth_text(object_rows),
        }
    return summary


def _ground_truth_text(object_rows: list[dict[str, Any]]) -> str:
    n = sum(r["ground_truth"] == "instances" for r in object_rows)
    if n == len(object_rows):
        return "instance labels (instances/ folder)"
    if n == 0:
        return "connected components of the masks (no instances/ folder; touching objects count as one)"
    return (f"instance labels for {n} image(s), connected components of the masks for "
            f"{len(object_rows) - n} (no instance file)")


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as the lines `unetkit evaluate` prints: mean Dice with what it covers, one line per
    class scored, the classes absent everywhere and the both-empty convention."""
    over = summary["mean_dice_over"]
    lines = [f"{summary['images']} image(s): mean Dice {summary['mean_dice']:.4f} over {over['classes']} of "
             f"{over['of_classes']} foreground class(es) ({over['image_class_pairs']} image-class pairs)"]
    for name, row in summary["classes"].items():
        if row["images"]:
            lines.append(f"  {name:<16} Dice {row['dice_mean']:.4f} +/- {row['dice_std']:.4f}  "
                         f"({row['images']} image(s)" + (f", {row['images_both_empty']} left out" if
                                                          row["images_both_empty"] else "") + ")")
    absent = over["classes_absent_everywhere"]
    if absent:
        lines.append(f"  {len(absent)} class(es) absent from every image and prediction, left out: "
                     + ", ".join(absent[:10]) + (" ..." if len(absent) > 10 else ""))
    lines.append(f"  both empty = left out: {over['both_empty_pairs']} image-class pair(s) with the class in "
                 f"neither truth nor prediction ({over['images_with_nothing_present']} image(s) with nothing "
                 "present); nnU-Net convention")
    return "\n".join(lines)


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def dice_plot(rows: Sequence[dict[str, Any]], path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Per-image Dice distribution: histogram (one colour per class) and a box plot per class."""

    from unetkit.inference.overlay import DEFAULT_COLORS

    names = list(dict.fromkeys(r["class_name"] for r in rows))
    values = [[r["dice"] for r in rows if r["class_name"] == n and not math.isnan(r["dice"])] for n in names]
    fig = new_figure((10, 4))
    hist, box = fig.subplots(1, 2)
    bins = np.linspace(0.0, 1.0, 21)
    for i, (name, v) in enumerate(zip(names, values)):
        hist.hist(v, bins=bins, alpha=0.6, label=name, color=DEFAULT_COLORS[i % len(DEFAULT_COLORS)])
    hist.set_xlabel("Dice per image")
    hist.set_ylabel("images")
    hist.legend(fontsize="small")
    box.boxplot(values, showmeans=True)
    box.set_xticks(range(1, len(names) + 1), names)
    box.set_ylim(-0.02, 1.02)
    box.set_ylabel("Dice per image")
    fig.suptitle(f"Dice over {len({r['image'] for r in rows})} images")
    fig.tight_layout()
    return save_figure(fig, path, overwrite=overwrite)
