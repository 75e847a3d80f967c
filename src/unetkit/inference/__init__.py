"""Inference: sliding-window / overlap-tile prediction, test-time augmentation, the Predictor.

Submodules:
    sliding_window  sliding_window_inference, plan_windows, extract_window, importance_map
    tta             tta_predict, tta_transforms
    predictor       Predictor (checkpoint -> masks, probabilities, overlays, measurements)
    overlay         overlay_figure (image | mask | overlay PNG)
"""
from unetkit.inference.sliding_window import sliding_window_inference
from unetkit.inference.tta import tta_predict

__all__ = ["sliding_window_inference", "tta_predict", "Predictor"]


def __getattr__(name: str):  # the Predictor pulls in data I/O and matplotlib: import it on demand
    if name == "Predictor":
        from unetkit.inference.predictor import Predictor

        return Predictor
    raise AttributeError(name)
