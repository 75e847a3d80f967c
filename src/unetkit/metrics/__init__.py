"""Metrics: overlap metrics from confusion counts, surface distances, a streaming accumulator, tables.

    labels = logits_to_labels(logits)                              # (N, 1, *S)
    acc = MetricAccumulator(num_classes=2)                         # binary: classes 0 and 1
    acc.update(labels, target); acc.compute()["dice"]["mean"]   # absent classes left out (aggregate.py)
    write_metrics_csv(acc.rows(), "metrics.csv")
"""
from unetkit.metrics.registry import METRICS, create_metric, list_metrics, register_metric
from unetkit.metrics.overlap import (accuracy, class_masks, confusion_counts, dice, iou, logits_to_labels,
                                     precision, recall, specificity)
from unetkit.metrics.surface import (average_surface_distance, hausdorff_distance, hausdorff_distance_95,
                                     surface, surface_distances)
from unetkit.metrics.aggregate import aggregate_scores, present_classes
from unetkit.metrics.accumulator import MetricAccumulator
from unetkit.metrics.table import metrics_table, predictions_table, write_metrics_csv

jaccard = iou

__all__ = [
    "METRICS", "create_metric", "list_metrics", "register_metric",
    "logits_to_labels", "class_masks", "confusion_counts",
    "dice", "iou", "jaccard", "precision", "recall", "specificity", "accuracy",
    "surface", "surface_distances", "hausdorff_distance", "hausdorff_distance_95", "average_surface_distance",
    "aggregate_scores", "present_classes", "MetricAccumulator",
    "metrics_table", "write_metrics_csv", "predictions_table",
]
