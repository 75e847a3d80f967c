"""A streaming metric accumulator for validation loops, mergeable across distributed ranks.

    acc = MetricAccumulator(num_classes=3, surface=True, spacing=(1.0, 0.5, 0.5))
    for batch in loader:
        acc.update(logits_to_labels(model(x)), y, names=batch_names)
    acc.compute()["dice"]        # {"mean", "std", "image_mean", "global", "images", "classes", "pairs",
                                 #  "both_empty", "empty_images", "per_class": {k: {"mean", "std", "median",
                                 #  "images", "global"}}}

Every image keeps its own row of per-class counts (and surface distances), so means and standard
deviations are over images, never over batch averages. A class absent from both the truth and the
prediction of an image is left out of every mean (`unetkit.metrics.aggregate`, as nnU-Net): "mean"
is the class average of each class's mean over the images where it is present, "std" the spread over
images of each image's mean over its present classes; "images", "classes" and "both_empty" say what
was averaged. "global" pools the counts of all images per class before computing the metric; the
average over the classes present anywhere is reported. Surface metrics have no "global".
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from unetkit.errors import ConfigError
from unetkit.metrics.aggregate import CONVENTION, aggregate_scores, present_classes
from unetkit.metrics.overlap import class_masks, confusion_counts
from unetkit.metrics.registry import METRICS, list_metrics

SURFACE_METRICS = ("hausdorff", "hd95", "assd")


class MetricAccumulator:
    """Collects per-image, per-class metrics; `compute()` aggregates, `rows()` lists them."""

    def __init__(self, num_classes: int, metrics: Sequence[str] = ("dice", "iou", "precision", "recall"),
                 include_background: bool = False, spacing: Sequence[float] | None = None,
                 surface: bool = False, ignore_index: int | None = None,
                 class_names: Sequence[str] | None = None) -> None:
        metrics = list(metrics) + [m for m in SURFACE_METRICS if surface and m not in metrics]
        unknown = [m for m in metrics if m not in METRICS]
        if unknown:
            raise ConfigError(f"unknown metrics {unknown}; registered: {', '.join(list_metrics())}")
        self.num_classes, self.metrics = num_classes, metrics
        self.classes = list(range(0 if include_background or num_classes == 1 else 1, num_classes))
        self.class_names = list(class_names) if class_names is not None else [str(k) for k in range(num_classes)]
        self.spacing, self.ignore_index = spacing, ignore_index
        self.surface_metrics = [m for m in metrics if METRICS.entry(m).info["kind"] == "surface"]
        self.reset()

    def reset(self) -> None:
        self.names: list[str] = []
        self.counts: list[np.ndarray] = []  # one (K, 4) int64 array per image
        self.surface: list[np.ndarray] = []  # one (len(surface_metrics), K) float64 array per image

    def update(self, pred: Tensor, target: Tensor, names: Sequence[str] | None = None) -> None:
        """Add a batch: labels `(N, 1, *S)` / `(N, *S)` or bool multilabel `(N, K, *S)`."""
        pred, target = torch.as_tensor(pred).detach().cpu(), torch.as_tensor(target).detach().cpu()
        counts = confusion_counts(pred, target, self.num_classes, self.ignore_index).numpy()
        if names is not None and len(names) != len(counts):
            raise ValueError(f"{len(names)} names for a batch of {len(counts)} images")
        start = len(self.names)
        self.names += [str(n) for n in names] if names is not None else [str(start + i) for i in range(len(counts))]
        self.counts += list(counts)
        if self.surface_metrics:
            self.surface += list(self._surface_values(pred, target))

    def _surface_values(self, pred: Tensor, target: Tensor) -> np.ndarray:
        """`(N, len(surface_metrics), K)` surface distances; ignored pixels are left out of both masks."""
        p, t = class_masks(pred, self.num_classes).numpy(), class_masks(target, self.num_classes).numpy()
        if self.ignore_index is not None and target.dtype != torch.bool:
            keep = (target if target.dim() == p.ndim else target.unsqueeze(1))[:, :1].numpy() != self.ignore_index
            p, t = p & keep, t & keep
        out = np.zeros((len(p), len(self.surface_metrics), self.num_classes))
        for i, m in enumerate(self.surface_metrics):
            fn = METRICS.entry(m).factory
            for n in range(len(p)):
                out[n, i] = [fn(p[n, k], t[n, k], spacing=self.spacing) for k in range(self.num_classes)]
        return out

    def _per_image(self, metric: str) -> np.ndarray:
        """`(images, K)` values of one metric."""
        if metric in self.surface_metrics:
            return np.stack(self.surface)[:, self.surface_metrics.index(metric)]
        return METRICS.entry(metric).factory(torch.from_numpy(np.stack(self.counts))).numpy()

    def rows(self) -> list[dict[str, Any]]:
        """One dict per image and reported class: image, class, then one column per metric (NaN where
        the class is absent from both the truth and the prediction of that image)."""
        if not self.names:
            return []
        present = present_classes(np.stack(self.counts))
        values = {m: np.where(present, self._per_image(m), np.nan) for m in self.metrics}
        return [{"image": name, "class": self.class_names[k], **{m: float(values[m][i, k]) for m in self.metrics}}
                for i, name in enumerate(self.names) for k in self.classes]

    def compute(self) -> dict[str, Any]:
        """Per metric: mean (over classes), std and image_mean (over images), global, per class, and
        how many images / classes / image-class pairs were averaged (`unetkit.metrics.aggregate`)."""
        result: dict[str, Any] = {"num_images": len(self.names)}
        if not self.names:
            return result
        counts = np.stack(self.counts)  # (images, K, 4)
        present = present_classes(counts)[:, self.classes]
        pooled = torch.from_numpy(counts.sum(0))  # (K, 4)
        pooled_present = present_classes(pooled.numpy())[self.classes]
        names = [self.class_names[k] for k in self.classes]
        for m in self.metrics:
            values = self._per_image(m)[:, self.classes]  # (images, classes)
            glob = None
            if m not in self.surface_metrics:
                glob = np.where(pooled_present, METRICS.entry(m).factory(pooled).numpy()[self.classes], np.nan)
            summary = aggregate_scores(values, present, names, glob)
            for j, name in enumerate(names):
                summary["per_class"][name]["global"] = None if glob is None else float(glob[j])
            if glob is None:
                summary["global"] = None
            result[m] = summary
        result["convention"] = CONVENTION
        return result

    def state_dict(self) -> dict[str, Any]:
        """Picklable state (for `torch.distributed.all_gather_object`)."""
        return {"num_classes": self.num_classes, "metrics": list(self.metrics), "names": list(self.names),
                "counts": [c.copy() for c in self.counts], "surface": [s.copy() for s in self.surface]}

    def merge(self, state: dict[str, Any]) -> None:
        """Append another accumulator's `state_dict()` (e.g. from another rank)."""
        if state["num_classes"] != self.num_classes or list(state["metrics"]) != self.metrics:
            raise ValueError("cannot merge accumulators with different classes or metrics")
        self.names += list(state["names"])
        self.counts += [np.asarray(c) for c in state["counts"]]
        self.surface += [np.asarray(s) for s in state["surface"]]
