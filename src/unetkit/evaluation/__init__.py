"""Evaluation: post-processing, per-object measurements, object matching, folder evaluation.

Submodules:
    postprocess  connected_components, remove_small_objects, fill_holes, split_touching, instances_from_labels
    measure      measure_objects, write_objects_csv, count_objects, match_instances
    evaluate     evaluate_folder (per-image / per-class CSV, summary JSON, Dice plot)
"""
from unetkit.evaluation.measure import count_objects, match_instances, measure_objects, write_objects_csv
from unetkit.evaluation.postprocess import (connected_components, fill_holes, instances_from_labels,
                                            remove_small_instances, remove_small_objects, split_touching)

__all__ = ["connected_components", "remove_small_objects", "remove_small_instances", "fill_holes",
           "split_touching", "instances_from_labels", "measure_objects", "write_objects_csv",
           "count_objects", "match_instances", "evaluate_folder"]


def __getattr__(name: str):  # evaluate pulls in the predictor and metrics: import it on demand
    if name == "evaluate_folder":
        from unetkit.evaluation.evaluate import evaluate_folder

        return evaluate_folder
    raise AttributeError(name)
