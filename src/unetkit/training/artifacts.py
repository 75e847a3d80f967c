"""What a run leaves behind: metrics.csv, TensorBoard events, curves.png, report.json."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from unetkit.io.atomic import atomic_path
from unetkit.io.figures import new_figure, save_figure


def write_history_csv(history: list[dict[str, Any]], path: Path) -> None:
    """One row per epoch; columns are the union of every epoch's keys (atomic rewrite)."""
    columns: list[str] = []
    for row in history:
        columns += [k for k in row if k not in columns]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(history)


def write_json(data: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=_jsonable))


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def plot_curves(history: list[dict[str, Any]], path: Path, monitor: str = "dice") -> None:
    """Training/validation loss and validation metrics per epoch, in two panels."""
    epochs = [r["epoch"] for r in history]
    fig = new_figure((11, 4), dpi=90)
    ax_loss, ax_metric = fig.subplots(1, 2)
    for key, style in (("train_loss", "-"), ("val_loss", "--")):
        pts = [(e, r[key]) for e, r in zip(epochs, history) if _finite(r.get(key))]
        if pts:
            ax_loss.plot(*zip(*pts), style, marker=".", label=key.replace("_", " "))
    ax_loss.set_xlabel("epoch"); ax_loss.set_ylabel("loss"); ax_loss.set_title("loss"); ax_loss.legend()
    metric_keys = curve_metric_keys(history)
    for key in metric_keys:
        pts = [(e, r[key]) for e, r in zip(epochs, history) if _finite(r.get(key))]
        if pts:
            ax_metric.plot(*zip(*pts), marker=".", label=key[4:], linewidth=2.5 if key == f"val_{monitor}" else 1)
    ax_metric.set_xlabel("epoch"); ax_metric.set_title("validation (mean per image)")
    if metric_keys:
        ax_metric.legend()
    fig.tight_layout()
    save_figure(fig, path)


def curve_metric_keys(history: list[dict[str, Any]]) -> list[str]:
    """Validation columns drawn on the metric axis: scores in [0, 1] (Dice, IoU, ...), not the loss,
    spreads, distances in pixels or counts such as val_num_images that would squash them."""
    keys = {k for r in history for k in r if k.startswith("val_") and k != "val_loss"}
    return sorted(k for k in keys if not k.endswith(("_std", "_count", "_counted")) and "num_" not in k
                  and "hd95" not in k and all(not _finite(r.get(k)) or -1e-9 <= r[k] <= 1 + 1e-9 for r in history))


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


class TensorBoardLog:
    """Scalars to TensorBoard event files when the tensorboard package is installed."""

    def __init__(self, log_dir: Path, enabled: bool = True) -> None:
        self.writer = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(log_dir))
            except ImportError:
                self.writer = None

    def scalars(self, values: dict[str, Any], step: int) -> None:
        if self.writer is None:
            return
        for key, value in values.items():
            if _finite(value):
                self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
