"""The planner: from a dataset folder, a device and a time budget to a plain TrainConfig.

    p = plan("data/", budget="10m")          # device="auto", memory=None, modality=None
    print(p.table())                         # what was chosen, and why
    p.save("plan.yaml")                      # a TrainConfig YAML the user can read and edit
    unetkit.train(p.config)

nnU-Net v2's rules are the baseline (experiment_planning/experiment_planners/default_experiment_planner.py):
- target spacing: the median spacing; on an anisotropic axis (spacing > 3x the others and few
  voxels along it) the 10th percentile. 3D cases are resampled to it for training and prediction
  (`data.target_spacing`) when some case's spacing differs from it by more than 5% on an axis;
  otherwise they are trained as they are. Shapes (the median shape capping the patch, the
  validation cost) are those in target space, as nnU-Net's;
- normalisation by modality: CT is clipped to the foreground's 0.5-99.5 percentiles and z-scored
  with the foreground's dataset mean/std; everything else is z-scored per image;
- patch: a 256^3 (3D) / 2048^2 (2D) voxel budget shaped by the spacing, capped at the median shape;
  pooling down to feature maps of at least 4 px; widths from 32, doubling, capped at 320 (3D) /
  512 (2D); instance norm in 3D;
- Dice + CE with deep supervision; 1/3 of patches centred on foreground; the default augmentation;
- 2D or 3D from the data; an epoch is a fixed number of iterations.

Beyond nnU-Net (which plans for an 8 GB GPU and a 1000-epoch run): the plan fits the device and the
time budget. Candidates (patch scaled down from nnU-Net's, base width 32/16/8) are priced by their
FLOPs; a few are timed for real on this device (`unetkit.planning.probe`), which calibrates the
others. The chosen candidate maximises a utility that rewards context (patch), capacity (width)
and the number of optimiser steps the budget allows (capped at 2000, below 400 steps a candidate
is only taken when nothing faster exists). Iterations, epochs, validation frequency, learning rate
and schedule follow from the chosen step time; early stopping is off (the budget ends the run).

Anisotropic volumes (3D, spacing differing by 2x or more between axes) get nnU-Net's per-axis
pooling and kernels (`pool_and_conv_props`): the UNet's `strides` / `kernel_sizes`, so a thick axis
is pooled (and convolved) only once the in-plane axes have caught up with its spacing. 2D and
isotropic data pool every axis together.
"""
from __future__ import annotations

import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from unetkit.errors import ConfigError
from unetkit.planning.fingerprint import Fingerprint, dataset_fingerprint
from unetkit.training.config import TrainConfig

DEFAULT_BUDGET_MINUTES = 10.0
MIN_STEPS = 400  # below this a candidate is taken only when nothing faster exists
STEP_CAP = 2000  # more steps stop adding to the utility: spend the time on a larger model instead
WIDTHS = (32, 16, 8)
SCALES = (1.0, 0.75, 0.5, 0.375, 0.25, 0.1875, 0.125)
MAX_DEPTH = {2: 7, 3: 6}
WIDTH_CAP = {2: 512, 3: 320}


