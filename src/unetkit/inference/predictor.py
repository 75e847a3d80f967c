"""`Predictor`: a model file in, masks (and probabilities, overlays, measurements) out.

The model file alone defines the prediction: the architecture and weights, and in its `extra`
metadata the preprocessing (`preprocess`), `mode` (binary / multiclass / multilabel), `threshold`,
`class_names`, `patch_size` (default window), `in_channels`, `spacing`, `target_spacing` and
`postprocessing` (a plan chosen by cross-validation, see `unetkit.evaluation.postprocess`; applied
to the labels).

3D models trained at a `target_spacing` (`data.target_spacing`, set by the planner for data of mixed
spacings): an input with a known spacing (NIfTI, a TIFF with spacing metadata, or
`predict_array(..., spacing=)`) is resampled to it (`unetkit.data.volume.resample`), predicted, and
its probabilities are resampled (linear) back to the input's own shape before thresholding or
argmax, so masks keep the input's geometry. Without a spacing it is predicted at native spacing,
with a warning.

Ensembles: `Predictor.from_checkpoints([...])` or `Predictor.from_run(cv_run_dir)` average the
probabilities of several models inside each sliding window (the same windows, blending and TTA as
one model, so the result equals the mean of the models' probability maps). The models must agree
on dims, classes, input channels, mode, preprocessing, target spacing and padding.

Outputs of `predict_file(path, out_dir)`, named by the input's stem:
    out_dir/masks/<stem><suffix>          labels, same format as the input (PNG for PNG/JPEG/BMP; TIFF;
                                          NIfTI with the input's affine and spacing); class indices
    out_dir/probabilities/<stem>.tif|.nii.gz   float32 (K, *S) maps (optional)
    out_dir/overlays/<stem>.png           image | mask | overlay (2D; the fullest slice of a volume)
    out_dir/objects/<stem>.csv            per-object measurements (optional)
    out_dir/counts.csv                    objects per class per image (`predict_paths`, with measure)
Every file is written atomically, and existing files are kept unless `overwrite=True`.
"""
from __future__ import annotations

import copy
import csv
import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from unetkit.data.io import (NIFTI_SUFFIXES, PIL_SUFFIXES, VolumeMeta, is_image_file, read_image,
                             read_volume, stem_of, suffix_of, write_image, write_mask)
from unetkit.data.normalize import normalize_image
from unetkit.errors import ConfigError, DataError
from unetkit.inference.sliding_window import sliding_window_inference
from unetkit.inference.tta import tta_predict
from unetkit.io.checkpoint import CheckpointError, load_model

if TYPE_CHECKING:  # unetkit.training imports this module (cross-validation predicts its folds)
    from unetkit.training.distributed import DistContext

MODES = ("binary", "multiclass", "multilabel")
ENSEMBLE_MANIFEST = "ensemble.json"  # written by unetkit.training.cv in a cross-validation run folder


@dataclass
class Prediction:
    """`probabilities` `(K, *S)` float32; `labels` `(1, *S)` class indices (binary: {0, 1}),
    or `(K, *S)` {0, 1} for multilabel models."""

    probabilities: np.ndarray
    labels: np.ndarray


