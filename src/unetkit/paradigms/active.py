"""Active learning: rank unlabelled images by model uncertainty, pick the next ones to label.

Per-pixel uncertainty maps, averaged into one score per image:
    "entropy"       predictive entropy H(p) = -sum_k p_k log p_k of one deterministic pass
                    (binary models: p = [1 - sigmoid, sigmoid]);
    "mc_dropout"    Monte-Carlo dropout (Gal & Ghahramani, ICML 2016): `passes` passes with the
                    dropout layers on; the map is the mutual information (BALD, Houlsby et al.
                    2011) H(mean p) - mean H(p), the model's own (epistemic) uncertainty;
    "tta_variance"  variance of the class probabilities over the flips/rotations of test-time
                    augmentation (Wang et al., Neurocomputing 2019), averaged over classes.
`select_for_labelling` takes the top-k, or with `diversity > 0` trades uncertainty against
distance to the images already picked (pooled encoder features), after "Suggestive annotation"
(Yang et al., MICCAI 2017), which pairs a U-Net-style FCN's uncertainty with representativeness.

    scores = score_uncertainty(model, images, method="entropy")
    order = select_for_labelling(scores.scores, k=10)
    write_ranking_csv("ranking.csv", names, scores.scores, order)
`unetkit suggest-labels CHECKPOINT IMAGES... --k 10 --out ranking.csv` does all of it from files.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from unetkit.inference.sliding_window import sliding_window_inference
from unetkit.inference.tta import apply_transform, invert_transform, tta_transforms
from unetkit.paradigms.sampling import ImageSource, as_image_list, model_device

METHODS = ("entropy", "mc_dropout", "tta_variance")
_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
EPS = 1e-12


@dataclass
class UncertaintyScores:
    """`scores` (N,) mean of each image's map (higher = less certain); `maps[i]` (*S_i) float32."""

    scores: np.ndarray
    maps: list[np.ndarray]
    method: str