@dataclass
class Plan:
    """A planned run: `config` (a TrainConfig), the fingerprint, and the reasons (what, value, why)."""

    config: TrainConfig
    fingerprint: Fingerprint
    reasons: list[tuple[str, str, str]]
    candidates: list[dict[str, Any]] = field(default_factory=list)
    budget_minutes: float = DEFAULT_BUDGET_MINUTES
    device: str = "cpu"
    seconds: float = 0.0  # time spent planning

    def table(self) -> str:
        """The plan as an aligned table: setting, value, why."""
        w1 = max(len(r[0]) for r in self.reasons)
        w2 = min(44, max(len(r[1]) for r in self.reasons))
        lines = [f"plan for {self.fingerprint.root} ({self.device}, budget {_minutes(self.budget_minutes)}, "
                 f"planned in {self.seconds:.0f} s)", f"{'setting':<{w1}}  {'value':<{w2}}  why",
                 f"{'-' * w1}  {'-' * w2}  ---"]
        lines += [f"{a:<{w1}}  {b:<{w2}}  {c}" for a, b, c in self.reasons]
        return "\n".join(lines)

    def configure(self, overrides: Sequence[str] = ()) -> TrainConfig:
        """The plan's TrainConfig with `overrides` (`section.field=value`, as `--set`) applied. When
        they change the depth (`model.kwargs.features`) of an anisotropic plan but not its per-axis
        `strides` / `kernel_sizes`, those are derived again for the new depth by the same rule."""
        cfg = self.config.with_overrides(list(overrides))
        kw = cfg.model.kwargs
        given = " ".join(overrides)
        if kw.get("strides") is not None and "strides" not in given and "kernel_sizes" not in given:
            levels = len(kw.get("features") or [])
            if levels and len(kw["strides"]) != levels - 1:
                patch = cfg.data.patch_size or self.config.data.patch_size
                strides, kernels = pool_and_conv_props(target_spacing(self.fingerprint), patch, levels - 1)
                dims = len(patch)
                strides += [[2] * dims] * (levels - 1 - len(strides))  # a patch too small for the rule
                kernels = kernels[:-1] + [[3] * dims] * (levels - len(kernels) + 1)
                kw["strides"], kw["kernel_sizes"] = strides, kernels[:levels]
        return cfg

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the TrainConfig as YAML, the table as a comment on top (atomic; no silent overwrite)."""
        from unetkit.io.atomic import atomic_path

        path = Path(path)
        header = "".join(f"# {line}\n" for line in self.table().splitlines())
        with atomic_path(path, overwrite=overwrite) as tmp:
            tmp.write_text(header + self.config.to_yaml(), encoding="utf-8")
        return path


def parse_budget(budget: str | float | int | None) -> float | None:
    """Minutes from '10m', '90s', '1.5h', '45' (minutes) or a number of minutes; None stays None."""
    if budget is None:
        return None
    if isinstance(budget, (int, float)) and not isinstance(budget, bool):
        value = float(budget)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([smh]?)\s*", str(budget).lower())
        if not m:
            raise ConfigError(f"budget '{budget}' must look like 10m, 90s, 1.5h or a number of minutes")
        value = float(m.group(1)) * {"s": 1 / 60, "m": 1.0, "": 1.0, "h": 60.0}[m.group(2)]
    if value <= 0:
        raise ConfigError(f"budget must be positive, got {budget}")
    return value


def parse_memory(memory: str | int | None) -> int | None:
    """Bytes from '8G', '512M', '16GB' or a number of bytes."""
    if memory is None:
        return None
    if isinstance(memory, int):
        return memory
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)i?b?\s*", str(memory).lower())
    if not m:
        raise ConfigError(f"memory '{memory}' must look like 8G, 512M or a number of bytes")
    return int(float(m.group(1)) * 1024 ** " kmgt".index(m.group(2) or " "))


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ConfigError(f"device must be auto, cpu or cuda, got '{device}'")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but PyTorch sees no CUDA device")
    return device


def plan(data: str | os.PathLike, *, masks: str | os.PathLike | None = None, mask_suffix: str | None = None,
         device: str = "auto", budget: str | float | None = None, memory: str | int | None = None,
         modality: str | None = None, spatial_dims: int | None = None, probe: bool = True,
         started: float | None = None) -> Plan:
    """Plan a training run for the dataset folder `data` (see the module docstring).

    budget: the whole run's time (default 10 minutes); memory: the most the run may use (default:
    80% of the GPU's memory, or 8 GB on the CPU); probe=False prices candidates by FLOPs only.
    started: `time.monotonic()` at which the budget began (default: now).
    """
    started = time.monotonic() if started is None else started
    dev = resolve_device(device)
    minutes = parse_budget(budget) or DEFAULT_BUDGET_MINUTES
    limit = parse_memory(memory) or _default_memory(dev)
    t0 = time.monotonic()
    fp = dataset_fingerprint(data, masks, mask_suffix, modality=modality, spatial_dims=spatial_dims)
    read_seconds = max(time.monotonic() - t0, float(fp.extra.get("seconds", 0.0)))
    reasons: list[tuple[str, str, str]] = []
    add = lambda what, value, why: reasons.append((what, str(value), why))  # noqa: E731

    dims, channels = fp.spatial_dims, fp.channels
    num_classes = 1 if fp.num_classes <= 2 else fp.num_classes
    add("data", f"{fp.num_cases} case(s), {dims}D, {channels} ch, {'/'.join(fp.dtypes)}",
        f"fingerprint; modality {fp.modality} ({fp.modality_source})")
    add("dimensions", f"{dims}D", "the data are " + ("volumes" if dims == 3 else "images"))
    add("in_channels", channels, f"the images have {channels} channel(s)")
    add("num_classes", f"{num_classes} ({'binary, sigmoid' if num_classes == 1 else 'softmax'})",
        f"mask labels: {fp.num_classes} classes incl. background ({fp.mask_kind})")
    spacing = target_spacing(fp)
    resample_to = ([float(f"{v:.6g}") for v in spacing]  # readable in the YAML (NIfTI spacings are float32)
                   if dims == 3 and needs_resampling(fp, spacing) else None)
    if dims == 3:
        add("target spacing", _fmt(spacing), "nnU-Net: median (10th percentile on a thick anisotropic axis); "
            + ("applied (cases differ from it by > 5%): training and prediction resample to it"
               if resample_to is not None else "every case within 5% of it: trained at native spacing"))
    normalize, why = normalization(fp)
    add("normalisation", normalize["mode"], why)

    single = fp.num_cases == 1
    extent = [float(s) for s in np.median(case_shapes(fp, resample_to), axis=0)]  # in target space
    val_fraction = 0.2
    if single:  # the training region of a region split
        axis = max(range(dims), key=lambda a: (extent[a], a))
        extent[axis] *= 1 - val_fraction
    base = nnunet_patch(extent, spacing if dims == 3 else [1.0] * dims, dims)
    candidates = make_candidates(base, dims, channels, num_classes, fp, limit, spacing)
    if not candidates:
        raise ConfigError(f"no candidate configuration fits in {limit / 2**30:.1f} GB of memory; raise --memory")

    budget_s = 60 * minutes
    reserve = max(10.0, 0.08 * budget_s) + 1.5 * read_seconds  # data read/checked again by training, start-up
    val_voxels = _validation_voxels(fp, val_fraction, resample_to)
    workers = _workers(dev)
    threads = _price(candidates, dev, probe, budget_s, dims, channels)
    spent = time.monotonic() - started
    train_s = budget_s - spent - reserve
    if train_s <= 0:
        raise ConfigError(f"the budget ({_minutes(minutes)}) is spent before training starts (planning and data "
                          f"reading take about {spent + reserve:.0f} s); give a larger --budget")
    for c in candidates:
        _schedule(c, train_s, val_voxels, fp, workers, dev, _augment_per_voxel(candidates))
    chosen = choose(candidates)
    for _ in range(3):
        # check the prediction on the chosen one while that is cheap: the schedule (epochs, the cosine's
        # end) is derived from its step time, and a prediction from other candidates' rates can be off
        # by their precision (bf16 where the probe chose it) as well as by the FLOPs model
        if not probe or chosen.get("measured") or 3 * chosen["compute_s"] >= max(5.0, 0.03 * budget_s):
            break
        measured = _time(chosen, dev, dims, channels, threads=threads)
        ratio = measured / max(chosen["compute_s"], 1e-9)
        for c in candidates:
            c["rate"] /= ratio
            c["compute_s"] *= ratio if not c.get("measured") else 1.0
        chosen["compute_s"], chosen["measured"] = measured, True
        for c in candidates:
            _schedule(c, train_s, val_voxels, fp, workers, dev, _augment_per_voxel(candidates))
        chosen = choose(candidates)

    base_features = WIDTHS[0]
    nn_c = next((c for c in candidates if c["scale"] == 1.0 and c["features"][0] == base_features), None)
    patch = chosen["patch"]
    add("patch", "x".join(map(str, patch)),
        f"nnU-Net's would be {'x'.join(map(str, base))}; "
        f"{'the same' if chosen['scale'] == 1.0 else 'scaled down'}: best context x capacity x steps in the budget")
    add("network", f"unet, widths {chosen['features']}", f"base width {chosen['features'][0]} "
        f"(nnU-Net: 32, capped at {WIDTH_CAP[dims]}); depth {len(chosen['features'])}: "
        + ("pooled to >= 4 px on the thinnest patch axis" if chosen.get("strides") is None
           else "pooled per axis (see pooling)"))
    add("pooling", *describe_pooling(chosen.get("strides"), chosen.get("kernel_sizes"), patch,
                                     spacing if dims == 3 else [1.0] * dims))
    add("norm", chosen["norm"], "instance norm in 3D and for small batches (nnU-Net); batch norm for 2D batches >= 4")
    add("batch", chosen["batch"], "3D: 2 (nnU-Net); 2D: 8, 4 for large patches, at most 5% of the data per step")
    timing = "measured" if chosen.get("measured") else "predicted from FLOPs"
    tried = next((c["threads_tried"] for c in candidates if "threads_tried" in c), None)
    if tried is not None:
        add("threads", threads or f"default ({torch.get_num_threads()})",
            f"a probe step took {tried['default']:.3g} s with the default threads, {tried['1']:.3g} s with 1")
    add("step time", f"{chosen['step_s']:.3g} s", f"{timing} on {dev}"
        + (f" (compute {chosen['compute_s']:.3g} s + augmentation)" if chosen["step_s"] > chosen["compute_s"] else "")
        + f"; {sum(1 for c in candidates if c.get('measured'))} of {len(candidates)} candidates timed")
    if nn_c is not None and nn_c is not chosen:
        add("nnU-Net baseline", f"{nn_c['steps']} steps", f"nnU-Net's patch at width 32 would take "
            f"{nn_c['step_s']:.3g} s/step: too few steps for {_minutes(minutes)}" if nn_c["steps"] < MIN_STEPS
            else f"nnU-Net's patch at width 32: {nn_c['step_s']:.3g} s/step, lower utility here")
    epochs, steps_per_epoch, val_every = chosen["epochs"], chosen["steps_per_epoch"], chosen["val_every"]
    add("iterations", f"{epochs} epochs x {steps_per_epoch} steps",
        f"{train_s:.0f} s for training in the budget, validation {chosen['val_s']:.1f} s each, "
        f"every {val_every} epoch(s)")
    total = epochs * steps_per_epoch
    if total >= 5000:
        optim = {"name": "sgd", "lr": 0.01, "momentum": 0.99, "nesterov": True, "weight_decay": 3e-5}
        schedule = {"name": "poly", "power": 0.9, "warmup_epochs": 0.0}
        add("optimiser", "SGD lr 0.01, momentum 0.99, poly 0.9", "nnU-Net's, for long runs (>= 5000 steps)")
    else:
        lr = 3e-3 if total < 1500 else 2e-3
        warmup = round(max(0.05 * epochs, min(0.5, epochs / 10)), 3)
        optim = {"name": "adamw", "lr": lr, "weight_decay": 1e-4}
        schedule = {"name": "cosine", "warmup_epochs": warmup}
        add("optimiser", f"AdamW lr {lr:g}, cosine, warm-up {warmup:g} epoch(s)",
            f"{total} steps: a short run converges faster with Adam and a larger rate, decayed to 0 by the end")
    model_kwargs = {"features": list(chosen["features"]), "norm": chosen["norm"], "deep_supervision": True}
    if chosen.get("strides") is not None:  # anisotropic: nnU-Net's per-axis pooling and kernels
        model_kwargs["strides"] = [list(v) for v in chosen["strides"]]
        model_kwargs["kernel_sizes"] = [list(v) for v in chosen["kernel_sizes"]]
    if probe and dev == "cpu":
        add("precision", *_cpu_precision(dims, channels, num_classes, model_kwargs, chosen, threads))
    elif dev.startswith("cuda"):
        add("precision", "mixed (autocast)", "AMP on CUDA (nnU-Net)")
    add("loss", "Dice + CE, deep supervision", "nnU-Net")
    add("sampling", f"{steps_per_epoch * chosen['batch']} patches/epoch, 1/3 on foreground",
        "nnU-Net: an epoch is a fixed number of iterations; foreground oversampling")
    add("validation", "region split (a 20% slab holding foreground)" if single else "20% of the cases",
        "a single image or volume is split by region" if single else "seeded split, recorded in splits.json")
    add("early stopping", "off", "the budget and the schedule end the run")
    add("best model", f"moving average {MONITOR_EMA:g} of validation Dice", "nnU-Net's rule: one lucky validation "
        "(a slab of a single volume, a few cases) does not choose the model")

    cfg = TrainConfig()
    cfg.model.name, cfg.model.spatial_dims = "unet", dims
    cfg.model.in_channels, cfg.model.num_classes = channels, num_classes
    cfg.model.kwargs = model_kwargs
    d = cfg.data
    d.images = str(Path(data).resolve())
    d.masks = str(Path(masks).resolve()) if masks is not None else None
    d.mask_suffix = mask_suffix or ""
    d.mask_kind = fp.mask_kind
    d.val_fraction = val_fraction
    d.patch_size = list(patch)
    d.batch_size = chosen["batch"]
    d.samples_per_epoch = steps_per_epoch * chosen["batch"]
    d.oversample_foreground = 0.33
    d.normalize = normalize
    d.target_spacing = [float(v) for v in resample_to] if resample_to is not None else None
    d.augmentation = "default"
    cfg.optim = type(cfg.optim)(**{**cfg.optim.__dict__, **optim})
    cfg.schedule = type(cfg.schedule)(**{**cfg.schedule.__dict__, **schedule})
    cfg.loss.name = "combo"
    cfg.epochs, cfg.val_every, cfg.early_stop_patience = epochs, val_every, None
    cfg.monitor = "dice"
    cfg.monitor_ema = MONITOR_EMA
    cfg.max_minutes = round(minutes, 4)
    cfg.device = dev
    cfg.threads = threads
    result = Plan(cfg, fp, reasons, candidates, minutes, dev, seconds=time.monotonic() - started)
    return result


def _cpu_precision(dims: int, channels: int, num_classes: int, kwargs: dict[str, Any], chosen: dict[str, Any],
                   threads: int | None) -> tuple[str, str]:
    """The plan's precision row: what the Trainer's amp 'auto' will run the chosen model in on this
    CPU (the same probes, so the Trainer finds their cached answers)."""
    from unetkit.export.optimize import cpu_bf16_supported, probe_channels_last, probe_cpu_autocast
    from unetkit.models import create_model

    if not cpu_bf16_supported():
        return "fp32", "this CPU has no oneDNN bf16 (AMX / AVX-512): mixed precision would be slower"
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        model = create_model("unet", spatial_dims=dims, in_channels=channels, num_classes=num_classes, **kwargs)
        example = (min(chosen["batch"], 2), channels, *chosen["patch"])
        bf16 = probe_cpu_autocast(model, example, train=True, channels_last=probe_channels_last(model, example))
    finally:
        torch.set_num_threads(before)
    if bf16:
        return "bf16 mixed", "a probe step ran >= 1.25x faster in bf16 autocast than in fp32 (fp32 weights); amp=off for fp32"
    return "fp32", "bf16 autocast measured less than 1.25x faster here"


# ---- nnU-Net's rules ---------------------------------------------------------------------------
def target_spacing(fp: Fingerprint) -> list[float]:
    """nnU-Net: the median spacing; the 10th percentile on an anisotropic axis with few voxels."""
    spacings = np.array([c["spacing"] for c in fp.cases], dtype=np.float64)
    shapes = np.array([c["shape"] for c in fp.cases], dtype=np.float64)
    target = np.median(spacings, axis=0)
    if fp.spatial_dims == 3:
        worst = int(np.argmax(target))
        other = [i for i in range(3) if i != worst]
        shape_in_target = np.median(shapes * spacings / target, axis=0)
        if target[worst] > 3 * target[other].min() and shape_in_target[worst] * 3 < shape_in_target[other].min():
            t = float(np.percentile(spacings[:, worst], 10))
            if t < target[other].max():
                t = max(float(target[other].max()), t) + 1e-5
            target[worst] = t
    return [float(v) for v in target]


MONITOR_EMA = 0.9  # nnU-Net v2 keeps checkpoint_best by 0.9 * ema + 0.1 * pseudo-Dice
SPACING_TOLERANCE = 0.05  # cases within 5% of the target spacing on every axis are not resampled


def needs_resampling(fp: Fingerprint, target: Sequence[float]) -> bool:
    """Whether some case's spacing differs from `target` by more than SPACING_TOLERANCE on an axis."""
    spacings = np.array([c["spacing"] for c in fp.cases], dtype=np.float64)
    return bool(np.any(np.abs(spacings / np.asarray(target, dtype=np.float64) - 1.0) > SPACING_TOLERANCE))


