"""Per-image metric tables: rows -> table with summary rows -> CSV (standard-library csv)."""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from unetkit.io.atomic import atomic_path
from unetkit.metrics.accumulator import MetricAccumulator
from unetkit.metrics.aggregate import nan_stats


def metrics_table(rows: Sequence[dict[str, Any]], summary: bool = True) -> list[dict[str, Any]]:
    """Copy `rows` (from `MetricAccumulator.rows()`) and, with `summary`, append per class a "mean"
    and a "std" row over the images where the class is present (NaN cells, a class absent from both
    truth and prediction, are left out; column "image" holds the statistic's name)."""
    table = [dict(r) for r in rows]
    if not summary or not table:
        return table
    metrics = [k for k in table[0] if k not in ("image", "class")]
    for cls in dict.fromkeys(r["class"] for r in rows):
        stats = {m: nan_stats([r[m] for r in rows if r["class"] == cls]) for m in metrics}
        for stat in ("mean", "std"):
            table.append({"image": stat, "class": cls, **{m: v[stat] for m, v in stats.items()}})
    return table


def write_metrics_csv(rows: Sequence[dict[str, Any]], path: str | Path, summary: bool = True,
                      overwrite: bool = False) -> Path:
    """Write `metrics_table(rows, summary)` as CSV (columns from the first row); returns the path."""
    table = metrics_table(rows, summary)
    columns = list(table[0]) if table else ["image", "class"]
    with atomic_path(path, overwrite=overwrite) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in table:
            writer.writerow({k: _cell(v) for k, v in row.items()})
    return Path(path)


def _cell(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) and math.isfinite(value) else value


def predictions_table(preds: Iterable[Any], targets: Iterable[Any], num_classes: int,
                      names: Sequence[str] | None = None, summary: bool = True, **accumulator_kwargs: Any) -> list[dict]:
    """Metric table of prediction/target label pairs, one per image (`(1, *S)` or `(*S)` each).

    `accumulator_kwargs` go to `MetricAccumulator` (metrics, include_background, spacing, surface, ...).
    """
    acc = MetricAccumulator(num_classes, **accumulator_kwargs)
    for i, (pred, target) in enumerate(zip(preds, targets)):
        pred, target = np.asarray(pred), np.asarray(target)
        acc.update(pred[None], target[None], names=None if names is None else [names[i]])
    return metrics_table(acc.rows(), summary)