def entropy(probs: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Entropy in nats over `dim` of class probabilities (N, K, *S) -> (N, *S)."""
    return -(probs * torch.log(probs.clamp_min(EPS))).sum(dim)


def class_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """(N, K, *S) logits -> (N, max(K, 2), *S) probabilities: softmax, or [1 - p, p] for K == 1."""
    if isinstance(logits, (list, tuple)):  # deep supervision: the full-resolution output
        logits = logits[0]
    logits = logits.float()
    if logits.shape[1] == 1:
        p = torch.sigmoid(logits)
        return torch.cat([1 - p, p], dim=1)
    return torch.softmax(logits, dim=1)


def score_uncertainty(
    model: nn.Module,
    images: ImageSource,
    method: str = "entropy",
    passes: int = 8,
    roi_size: int | Sequence[int] | None = None,
    probabilities: Callable[[torch.Tensor], torch.Tensor] | None = None,
    seed: int = 0,
) -> UncertaintyScores:
    """Uncertainty map and score of every image.

    Args:
        model: a segmentation model returning logits (N, K, *S).
        images: normalised images: (N, C, *S), or a list of (C, *S) of any sizes.
        method: "entropy", "mc_dropout" (needs dropout layers in `model`) or "tta_variance".
        passes: stochastic passes for "mc_dropout".
        roi_size: predict with sliding windows of this size (large images); None: whole images.
        probabilities: replaces `class_probabilities(model(x))` (e.g. a `Predictor`'s windowed,
            normalising forward); must return (N, K >= 2, *S) probabilities.
    """
    if method not in METHODS:
        raise ValueError(f"unknown uncertainty method '{method}'; choose one of {METHODS}")
    if method == "mc_dropout" and not any(isinstance(m, _DROPOUT) and m.p > 0 for m in model.modules()):
        raise ValueError(f"method 'mc_dropout' needs dropout layers with p > 0, and this "
                         f"{type(model).__name__} has none; build it with dropout=0.1..0.5 "
                         "(or use 'entropy' or 'tta_variance')")
    dims = int(getattr(model, "spatial_dims", 2))
    device = model_device(model)
    predict = probabilities or _windowed(lambda x: class_probabilities(model(x)), roi_size)
    was_training = model.training
    model.eval()
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    maps = []
    try:
        with torch.no_grad():
            for image in as_image_list(images, dims):
                x = torch.from_numpy(image)[None].to(device)
                maps.append(_uncertainty_map(model, predict, x, method, passes)[0].cpu().numpy())
    finally:
        model.train(was_training)
        torch.random.set_rng_state(generator_state)
    scores = np.array([float(m.mean()) for m in maps], dtype=np.float64)
    return UncertaintyScores(scores, maps, method)


def _windowed(fn: Callable[[torch.Tensor], torch.Tensor], roi_size: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    if roi_size is None:
        return fn
    return lambda x: sliding_window_inference(x, fn, roi_size, output_device=x.device)


def _uncertainty_map(model: nn.Module, predict: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                     method: str, passes: int) -> torch.Tensor:
    """(1, C, *S) -> (1, *S) uncertainty."""
    if method == "entropy":
        return entropy(predict(x))
    if method == "mc_dropout":
        for m in model.modules():
            if isinstance(m, _DROPOUT):
                m.train()  # dropout on; normalisation layers stay in eval mode
        samples = torch.stack([predict(x) for _ in range(max(2, passes))])  # (T, 1, K, *S)
        return entropy(samples.mean(0)) - entropy(samples, dim=2).mean(0)
    transforms = tta_transforms(x.dim() - 2, flips=True, rot90=x.dim() == 4)
    samples = torch.stack([invert_transform(predict(apply_transform(x, t)), t) for t in transforms])
    return samples.var(0, unbiased=False).mean(1)


def image_features(model: nn.Module, images: ImageSource) -> np.ndarray:
    """(N, D) descriptors for diversity: the deepest encoder map, global-average-pooled."""
    dims = int(getattr(model, "spatial_dims", 2))
    device = model_device(model)
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.no_grad():
            for image in as_image_list(images, dims):
                deepest = model.encoder(torch.from_numpy(image)[None].to(device))[-1]
                out.append(deepest.flatten(2).mean(-1)[0].cpu().numpy())
    finally:
        model.train(was_training)
    return np.stack(out)


def select_for_labelling(scores: Sequence[float], k: int, features: np.ndarray | None = None,
                         diversity: float = 0.0) -> list[int]:
    """Indices of the `k` images to label next, in the order they were picked.

    diversity = 0: the k highest scores. diversity in (0, 1] needs `features` (N, D) and picks
    greedily by (1 - diversity) * uncertainty + diversity * distance-to-the-picked-set (both
    scaled to [0, 1]), so near-duplicates of an already picked image wait their turn.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1 or len(scores) == 0:
        raise ValueError(f"scores must be a non-empty 1D sequence, got shape {scores.shape}")
    if not 0.0 <= diversity <= 1.0:
        raise ValueError(f"diversity must be in [0, 1], got {diversity}")
    k = min(int(k), len(scores))
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if diversity == 0.0:
        return [int(i) for i in np.argsort(-scores, kind="stable")[:k]]
    if features is None or len(features) != len(scores):
        raise ValueError("diversity > 0 needs `features` (N, D), one row per score (see image_features)")
    feats = np.asarray(features, dtype=np.float64).reshape(len(scores), -1)
    unc = (scores - scores.min()) / max(np.ptp(scores), EPS)
    dist = np.linalg.norm(feats[:, None] - feats[None], axis=-1)
    dist /= max(dist.max(), EPS)
    picked = [int(np.argmax(unc))]
    while len(picked) < k:
        gain = (1 - diversity) * unc + diversity * dist[:, picked].min(1)
        gain[picked] = -np.inf
        picked.append(int(np.argmax(gain)))
    return picked


def write_ranking_csv(path: str | os.PathLike, names: Sequence[str], scores: Sequence[float],
                      selected: Sequence[int], overwrite: bool = False) -> Path:
    """CSV with one row per image, most uncertain first: rank, image, score, selected (pick order
    1..k, empty when not picked)."""
    from unetkit.evaluation.measure import write_rows_csv

    pick = {int(i): n + 1 for n, i in enumerate(selected)}
    order = sorted(range(len(scores)), key=lambda i: (pick.get(i, len(pick) + 1), -scores[i]))
    rows = [{"rank": r + 1, "image": names[i], "score": float(scores[i]), "selected": pick.get(i, "")}
            for r, i in enumerate(order)]
    return write_rows_csv(rows, path, overwrite=overwrite, columns=["rank", "image", "score", "selected"])


def suggest_labels(checkpoint: str | os.PathLike, inputs: Sequence[str | os.PathLike], k: int = 10,
                   out: str | os.PathLike = "ranking.csv", method: str = "entropy", passes: int = 8,
                   diversity: float = 0.0, roi_size: int | Sequence[int] | None = None, device: str = "auto",
                   overwrite: bool = False) -> tuple[Path, list[dict[str, Any]]]:
    """Rank image files for labelling with a model file: what `unetkit suggest-labels` runs.

    Each image is read and normalised as the model file says (`Predictor`), predicted with
    sliding windows, scored, and the ranking written to `out`. Returns (csv path, rows).
    """
    from unetkit.data.normalize import normalize_image
    from unetkit.inference.predictor import Predictor, expand_inputs, read_input

    predictor = Predictor.from_checkpoint(checkpoint, device=device, roi_size=roi_size)
    files = expand_inputs(inputs)
    images = []
    for path in files:
        image, _ = read_input(path, predictor.spatial_dims)
        images.append(normalize_image(predictor.check_image(image, path), predictor.preprocess))
    windowed = _windowed(lambda x: class_probabilities(predictor.model(x)), predictor.roi_size)
    result = score_uncertainty(predictor.model, images, method, passes, probabilities=windowed)
    features = image_features(predictor.model, images) if diversity > 0 else None
    selected = select_for_labelling(result.scores, k, features, diversity)
    names = [p.name for p in files]
    path = write_ranking_csv(out, names, result.scores, selected, overwrite=overwrite)
    rows = [{"image": names[i], "score": float(result.scores[i])} for i in selected]
    return path, rows