def case_shapes(fp: Fingerprint, target: Sequence[float] | None) -> np.ndarray:
    """`(N, dims)` case shapes, resampled to `target` (as `unetkit.data.volume.resample` rounds) unless None."""
    shapes = np.array([c["shape"] for c in fp.cases], dtype=np.float64)
    if target is None:
        return shapes
    spacings = np.array([c["spacing"] for c in fp.cases], dtype=np.float64)
    return np.maximum(1.0, np.round(shapes * spacings / np.asarray(target, dtype=np.float64)))


def normalization(fp: Fingerprint) -> tuple[dict[str, Any], str]:
    """nnU-Net's scheme by modality: CT -> foreground-clipped dataset z-score, else per-image z-score."""
    if fp.modality == "ct":
        fg = fp.intensity_foreground
        if fg.get("mean"):
            return ({"mode": "dataset", "mean": [float(v) for v in fg["mean"]], "std": [float(v) for v in fg["std"]],
                     "clip": [[float(lo), float(hi)] for lo, hi in zip(fg["p0.5"], fg["p99.5"])]},
                    "CT: clip to the foreground 0.5-99.5 percentiles, z-score with foreground mean/std")
    return {"mode": "zscore"}, f"modality {fp.modality}: z-score per image and channel (nnU-Net's default)"