class Predictor:
    """Sliding-window (overlap-tile for valid-padding models) prediction with optional TTA; `model`
    may be a list of models (an ensemble: their probabilities are averaged)."""

    def __init__(self, model: nn.Module | Sequence[nn.Module], preprocess: dict[str, Any] | None = None,
                 mode: str | None = None, threshold: float = 0.5, roi_size: int | Sequence[int] | None = None,
                 overlap: float = 0.5, tta: bool = False, batch_size: int = 4, device: str | torch.device = "cpu",
                 class_names: Sequence[str] | None = None, spacing: Sequence[float] | None = None,
                 in_channels: int | None = None, blend: str = "gaussian", padding_mode: str = "reflect",
                 source: str = "model", postprocessing: Sequence[dict[str, Any]] | None = None,
                 postprocessing_source: str | None = None, target_spacing: Sequence[float] | None = None,
                 fast: bool = False, precision: str = "fp32") -> None:
        from unetkit.devices import resolve_device
        from unetkit.evaluation.postprocess import check_postprocessing

        check_options(overlap=overlap, batch_size=batch_size, threshold=threshold, roi_size=roi_size)
        self.device = resolve_device(device)
        models = list(model) if isinstance(model, (list, tuple)) else [model]
        if not models:
            raise ConfigError(f"{source}: an ensemble needs at least one model")
        self.models = [m.to(self.device).eval() for m in models]
        self.model = self.models[0]
        self.spatial_dims = int(getattr(self.model, "spatial_dims", 2))
        self.num_classes = int(getattr(self.model, "num_classes", 1))
        self.mode = mode or ("binary" if self.num_classes == 1 else "multiclass")
        if self.mode not in MODES:
            raise ConfigError(f"{source}: unknown mode {self.mode!r}; choose one of {MODES}")
        if self.mode == "binary" and self.num_classes != 1:
            raise ConfigError(f"{source}: mode 'binary' needs one output channel, the model has {self.num_classes}")
        self.preprocess = preprocess
        self.threshold = float(threshold)
        self.in_channels = in_channels or getattr(self.model, "unetkit_config", {}).get("in_channels")
        self.overlap, self.tta, self.batch_size = overlap, tta, batch_size
        self.blend, self.padding_mode = blend, padding_mode
        self.class_names = list(class_names) if class_names else None
        self.spacing = tuple(spacing) if spacing and len(spacing) == self.spatial_dims else None
        if target_spacing is not None:
            from unetkit.training.config import check_target_spacing

            check_target_spacing(list(target_spacing), self.spatial_dims, f"{source}: target_spacing")
        self.target_spacing = tuple(float(v) for v in target_spacing) if target_spacing is not None else None
        self._warned_native = False  # "no spacing: predicted at native spacing" is said once
        self.source = source
        self.valid_mode = getattr(self.model, "padding", "same") == "valid" and hasattr(self.model, "output_size")
        self.postprocessing = check_postprocessing(postprocessing or [], source)
        self.postprocessing_chosen = postprocessing is not None  # a plan was given (an empty one included)
        self.postprocessing_source = postprocessing_source or source
        self.roi_size = self._window(roi_size)
        self.notes: list[str] = []  # things the caller should tell the user (e.g. ensemble caveats)
        # fast: each model runs through `optimize_for_inference` (BN folded, inference mode, and
        # torch.compile where its probe finds it faster and equal, e.g. 3D CPU models), built on
        # the first window batch of each shape; outputs equal the plain model's within 1e-4
        self.fast = bool(fast)
        self._fast_models: dict[tuple, nn.Module] = {}
        # precision: "fp32" (CUDA: fp16 autocast, as always), or "bf16": bf16 autocast on the CPU, an
        # opt-in (probabilities differ from fp32 by ~1e-2; ~2.4x faster with AMX, see BENCHMARKS.md)
        self.precision = _check_precision(precision, self.device)

    # ---- construction -----------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str = "auto",
                        roi_size: int | Sequence[int] | None = None, overlap: float = 0.5, tta: bool = False,
                        batch_size: int = 4, **overrides: Any) -> "Predictor":
        """Load a model file (architecture, weights and preprocessing come from the file).

        `overrides`: any `Predictor` argument (e.g. `threshold`, `mode`) replacing the file's value.
        """
        check_options(overlap=overlap, batch_size=batch_size, roi_size=roi_size,
                      threshold=overrides.get("threshold"))  # before loading anything
        device = _resolve_device(device)
        model, settings = _load_with_settings(path, device)
        patch = settings.pop("patch_size")
        kwargs: dict[str, Any] = {**settings, "roi_size": roi_size or patch, "overlap": overlap, "tta": tta,
                                  "batch_size": batch_size, "device": device}
        kwargs.update(overrides)
        return cls(model, **kwargs)

    @classmethod
    def from_checkpoints(cls, paths: Sequence[str | os.PathLike], device: str = "auto",
                         roi_size: int | Sequence[int] | None = None, overlap: float = 0.5, tta: bool = False,
                         batch_size: int = 4, **overrides: Any) -> "Predictor":
        """An ensemble of model files: their probabilities are averaged (one file: `from_checkpoint`).

        The files must agree on dims, classes, input channels, mode, preprocessing, target spacing and padding (a
        `CheckpointError` names the files that differ). The window is the first file's patch size
        unless `roi_size` is given; the post-processing is the files' plan when they all store the
        same one (else none).
        """
        paths = [Path(p) for p in paths]
        if len(paths) == 1:
            return cls.from_checkpoint(paths[0], device, roi_size, overlap, tta, batch_size, **overrides)
        if not paths:
            raise ConfigError("an ensemble needs at least one model file")
        check_options(overlap=overlap, batch_size=batch_size, roi_size=roi_size, threshold=overrides.get("threshold"))
        device = _resolve_device(device)
        loaded = [_load_with_settings(p, device) for p in paths]
        _check_agreement(paths, loaded)
        first = loaded[0][1]
        plans = [s["postprocessing"] for _, s in loaded]
        same_plan = all((p or []) == (plans[0] or []) for p in plans)
        kwargs: dict[str, Any] = {
            **{k: first[k] for k in ("preprocess", "mode", "threshold", "class_names", "spacing", "in_channels",
                                     "target_spacing")},
            "roi_size": roi_size or first["patch_size"], "overlap": overlap, "tta": tta, "batch_size": batch_size,
            "device": device, "source": ", ".join(str(p) for p in paths),
            "postprocessing": plans[0] if same_plan else None,
            "postprocessing_source": f"{paths[0]} and the other {len(paths) - 1} model file(s)",
        }
        kwargs.update(overrides)
        predictor = cls([m for m, _ in loaded], **kwargs)
        if not same_plan and "postprocessing" not in overrides:
            predictor.notes.append("the model files store different post-processing plans; none is applied")
        return predictor

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike, **options: Any) -> "Predictor":
        """The ensemble of a cross-validation run folder (`unetkit train --folds K`): the fold models
        and the post-processing listed in its `ensemble.json`. `options` as in `from_checkpoints`."""
        import json

        run_dir = Path(run_dir)
        manifest_path = run_dir / ENSEMBLE_MANIFEST
        if not manifest_path.is_file():
            if (run_dir / "cv.json").is_file():  # unetkit.training.cv.CV_MANIFEST
                raise ConfigError(f"{run_dir}: the cross-validation run is not complete (no {ENSEMBLE_MANIFEST}); "
                                  f"finish it with `unetkit train --resume {run_dir}`, or name the fold model "
                                  "files you want (e.g. fold_0/last.safetensors fold_1/last.safetensors)")
            if (run_dir / "last.safetensors").is_file():
                raise ConfigError(f"{run_dir}: a single run, not a cross-validation run; give its model file "
                                  f"({run_dir / 'best.safetensors'} or last.safetensors)")
            raise ConfigError(f"{run_dir}: not a cross-validation run folder (no {ENSEMBLE_MANIFEST})")
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            files = [run_dir / m for m in manifest["models"]]
            plan = manifest.get("postprocessing", [])
        except (ValueError, KeyError, TypeError) as err:
            raise ConfigError(f"{manifest_path}: not a unetkit ensemble manifest ({err})") from None
        options.setdefault("postprocessing", plan)
        options.setdefault("postprocessing_source", str(manifest_path))
        if len(files) == 1:
            return cls.from_checkpoint(files[0], **options)
        return cls.from_checkpoints(files, **options)

    @classmethod
    def load(cls, source: str | os.PathLike | Sequence[str | os.PathLike], **options: Any) -> "Predictor":
        """A model file, several model files (an ensemble), or a cross-validation run folder."""
        if isinstance(source, (list, tuple)):
            if len(source) == 1:
                return cls.load(source[0], **options)
            folders = [str(s) for s in source if Path(s).is_dir()]
            if folders:
                raise ConfigError(f"{folders[0]}: a run folder cannot be mixed with other models; "
                                  "give one run folder, or model files only")
            return cls.from_checkpoints(source, **options)
        if Path(source).is_dir():
            return cls.from_run(source, **options)
        return cls.from_checkpoint(source, **options)

    def describe_postprocessing(self) -> str | None:
        """A sentence saying which post-processing is applied and where it came from (None when no
        plan was given: the model files store none)."""
        from unetkit.evaluation.postprocess import describe_postprocessing

        if not self.postprocessing_chosen:
            return None
        return f"post-processing from {self.postprocessing_source}: {describe_postprocessing(self.postprocessing)}"

    def with_options(self, roi_size: int | Sequence[int] | None = None, overlap: float | None = None,
                     tta: bool | None = None, threshold: float | None = None) -> "Predictor":
        """A predictor sharing this one's model with some options replaced (None keeps the value).

        Cheap (no copy of the weights); lets callers, such as the server, vary options per request
        without changing a predictor other threads use.
        """
        check_options(overlap=overlap, threshold=threshold, roi_size=roi_size)  # the one set of rules
        other = copy.copy(self)
        if overlap is not None:
            other.overlap = float(overlap)
        if threshold is not None:
            other.threshold = float(threshold)
        if tta is not None:
            other.tta = bool(tta)
        if roi_size is not None:
            other.roi_size = other._window(roi_size)
        return other

    def _window(self, roi_size: int | Sequence[int] | None) -> tuple[int, ...]:
        dims = self.spatial_dims
        if roi_size is None:
            roi_size = 256 if dims == 2 else 96
        roi = (int(roi_size),) * dims if isinstance(roi_size, (int, np.integer)) else tuple(int(r) for r in roi_size)
        if len(roi) != dims:
            raise ConfigError(f"window size (--roi) {roi} does not match a {dims}D model; give one size or {dims}")
        need = self.min_input_sizes()
        if any(r < n for r, n in zip(roi, need)):
            per = f"{need[0]}" if len(set(need)) == 1 else "x".join(map(str, need))
            raise ConfigError(f"window size (--roi) {roi} is smaller than the network's total stride ({per}); "
                              f"use at least {per} per axis (a multiple of {per} is best)")
        if self.valid_mode:  # snap to the nearest valid input size at or below the request
            snapped = []
            for r in roi:
                try:
                    self.model.output_size(r)
                    snapped.append(r)
                except ValueError:
                    sizes = self.model.valid_input_sizes(r, 1)
                    snapped.append(sizes[0] if sizes[0] <= r else sizes[-1])
            roi = tuple(snapped)
        return roi

    # ---- arrays -----------------------------------------------------------------------------
    def predict_array(self, image: np.ndarray, source: str | os.PathLike | None = None,
                      progress: Callable[[int, int], None] | None = None,
                      spacing: Sequence[float] | None = None) -> Prediction:
        """Predict a channel-first image `(C, *S)` (raw intensities; the model's preprocessing is applied).

        `spacing`: the image's voxel spacing (D, H, W); a model with a `target_spacing` predicts at
        that spacing and returns probabilities and labels in the image's own shape (see the module
        docstring). `progress(done, total)` is called after each batch of windows."""
        image = self.check_image(np.asarray(image), source)
        native = self._native_shape(image, spacing, source)
        if native is not None:
            from unetkit.data.volume import resample

            image = resample(image, None, spacing, self.target_spacing)[0]
        x = torch.from_numpy(normalize_image(image, self.preprocess))[None]
        size = tuple(x.shape[2:])
        x = self._pad_small(x)
        probs = sliding_window_inference(
            x, self._predict_windows, self.roi_size, overlap=self.overlap, blend=self.blend,
            batch_size=self.batch_size, padding_mode=self.padding_mode,
            output_size_fn=self.model.output_size if self.valid_mode else None, device=self.device,
            progress=progress or False,
        )[0].numpy()
        probs = probs[(slice(None), *(slice(0, n) for n in size))]
        if native is not None:  # back to the input's grid before thresholding / argmax (as nnU-Net)
            from unetkit.data.volume import resize

            probs = resize(probs, native, order=1)
        return Prediction(probs, self.postprocess(self.to_labels(probs)))

    def _native_shape(self, image: np.ndarray, spacing: Sequence[float] | None,
                      source: str | os.PathLike | None) -> tuple[int, ...] | None:
        """The input's shape when it must be resampled to the model's target spacing, else None."""
        if self.target_spacing is None or self.spatial_dims != 3:
            return None
        if spacing is None:
            if not self._warned_native:
                import warnings

                self._warned_native = True
                warnings.warn(f"{source or 'image'}: no voxel spacing known (e.g. a TIFF stack without spacing "
                              f"metadata, or an array without spacing=); predicted at its native spacing, although "
                              f"the model ({self.source}) was trained at "
                              f"({', '.join(f'{v:.4g}' for v in self.target_spacing)})",
                              stacklevel=3)
            return None
        if len(spacing) < 3 or any(not float(v) > 0 for v in list(spacing)[-3:]):
            raise DataError(f"{source or 'image'}: voxel spacing {list(spacing)} must be three positive sizes (D, H, W)")
        from unetkit.data.volume import resampled_shape

        if resampled_shape(image.shape[1:], list(spacing)[-3:], self.target_spacing) is None:
            return None
        return tuple(image.shape[1:])

    def postprocess(self, labels: np.ndarray) -> np.ndarray:
        """Apply the model's post-processing plan (class labels `(1, *S)`; multilabel: unchanged)."""
        if not self.postprocessing or self.mode == "multilabel":
            return labels
        from unetkit.evaluation.postprocess import apply_postprocessing

        return apply_postprocessing(labels[0], self.postprocessing)[None]

    def min_input_size(self) -> int:
        """The smallest side the network downsamples without running out of pixels (its total stride)."""
        from unetkit.models.registry import min_input_size

        return 1 if self.valid_mode else min_input_size(self.model)

    def min_input_sizes(self) -> tuple[int, ...]:
        """`min_input_size` per axis (an anisotropic U-Net pools a thick axis less)."""
        from unetkit.models.registry import min_input_sizes

        return (1,) * self.spatial_dims if self.valid_mode else min_input_sizes(self.model)

    def _pad_small(self, x: torch.Tensor) -> torch.Tensor:
        """Images smaller than the network's total stride (1x1, 3x3, 1x300) are padded (mirrored,
        edge-repeated when too small to mirror) to that size; the prediction is cropped back."""
        need = self.min_input_sizes()
        pads = [max(0, m - n) for m, n in zip(need, x.shape[2:])]
        if not any(pads):
            return x
        widths = [(0, 0), (0, 0)] + [(0, p) for p in pads]
        return torch.from_numpy(np.pad(x.numpy(), widths, mode="symmetric"))

    def check_image(self, image: np.ndarray, source: str | os.PathLike | None = None) -> np.ndarray:
        """Check dims and channels against the model; a grey image stored as RGB(A) becomes one channel."""
        name = str(source or "image")
        if image.ndim != self.spatial_dims + 1:
            want = "(C, H, W)" if self.spatial_dims == 2 else "(C, D, H, W)"
            raise DataError(f"{name}: expected a {self.spatial_dims}D image {want} for this model, "
                            f"got shape {image.shape}")
        channels = image.shape[0]
        if self.in_channels is None or channels == self.in_channels:
            return image
        if self.in_channels == 1 and channels in (3, 4) and all(np.array_equal(image[0], image[c]) for c in (1, 2)):
            return image[:1]
        hint = " (a multi-page TIFF reads its pages as channels)" if suffix_of(name) in (".tif", ".tiff") else ""
        raise DataError(f"{name}: has {channels} channel(s) but the model ({self.source}) expects "
                        f"{self.in_channels}{hint}")

    def _probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Probabilities of a batch of windows; an ensemble averages its models' probabilities."""
        total = None
        for index, model in enumerate(self.models):
            if self.fast:
                model = self._fast_model(index, model, tuple(x.shape))
            dtype = torch.float16 if self.device.type == "cuda" else \
                torch.bfloat16 if self.precision == "bf16" else None
            with torch.autocast(self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                logits = model(x)
            if isinstance(logits, (list, tuple)):
                logits = logits[0]
            logits = logits.float()
            probs = torch.softmax(logits, dim=1) if self.mode == "multiclass" else torch.sigmoid(logits)
            total = probs if total is None else total + probs
        return total if len(self.models) == 1 else total / len(self.models)

    def _fast_model(self, index: int, model: nn.Module, shape: tuple[int, ...]) -> nn.Module:
        """`model` through `optimize_for_inference`, probed on the first window batch of this
        per-sample shape (the largest: a smaller last batch runs padded); cached per model and shape."""
        from unetkit.export.optimize import optimize_for_inference

        key = (index, *shape[1:])
        if key not in self._fast_models:
            example = shape
            precision = "fp16" if self.device.type == "cuda" else self.precision
            self._fast_models[key] = optimize_for_inference(model, example, compile="auto", channels_last="auto",
                                                            precision=precision, device=self.device)
        return self._fast_models[key]

    def _predict_windows(self, x: torch.Tensor) -> torch.Tensor:
        if not self.tta:
            return self._probabilities(x)
        return tta_predict(self._probabilities, x, flips=True, rot90=self.spatial_dims == 2)

    def to_labels(self, probabilities: np.ndarray) -> np.ndarray:
        """`(K, *S)` probabilities -> `(1, *S)` class indices, or `(K, *S)` {0, 1} for multilabel."""
        if self.mode == "multiclass":
            dtype = np.uint8 if probabilities.shape[0] <= 256 else np.uint16
            return probabilities.argmax(axis=0)[None].astype(dtype)
        return (probabilities >= self.threshold).astype(np.uint8)

    # ---- files ------------------------------------------------------------------------------
    def output_paths(self, path: str | os.PathLike, out_dir: str | os.PathLike, save_probabilities: bool = False,
                     overlay: bool = True, measure: bool = False) -> dict[str, Path]:
        """Where `predict_file` writes the outputs of `path`."""
        out, stem, suffix = Path(out_dir), stem_of(path), suffix_of(path)
        nifti = suffix in NIFTI_SUFFIXES
        mask_suffix = ".png" if suffix in PIL_SUFFIXES else suffix
        if self.mode == "multilabel" and suffix in PIL_SUFFIXES:
            mask_suffix = ".tif"  # K channels of {0, 1}
        paths = {"mask": out / "masks" / f"{stem}{mask_suffix}"}
        if save_probabilities:
            paths["probabilities"] = out / "probabilities" / f"{stem}{suffix if nifti else '.tif'}"
        if overlay:
            paths["overlay"] = out / "overlays" / f"{stem}.png"
        if measure:
            paths["objects"] = out / "objects" / f"{stem}.csv"
        return paths

    def predict_file(self, path: str | os.PathLike, out_dir: str | os.PathLike, save_probabilities: bool = False,
                     overlay: bool = True, overwrite: bool = False, measure: bool = False, min_size: int = 0,
                     fill: bool = False, split: bool = False, min_distance: int = 5) -> dict[str, Any]:
        """Predict one file and write its outputs (see the module docstring).

        Post-processing (class masks): `min_size` removes smaller components, `fill` fills holes.
        `measure` writes per-object measurements (instances = connected components per class, split
        by a distance-transform watershed when `split`). Returns the written paths (+ `counts`).
        """
        path = Path(path)
        outputs = self.output_paths(path, out_dir, save_probabilities, overlay, measure)
        if not overwrite:
            for target in outputs.values():
                if target.exists():
                    raise FileExistsError(f"{target} exists; pass overwrite=True (--overwrite) to replace it")
        image, meta = read_input(path, self.spatial_dims)
        pred, labels = self.predict_labels(image, source=path, min_size=min_size, fill=fill,
                                           spacing=file_spacing(meta))
        result: dict[str, Any] = {"image": path, **outputs}
        if self.mode == "multilabel":
            write_image(outputs["mask"], labels, meta, overwrite=overwrite)
        else:
            write_mask(outputs["mask"], labels, meta, overwrite=overwrite)
        if save_probabilities:
            write_image(outputs["probabilities"], pred.probabilities.astype(np.float32), meta, overwrite=overwrite)
        if overlay:
            from unetkit.inference.overlay import overlay_figure

            shown_image, shown_labels = _display_slice(image, labels)
            overlay_figure(shown_image, shown_labels, outputs["overlay"], title=path.name,
                           class_names=self.class_names, overwrite=overwrite)
        if measure:
            result["counts"] = self._measure(labels, meta, outputs["objects"], overwrite, split, min_distance)
        return result

    def predict_labels(self, image: np.ndarray, source: str | os.PathLike | None = None, min_size: int = 0,
                       fill: bool = False, progress: Callable[[int, int], None] | None = None,
                       spacing: Sequence[float] | None = None) -> tuple[Prediction, np.ndarray]:
        """`predict_array` then the post-processing of `predict_file`; returns (prediction, labels)."""
        pred = self.predict_array(image, source=source, progress=progress, spacing=spacing)
        labels = pred.labels
        if self.mode != "multilabel" and (min_size > 0 or fill):
            from unetkit.evaluation.postprocess import fill_holes, remove_small_objects

            labels = remove_small_objects(labels[0], min_size)[None] if min_size > 0 else labels
            labels = fill_holes(labels[0])[None] if fill else labels
        return pred, labels

    def measure_labels(self, labels: np.ndarray, meta: VolumeMeta | None = None, split: bool = False,
                       min_distance: int = 5) -> list[dict[str, Any]]:
        """Per-object measurements of predicted `labels` (what `predict_file(measure=True)` writes)."""
        from unetkit.evaluation.measure import measure_objects
        from unetkit.evaluation.postprocess import instances_from_labels

        class_map = _as_class_map(labels)
        instances = instances_from_labels(class_map, split=split, min_distance=min_distance)
        spacing = self.spacing
        if meta is not None:
            spacing = tuple(meta.spacing[-self.spatial_dims:])
        return measure_objects(instances, class_map, spacing, class_names=self.class_names)

    def _measure(self, labels: np.ndarray, meta: VolumeMeta | None, target: Path, overwrite: bool,
                 split: bool, min_distance: int) -> dict[str, int]:
        from unetkit.evaluation.measure import count_objects, write_objects_csv

        objects = self.measure_labels(labels, meta, split, min_distance)
        write_objects_csv(objects, target, overwrite=overwrite, spatial_dims=self.spatial_dims)
        return count_objects(objects, self.class_names)

    def predict_paths(self, inputs: str | os.PathLike | Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                      skip_errors: bool = False, progress: bool = False, resume: bool = False,
                      dist: DistContext | None = None, **options: Any) -> list[dict[str, Any]]:
        """Predict files, folders (their image files) and glob patterns; options as in `predict_file`.

        With `skip_errors`, a file that fails (unreadable, wrong channels, output exists) is reported
        as `{"image": path, "error": message}` and the others go on. With `measure`, also writes
        `out_dir/counts.csv`. With `resume`, a file whose outputs all exist is skipped (its counts are
        read back from its objects CSV) and a file with only some outputs is predicted again.

        `dist` (a joined `DistContext`, e.g. under `torchrun`): the sorted input list is split
        across the processes (process r takes files r, r + N, r + 2N, ...); each writes its own
        files' outputs, and after gathering every process's results the main one writes the one
        `counts.csv`. Every process returns the combined results, in input order. Without
        `skip_errors` a process stops at its first error and, after the gather, all processes raise it.
        """
        from unetkit.training.distributed import DistContext

        ctx = dist or DistContext()
        files = expand_inputs(inputs)
        check_options(min_size=options.get("min_size"))
        if not options.get("overwrite", False) and not skip_errors and not resume:  # refuse before any work
            kinds = {k: options[k] for k in ("save_probabilities", "overlay", "measure") if k in options}
            for path in files:
                for target in self.output_paths(path, out_dir, **kinds).values():
                    if target.exists():
                        raise FileExistsError(f"{target} exists (from an earlier prediction); pass "
                                              f"overwrite=True (--overwrite), resume=True (--resume) to skip "
                                              f"finished images, or choose another output folder")
        ctx.barrier()  # every process has checked the outputs before any process writes one
        mine = list(enumerate(files))[ctx.rank::ctx.world_size]
        if progress and ctx.is_main:
            from tqdm import tqdm

            mine = tqdm(mine, desc="predict", unit="image")
        results: list[tuple[int, dict[str, Any]]] = []
        for index, path in mine:
            try:
                results.append((index, self._predict_or_resume(path, out_dir, resume, options)))
            except (DataError, FileExistsError) as err:
                if not skip_errors and not ctx.enabled:
                    raise
                results.append((index, {"image": path, "error": str(err)}))
                if not skip_errors:
                    break
        if ctx.enabled:
            results = sorted((r for part in ctx.gather_objects(results) for r in part), key=lambda r: r[0])
        combined = [r for _, r in results]
        failed = [r for r in combined if "error" in r]
        if failed and not skip_errors:
            raise DataError(failed[0]["error"])
        if options.get("measure") and ctx.is_main:
            update_counts(Path(out_dir), [{"image": r["image"].name, **r["counts"]} for r in combined
                                          if "counts" in r])
        ctx.barrier()
        return combined

    def _predict_or_resume(self, path: Path, out_dir: str | os.PathLike, resume: bool,
                           options: dict[str, Any]) -> dict[str, Any]:
        if not resume:
            return self.predict_file(path, out_dir, **options)
        outputs = self.output_paths(path, out_dir, options.get("save_probabilities", False),
                                    options.get("overlay", True), options.get("measure", False))
        if not all(target.exists() for target in outputs.values()):
            return self.predict_file(path, out_dir, **{**options, "overwrite": True})
        result: dict[str, Any] = {"image": path, **outputs, "skipped": True}
        if "objects" in outputs:
            from unetkit.evaluation.measure import count_objects

            with open(outputs["objects"], newline="") as f:
                result["counts"] = count_objects(csv.DictReader(f), self.class_names)
        return result


def update_counts(out_dir: Path, rows: list[dict[str, Any]]) -> Path:
    """Merge per-image rows into `out_dir/counts.csv`: a re-predicted image replaces its row, rows of
    earlier images are kept while their objects/<stem>.csv is still there, so the file always lists
    exactly the images measured in this folder."""
    import csv

    from unetkit.evaluation.measure import write_rows_csv

    path = out_dir / "counts.csv"
    merged: dict[str, dict[str, Any]] = {}
    if path.is_file():
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                if row.get("image") and (out_dir / "objects" / f"{stem_of(row['image'])}.csv").is_file():
                    merged[row["image"]] = row
    for row in rows:
        merged[row["image"]] = row
    names = sorted({k for r in merged.values() for k in r} - {"image", "total"})
    table = [{**{n: 0 for n in names}, **r} for _, r in sorted(merged.items())]
    return write_rows_csv(table, path, overwrite=True, columns=["image", *names, "total"])


# ---- helpers ----------------------------------------------------------------------------------
def check_options(overlap: float | None = None, batch_size: int | None = None, threshold: float | None = None,
                  roi_size: int | Sequence[int] | None = None, min_size: int | None = None) -> None:
    """Refuse prediction settings that cannot work, before any work (ConfigError naming the setting)."""
    if overlap is not None and not 0.0 <= float(overlap) < 1.0:
        raise ConfigError(f"overlap (--overlap) must be in [0, 1), got {overlap:g}")
    if batch_size is not None and int(batch_size) < 1:
        raise ConfigError(f"batch size (--batch-size) must be at least 1, got {batch_size}")
    if threshold is not None and not 0.0 <= float(threshold) <= 1.0:
        raise ConfigError(f"threshold (--threshold) is a probability in [0, 1], got {threshold:g}")
    if min_size is not None and int(min_size) < 0:
        raise ConfigError(f"minimum object size (--min-size) must be >= 0, got {min_size}")
    if roi_size is not None:
        sizes = [roi_size] if isinstance(roi_size, (int, np.integer)) else list(roi_size)
        if not sizes or any(int(r) < 1 for r in sizes):
            raise ConfigError(f"window size (--roi) must be positive, got {roi_size}")


def _check_precision(precision: str, device: torch.device) -> str:
    """'fp32' or 'bf16' (bf16 autocast on the CPU, refused where oneDNN has no bf16: it would be slower)."""
    if precision not in ("fp32", "bf16"):
        raise ConfigError(f"precision must be fp32 or bf16, got '{precision}'")
    if precision == "bf16" and device.type == "cpu":
        from unetkit.export.optimize import cpu_bf16_supported

        if not cpu_bf16_supported():
            raise ConfigError("precision bf16: this CPU has no oneDNN bf16 (AVX-512 BF16 / AMX), where bf16 "
                              "would be slower than fp32; use fp32")
    return precision


def _resolve_device(device: str) -> str:
    from unetkit.devices import resolve_device

    return str(resolve_device(device))


def _load_with_settings(path: str | os.PathLike, device: str) -> tuple[nn.Module, dict[str, Any]]:
    """A model file's model and the Predictor settings stored in its metadata."""
    model = load_model(path, map_location=device)
    meta = model.unetkit_meta
    extra = meta.get("extra") or {}
    in_channels = meta["config"].get("in_channels")
    if extra.get("in_channels") not in (None, in_channels):
        raise CheckpointError(f"{path}: metadata says in_channels={extra['in_channels']} but the "
                              f"'{meta['arch']}' model takes {in_channels}")
    settings = {"preprocess": extra.get("preprocess"), "mode": extra.get("mode"),
                "threshold": extra.get("threshold", 0.5), "class_names": extra.get("class_names"),
                "spacing": extra.get("spacing"), "in_channels": in_channels, "patch_size": extra.get("patch_size"),
                "postprocessing": extra.get("postprocessing"), "source": str(path),
                "target_spacing": extra.get("target_spacing")}
    return model, settings


def _check_agreement(paths: Sequence[Path], loaded: Sequence[tuple[nn.Module, dict[str, Any]]]) -> None:
    """Ensemble members must predict the same thing from the same input; name the files that differ."""
    def facts(model: nn.Module, settings: dict[str, Any]) -> dict[str, Any]:
        classes = int(getattr(model, "num_classes", 1))
        return {"spatial_dims": int(getattr(model, "spatial_dims", 2)), "num_classes": classes,
                "in_channels": settings["in_channels"],
                "mode": settings["mode"] or ("binary" if classes == 1 else "multiclass"),
                "preprocessing": settings["preprocess"], "target_spacing": settings.get("target_spacing"),
                "padding": getattr(model, "padding", "same")}

    first = facts(*loaded[0])
    for path, item in zip(paths[1:], loaded[1:]):
        other = facts(*item)
        for key, value in first.items():
            if other[key] != value:
                raise CheckpointError(f"{path}: {key} is {other[key]!r} but {paths[0]} has {value!r}; "
                                      "the models of an ensemble must agree on dims, classes, input channels, "
                                      "mode, preprocessing, target spacing and padding")


def read_input(path: str | os.PathLike, spatial_dims: int) -> tuple[np.ndarray, VolumeMeta | None]:
    """Read an image `(C, H, W)` or volume `(C, D, H, W)`; NIfTI keeps its `VolumeMeta` (2D: depth 1)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    suffix = suffix_of(path)
    if spatial_dims == 3:
        return read_volume(path)
    if suffix in NIFTI_SUFFIXES:
        volume, meta = read_volume(path)
        if volume.shape[1] != 1:
            raise DataError(f"{path}: is a volume of depth {volume.shape[1]}; this model is 2D")
        return volume[:, 0], meta
    return read_image(path), None


def file_spacing(meta: VolumeMeta | None) -> tuple[float, ...] | None:
    """The voxel spacing a file states (NIfTI; a TIFF with spacing metadata), or None when it states none."""
    if meta is None or meta.extra.get("spacing_read") is False:
        return None
    return tuple(meta.spacing)


def expand_inputs(inputs: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Files from files, folders (their image files, sorted) and glob patterns; stems must be unique."""
    items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    files: list[Path] = []
    for item in items:
        text = str(item)
        if any(ch in text for ch in "*?["):
            matches = sorted(Path(p) for p in glob.glob(text, recursive=True) if is_image_file(p))
            if not matches:
                raise DataError(f"{text}: no image file matches")
            files += matches
        elif Path(text).is_dir():
            found = sorted(p for p in Path(text).iterdir() if p.is_file() and is_image_file(p))
            if not found:
                raise DataError(f"{text}: folder holds no image files")
            files += found
        elif Path(text).is_file():
            files.append(Path(text))
        elif text.isdigit():
            raise DataError(f"{text}: no such file or folder (a window size per axis is written --roi {text},{text})")
        elif text.lower() in ("true", "false", "yes", "no", "on", "off"):
            raise DataError(f"{text}: no such file or folder (flags such as --tta take no value)")
        else:
            raise DataError(f"{text}: no such file or folder")
    seen: dict[str, Path] = {}
    for f in files:
        other = seen.setdefault(stem_of(f), f)
        if other != f:
            raise DataError(f"{f}: has the same name stem as {other}; their outputs would collide")
    return list(dict.fromkeys(files))


def _as_class_map(labels: np.ndarray) -> np.ndarray:
    """(1, *S) class indices -> (*S); multilabel (K, *S) -> class k + 1 where channel k is set."""
    if labels.shape[0] == 1:
        return labels[0]
    out = np.zeros(labels.shape[1:], dtype=np.int32)
    for k, channel in enumerate(labels):
        out[channel > 0] = k + 1
    return out


def _display_slice(image: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """2D: as is. 3D: the depth slice with the most foreground (the middle one if none)."""
    if image.ndim == 3:
        return image, labels
    class_map = _as_class_map(labels)
    counts = (class_map > 0).reshape(class_map.shape[0], -1).sum(axis=1)
    z = int(counts.argmax()) if counts.any() else class_map.shape[0] // 2
    return image[:, z], class_map[z]