def nnunet_patch(extent: Sequence[float], spacing: Sequence[float], dims: int) -> list[int]:
    """nnU-Net's starting patch: a 256^3 / 2048^2 voxel budget shaped by 1/spacing, capped at the
    median shape, then made divisible by its pooling."""
    tmp = 1.0 / np.asarray(spacing, dtype=np.float64)
    total = 256.0**3 if dims == 3 else 2048.0**2
    initial = tmp * (total / np.prod(tmp)) ** (1 / dims)
    patch = [max(8, int(min(i, e))) for i, e in zip(initial, extent)]
    return _divisible(patch, dims)[0]


def pools_for(patch: Sequence[int], dims: int) -> int:
    """Poolings of an isotropic-pooling UNet so every axis keeps >= 4 px (at most MAX_DEPTH - 1)."""
    return max(1, min(min(int(math.floor(math.log2(max(p, 4) / 4))) for p in patch), MAX_DEPTH[dims] - 1))


def _divisible(patch: Sequence[int], dims: int) -> tuple[list[int], int]:
    pools = pools_for(patch, dims)
    step = 2**pools
    return [max(step, (int(p) // step) * step) for p in patch], pools


def pool_and_conv_props(spacing: Sequence[float], patch: Sequence[int], max_pools: int,
                        min_feature_map: int = 4) -> tuple[list[list[int]], list[list[int]]]:
    """nnU-Net v2's `get_pool_and_conv_props`: (down-sampling factor per axis for each stage below
    the top, conv kernel per axis for each stage). An axis is pooled only while its current spacing
    is within 2x of the finest current spacing and it keeps >= `min_feature_map` px (a lone axis
    >= 3x that); its kernel is 1 until its spacing comes within 2x of the finest, then 3.
    At most `max_pools` stages below the top."""
    dims = len(spacing)
    current_spacing, current_size = [float(s) for s in spacing], [float(p) for p in patch]
    kernel = [1] * dims
    strides: list[list[int]] = []
    kernels: list[list[int]] = []
    while len(strides) < max_pools:
        valid = [i for i in range(dims) if current_size[i] >= 2 * min_feature_map]
        if not valid:
            break
        finest = min(current_spacing[i] for i in valid)
        valid = [i for i in valid if current_spacing[i] / finest < 2]
        if len(valid) == 1 and current_size[valid[0]] < 3 * min_feature_map:
            break
        if not valid:
            break
        for d in range(dims):
            if kernel[d] != 3 and current_spacing[d] / min(current_spacing) < 2:
                kernel[d] = 3
        step = [2 if d in valid else 1 for d in range(dims)]
        for d in valid:
            current_spacing[d] *= 2
            current_size[d] = math.ceil(current_size[d] / 2)
        strides.append(step)
        kernels.append(list(kernel))
    kernels.append([3] * dims)  # the bottleneck: 3 on every axis (nnU-Net)
    return strides, kernels


def patch_geometry(patch: Sequence[int], spacing: Sequence[float], dims: int
                   ) -> tuple[list[int], list[int], list[list[int]] | None, list[list[int]] | None]:
    """(patch made divisible, features' depth - 1 as the number of poolings, per-axis strides,
    per-axis kernels) for a candidate patch. 3D data whose spacing differs by 2x or more between axes
    get nnU-Net's per-axis pooling (`pool_and_conv_props`); otherwise (2D, isotropic 3D) every axis is
    pooled together, as before (strides and kernels None)."""
    anisotropic = dims == 3 and max(spacing) / min(spacing) >= 2
    if not anisotropic:
        patch, pools = _divisible(patch, dims)
        return patch, [pools], None, None
    patch = [int(p) for p in patch]
    for _ in range(4):  # rounding down to the total stride may remove a pooling: settle
        strides, kernels = pool_and_conv_props(spacing, patch, MAX_DEPTH[dims] - 1)
        total = [int(np.prod([s[a] for s in strides])) for a in range(dims)]
        rounded = [max(t, (p // t) * t) for p, t in zip(patch, total)]
        if rounded == patch:
            break
        patch = rounded
    if not strides:  # too small to pool by the rule: one pooling on every axis, as before
        patch, pools = _divisible(patch, dims)
        return patch, [pools], None, None
    return patch, [len(strides)], strides, kernels


def describe_pooling(strides: Sequence[Sequence[int]] | None, kernels: Sequence[Sequence[int]] | None,
                     patch: Sequence[int], spacing: Sequence[float]) -> tuple[str, str]:
    """(value, why) for the plan's "pooling" row."""
    dims = len(patch)
    if strides is None:
        pools = pools_for(patch, dims)
        return (f"{pools} x 2 on every axis",
                "spacing within 2x on every axis: all axes pooled together down to >= 4 px")
    total = [int(np.prod([s[a] for s in strides])) for a in range(dims)]
    bottom = [p // t for p, t in zip(patch, total)]
    value = " ".join("".join(map(str, s)) for s in strides) + f" (x{'x'.join(map(str, total))})"
    flat = [a for a in range(dims) if kernels and kernels[0][a] == 1]
    why = (f"nnU-Net: an axis is pooled only while its spacing is within 2x of the finest, down to "
           f">= 4 px (bottleneck {'x'.join(map(str, bottom))})")
    if flat:
        why += f"; kernel 1 on axis {','.join(map(str, flat))} while its spacing is > 2x the finest"
    return value, why


# ---- candidates ------------------------------------------------------------------------------
def make_candidates(base: Sequence[int], dims: int, channels: int, num_classes: int, fp: Fingerprint,
                    memory: int, spacing: Sequence[float]) -> list[dict[str, Any]]:
    total_voxels = sum(int(np.prod(c["shape"])) for c in fp.cases)
    seen: set[tuple] = set()
    out = []
    fine = min(spacing) if dims == 3 else 1.0  # 3D: thick axes (spacing > 2x the finest) may go to 16 voxels
    anisotropic = dims == 3 and max(spacing) >= 2 * fine  # per-axis pooling: a thick axis may go to 8
    thick = 8 if anisotropic else 16
    floor = [min(b, thick if dims == 3 and sp > 2 * fine else 32) for b, sp in zip(base, spacing if dims == 3 else
                                                                               [1.0] * dims)]
    size = fp.objects.get("size_median")
    if dims == 2 and size:  # a 2D patch spans 1.5 typical objects (their equivalent diameter), up to 256 px
        side = int(min(256, math.ceil(1.5 * 2 * math.sqrt(size / math.pi))))
        floor = [min(b, max(f, side)) for b, f in zip(base, floor)]
    elif dims == 3 and size:  # in 3D too, in physical space: the equivalent sphere's diameter per axis,
        # up to 128 voxels on an axis (a patch smaller than the object sees only its inside)
        diameter = (6.0 * size * float(np.prod(spacing)) / math.pi) ** (1.0 / 3.0)
        floor = [min(b, max(f, min(128, math.ceil(1.5 * diameter / sp)))) for b, f, sp in zip(base, floor, spacing)]
    for scale in SCALES:
        patch = _shrink(base, scale, spacing if dims == 3 else [1.0] * dims, floor, by_ratio=anisotropic)
        patch, (pools,), strides, kernels = patch_geometry(patch, spacing if dims == 3 else [1.0] * dims, dims)
        vox = int(np.prod(patch))
        if dims == 3:
            batch = 2
        else:
            batch = 8 if vox <= 256 * 256 else 4
            batch = int(max(2, min(batch, 0.05 * total_voxels // vox if fp.num_cases > 1 else batch)))
        for width in WIDTHS:
            features = [min(width * 2**i, WIDTH_CAP[dims]) for i in range(pools + 1)]
            key = (tuple(patch), tuple(features), batch)
            if key in seen:
                continue
            seen.add(key)
            norm = "instance" if dims == 3 or batch < 4 else "batch"
            flops = unet_flops(features, patch, channels, num_classes, batch, strides, kernels)
            params = unet_params(features, dims, channels, num_classes, strides, kernels)
            reductions = _level_reductions(len(features), dims, strides)
            activation_bytes = 4 * batch * vox * sum(f / r for f, r in zip(features, reductions)) * 14
            if activation_bytes > memory:
                continue
            out.append({"patch": patch, "features": features, "batch": batch, "norm": norm, "scale": scale,
                        "num_classes": num_classes, "params": params, "strides": strides, "kernel_sizes": kernels,
                        "flops": 3 * flops, "memory": activation_bytes})
    return out


def _level_reductions(levels: int, dims: int, strides: Sequence[Sequence[int]] | None) -> list[float]:
    """Voxel-count reduction of each level against the input (2^d per level without `strides`)."""
    if strides is None:
        return [float((2**dims) ** i) for i in range(levels)]
    out = [1.0]
    for s in strides[:levels - 1]:
        out.append(out[-1] * float(np.prod(s)))
    return out


def unet_flops(features: Sequence[int], patch: Sequence[int], in_channels: int, num_classes: int,
               batch: int = 1, strides: Sequence[Sequence[int]] | None = None,
               kernel_sizes: Sequence[Sequence[int]] | None = None) -> float:
    """Forward FLOPs (multiply and add) of the plain UNet's convolutions: two 3^d convolutions per
    encoder level, a 2^d up-convolution and two 3^d convolutions per decoder level, a 1x1 head
    (per-axis `strides` / `kernel_sizes`: the anisotropic U-Net's factors and kernels instead).
    Norms and activations are left out; the probe's timings absorb them."""
    dims = len(patch)
    levels = len(features)
    k3 = [float(np.prod(k)) for k in kernel_sizes] if kernel_sizes is not None else [3.0**dims] * levels
    k2 = [float(np.prod(s)) for s in strides] if strides is not None else [2.0**dims] * (levels - 1)
    voxels = [float(np.prod(patch)) / r for r in _level_reductions(levels, dims, strides)]
    total, previous = 0.0, in_channels
    for c, v, k in zip(features, voxels, k3):
        total += 2 * k * v * (previous * c + c * c)
        previous = c
    for i in range(levels - 2, -1, -1):
        c, v = features[i], voxels[i]
        total += 2 * k2[i] * voxels[i + 1] * features[i + 1] * c + 2 * k3[i] * v * (2 * c * c + c * c)
    total += 2 * voxels[0] * features[0] * max(1, num_classes)
    return batch * total


def unet_params(features: Sequence[int], dims: int, in_channels: int, num_classes: int,
                strides: Sequence[Sequence[int]] | None = None,
                kernel_sizes: Sequence[Sequence[int]] | None = None) -> float:
    """Convolution weights of the plain UNet (as `unet_flops` counts them; norms and biases left out)."""
    levels = len(features)
    k3 = [float(np.prod(k)) for k in kernel_sizes] if kernel_sizes is not None else [3.0**dims] * levels
    k2 = [float(np.prod(s)) for s in strides] if strides is not None else [2.0**dims] * (levels - 1)
    total, previous = 0.0, in_channels
    for c, k in zip(features, k3):
        total += k * (previous * c + c * c)
        previous = c
    for i in range(levels - 2, -1, -1):
        c = features[i]
        total += k2[i] * features[i + 1] * c + k3[i] * 3 * c * c
    return total + features[0] * max(1, num_classes)


def _shrink(base: Sequence[int], scale: float, spacing: Sequence[float], floor: Sequence[int],
            by_ratio: bool = False) -> list[int]:
    """Shrink the patch to scale^dims of its voxels, the physically longest axis first, no axis
    below `floor`. `by_ratio` (anisotropic volumes): the axis covering the largest fraction of the
    starting patch (itself shaped by the median shape) first, as nnU-Net v2 shrinks its patch, so
    the patch keeps the data's proportions: many voxels in-plane, few along the thick axis."""
    patch = [float(p) for p in base]
    target = np.prod(base) * scale ** len(base)
    while np.prod(patch) > target * 1.0001:
        if by_ratio:
            extents = [p / b if p > f else -1.0 for p, b, f in zip(patch, base, floor)]
        else:
            extents = [p * s if p > f else -1.0 for p, s, f in zip(patch, spacing, floor)]
        axis = int(np.argmax(extents))
        if extents[axis] < 0:
            break
        patch[axis] = max(float(floor[axis]), patch[axis] * 0.9)
    return [int(round(p)) for p in patch]


def _price(candidates: list[dict[str, Any]], device: str, probe: bool, budget_s: float, dims: int,
           channels: int) -> int | None:
    """compute_s per candidate. The cheapest is timed on the device, and the next with >= 4x its FLOPs
    unless that would take far longer than the probing allowance (4% of the budget, 5-60 s). The others are predicted as
    overhead + FLOPs / rate fitted to the timed ones. Without probing a nominal rate is assumed.
    On the CPU the cheapest is also timed with one PyTorch thread: on a machine shared with other
    jobs that is often several times faster. Returns the thread count to use (None: the default)."""
    flops = np.array([c["flops"] for c in candidates], dtype=np.float64)
    order = [int(i) for i in np.argsort(flops)]
    rate, overhead = (5e12 if device.startswith("cuda") else 5e10), 0.01
    if probe:
        allowance = float(np.clip(0.04 * budget_s, 5.0, 60.0))
        points = []
        threads = None
        if not device.startswith("cuda") and torch.get_num_threads() > 1:
            first = candidates[order[0]]
            default_s = _time(first, device, dims, channels, max_seconds=allowance / 4)
            single_s = _time(first, device, dims, channels, max_seconds=allowance / 4, threads=1)
            threads = 1 if single_s < 0.8 * default_s else None
            first["threads_tried"] = {"default": default_s, "1": single_s}
        for c in [candidates[order[0]]] + [candidates[i] for i in order if flops[i] >= 4 * flops[order[0]]][:1]:
            # the second point tells per-step overhead from per-voxel cost: it is taken unless its
            # warm-up + step, guessed as half overhead and half compute, exceeds 3x the allowance
            if points and 2 * points[0][1] * (0.5 + 0.5 * c["flops"] / points[0][0]) > 3 * allowance:
                break
            c["compute_s"] = c["threads_tried"]["1" if threads else "default"] if "threads_tried" in c else \
                _time(c, device, dims, channels, max_seconds=allowance / 2, threads=threads)
            c["measured"] = True
            points.append((c["flops"], c["compute_s"]))
        if len(points) == 2 and points[1][1] > points[0][1]:
            rate = (points[1][0] - points[0][0]) / (points[1][1] - points[0][1])
            overhead = max(0.0, points[0][1] - points[0][0] / rate)
        else:  # one point: assume half of it is per-step overhead (loss, optimiser, Python)
            overhead = 0.5 * points[0][1]
            rate = points[0][0] / max(points[0][1] - overhead, 1e-6)
    else:
        threads = None
    for c in candidates:
        c["rate"], c["overhead"] = rate, overhead
        if not c.get("measured"):
            c["compute_s"] = overhead + c["flops"] / rate
    return threads


def _time(c: dict[str, Any], device: str, dims: int, channels: int, max_seconds: float = 20.0,
          threads: int | None = None) -> float:
    from unetkit.planning.probe import time_augmentation, time_step

    seconds = time_step(dims, channels, c["num_classes"], c["features"], c["patch"], c["batch"], device=device,
                        norm=c["norm"], steps=2, max_seconds=max_seconds, threads=threads,
                        strides=c.get("strides"), kernel_sizes=c.get("kernel_sizes"))
    c["probe_s"] = seconds
    c["augment_s"] = time_augmentation("default", dims, channels, c["patch"], repeats=2)
    return seconds


def _augment_per_voxel(candidates: list[dict[str, Any]]) -> float:
    """Seconds of augmentation per voxel, from the timed candidates (2 us without any)."""
    rates = [c["augment_s"] / float(np.prod(c["patch"])) for c in candidates if c.get("augment_s") is not None]
    return float(np.median(rates)) if rates else 2e-6


def _schedule(c: dict[str, Any], train_s: float, val_voxels: float, fp: Fingerprint, workers: int,
              device: str, augment_per_voxel: float) -> None:
    """Step time with data loading, validation cost, and the epochs/steps that fit in `train_s`."""
    vox = float(np.prod(c["patch"]))
    augment = c.get("augment_s", augment_per_voxel * vox)
    data_s = c["batch"] * augment
    if device.startswith("cuda"):
        c["step_s"] = max(c["compute_s"], data_s / max(1, workers))
    else:  # the loader's workers share the CPU cores with the model
        c["step_s"] = c["compute_s"] + data_s / (workers + 1)
    save_s = 32 * c["params"] / 100e6  # per epoch: model files and checkpoints with Adam's moments, ~100 MB/s
    forward_per_voxel = c["flops"] / 3 / (c["batch"] * vox) / c["rate"]  # (sliding windows overlap: x2)
    c["val_s"] = 2.0 * val_voxels * forward_per_voxel + c["overhead"] * max(1, round(0.2 * fp.num_cases))
    steps = train_s / c["step_s"]
    epochs = int(np.clip(steps // 100, min(4, max(1, int(steps))), 20))
    validations = int(np.clip(0.15 * train_s // max(c["val_s"], 1e-6), 1, epochs))
    val_every = int(math.ceil(epochs / validations))
    spent_on_val = math.ceil(epochs / val_every) * c["val_s"] + epochs * save_s
    steps = max(0.0, (train_s - spent_on_val) / c["step_s"])
    c["epochs"], c["val_every"], c["steps_possible"] = epochs, val_every, steps
    c["steps_per_epoch"] = max(1, int(steps // epochs))
    c["steps"] = c["steps_per_epoch"] * epochs


def utility(c: dict[str, Any]) -> float:
    """Context (patch voxels x batch) counts half, capacity (base width) and steps (up to STEP_CAP) fully."""
    return (0.5 * math.log2(float(np.prod(c["patch"])) * c["batch"]) + math.log2(c["features"][0])
            + math.log2(max(1, min(c["steps"], STEP_CAP))))


def choose(candidates: list[dict[str, Any]]) -> dict[str, Any]:
    """The highest utility among candidates with >= MIN_STEPS steps; on a slow device or a short
    budget, among those within 4x of the most steps any candidate gets."""
    enough = [c for c in candidates if c["steps"] >= MIN_STEPS]
    if not enough:
        most = max(c["steps_possible"] for c in candidates)
        if most < 1:  # nothing fits: the cheapest, so that at least something trains
            return min(candidates, key=lambda c: c["step_s"] + c["val_s"])
        enough = [c for c in candidates if c["steps_possible"] >= most / 4]
    return max(enough, key=utility)


def _validation_voxels(fp: Fingerprint, fraction: float, target: Sequence[float] | None = None) -> float:
    total = float(np.prod(case_shapes(fp, target), axis=1).sum())
    return fraction * total


def _workers(device: str) -> int:
    from unetkit.data.loader import auto_workers

    return auto_workers()


def _default_memory(device: str) -> int:
    if device.startswith("cuda"):
        return int(0.8 * torch.cuda.get_device_properties(torch.device(device)).total_memory)
    return 8 * 2**30


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.3g}" for v in values) + ")"


def _minutes(minutes: float) -> str:
    return f"{minutes:g} min" if minutes >= 1 else f"{minutes * 60:.0f} s"
