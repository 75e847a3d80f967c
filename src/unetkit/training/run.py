"""From a TrainConfig to a finished run: data checked and split, datasets built, Trainer run.

    from unetkit.training import TrainConfig, train
    cfg = TrainConfig.from_yaml("run.yaml")
    result = train(cfg)                # or train(cfg, resume="runs/my-run")

Data sources (config.data):
- a folder of images + masks (`images`, `masks`, `mask_suffix`): checked with check-data first
  (training refuses data with problems), split by `val_fraction` / `fold` / `split_file`, the split
  recorded in the run's splits.json; 2D images and 3D volumes are sampled as patches with foreground
  oversampling (`samples_per_epoch` patches an epoch);
- a folder holding ONE image or volume, or a single-image sample dataset (dsb2018-nuclei): split
  by region, a slab of `val_fraction` holding foreground held out (`unetkit.data.splits.region_split`);
- a sample dataset by name (`dataset`): written once as a folder inside the run directory, then as
  above.
An empty validation set is an error unless `no_val` (train on everything, keep the last model).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from unetkit.errors import ConfigError
from unetkit.training.config import TrainConfig
from unetkit.training.distributed import DistContext
from unetkit.training.runfolder import RunFolder, sigterm_as_interrupt
from unetkit.training.trainer import FitResult, Trainer, build_loss, default_run_name, validation_metric_names


def train(config: TrainConfig | None, resume: str | Path | None = None, **trainer_kwargs: Any) -> FitResult:
    """Build the datasets of `config` and train; `resume` continues the run in that folder.

    `config.max_minutes` bounds the whole call (data checks, training and validation): the Trainer
    ends the run cleanly, keeping its best model, when the time is spent.
    """
    started = time.monotonic()
    if resume is not None:
        resume = Path(resume)
        config = TrainConfig.from_yaml(resume / "config.yaml")
    elif config is None:
        raise ConfigError("train() needs a config, or resume= a run folder")
    else:
        absolute_data_paths(config)  # config.yaml must not depend on the working directory
    # everything that can be checked without data, before any file is touched
    config.validate()
    check_monitor(config)
    model_min_size = check_model_config(config)
    build_loss(config)
    dist = DistContext.from_env("cuda" if torch.cuda.is_available() and config.device != "cpu" else "cpu")
    if resume is not None:
        run_dir = resume
    else:
        run_dir = Path(config.out_dir) / dist.broadcast_object(default_run_name(config))
        config.name = run_dir.name
    folder = RunFolder(run_dir, config, dist)  # open() refuses a folder it may not use before any change
    try:
        with sigterm_as_interrupt():
            folder.open(resume is not None)  # a replaced run is moved aside
            train_set, val_set, meta = build_datasets(config, run_dir, resuming=resume is not None,
                                                      min_size=model_min_size)
            if config.max_minutes is not None and trainer_kwargs.get("deadline") is None:
                trainer_kwargs["deadline"] = started + 60 * config.max_minutes
            trainer = Trainer(config, train_set, val_set, run_dir=run_dir, resume=resume is not None,
                              extra_meta=meta, infer=window_infer(config), run_dir_ready=True,
                              run_folder=folder, **trainer_kwargs)
    except BaseException:
        folder.abandon()  # nothing half-made kept; a replaced run is put back
        raise
    try:
        return trainer.fit()
    finally:
        trainer.dist.close()


def absolute_data_paths(config: TrainConfig) -> TrainConfig:
    """Data paths made absolute, so that `--resume` works from any working directory."""
    data = config.data
    for name in ("images", "masks", "split_file"):
        value = getattr(data, name)
        if value:
            setattr(data, name, str(Path(value).expanduser().resolve()))
    return config


def check_model_config(config: TrainConfig) -> tuple[int, ...]:
    """Build the configured model on the meta device (no memory, no random numbers drawn): an unknown
    name or option is a ConfigError now, not after the data is read. Returns its smallest input, per axis."""
    from unetkit.models import create_model
    from unetkit.models.registry import min_input_sizes

    m = config.model
    try:
        with torch.device("meta"):
            model = create_model(m.name, spatial_dims=m.spatial_dims, in_channels=m.in_channels,
                                 num_classes=m.num_classes, **m.kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(f"model '{m.name}' cannot be built with model.kwargs {m.kwargs}: {err}") from None
    return min_input_sizes(model)


def check_monitor(config: TrainConfig) -> None:
    """The monitored metric must be one that validation will report (checked before any epoch)."""
    if config.no_val:
        return
    available = validation_metric_names(config.model.num_classes)
    if config.monitor not in available:
        raise ConfigError(f"monitor '{config.monitor}' is not a validation metric; available: "
                          f"{', '.join(sorted(available))}")


def build_datasets(config: TrainConfig, run_dir: Path, resuming: bool = False,
                   min_size: int | Sequence[int] | None = None) -> tuple[Dataset, Dataset | None, dict]:
    """(train set, validation set or None with `no_val`, metadata for the model file) for `config.data`.

    A source with a single image or volume is split by region (`region_split`); an empty validation
    set is a ConfigError unless `config.no_val`.
    """
    data = config.data
    if data.dataset is not None:
        from unetkit.datasets import DATASETS, load_dataset, write_samples

        dims = config.model.spatial_dims
        supported = DATASETS.entry(data.dataset).info.get("dims", (2,))
        if dims not in supported:
            raise ConfigError(f"sample dataset '{data.dataset}' has no {dims}D version")
        options = dict(data.dataset_options)
        if len(supported) > 1:
            options.setdefault("dims", dims)
        sample = load_dataset(data.dataset, **options)
        if len(sample) == 1 and not config.no_val and data.val_fraction > 0:  # one image in memory: split by region, as a folder of one
            only = sample[0]
            return region_datasets(config, list(sample.samples), only.name, only.mask.shape[-dims:], meta={})
        folder = run_dir / "data"
        if not folder.exists():
            write_samples(sample, folder)  # the samples just generated, not a second generation
        images, masks = folder, None
    elif data.images is not None:
        images, masks = Path(data.images), Path(data.masks) if data.masks else None
    else:
        raise ConfigError("no training data: set data.images (a folder) or data.dataset (a sample dataset)")
    return folder_datasets(config, images, masks, run_dir, resuming, min_size)


def folder_datasets(config: TrainConfig, images: Path, masks: Path | None, run_dir: Path,
                    resuming: bool, min_size: int | Sequence[int] | None = None
                    ) -> tuple[Dataset, Dataset | None, dict]:
    from unetkit.data.checks import check_dataset
    from unetkit.data.dataset import SegmentationDataset
    from unetkit.data.folder import scan_folder
    from unetkit.data.splits import get_fold, make_kfold, make_split, save_splits

    data, dims = config.data, config.model.spatial_dims
    scan = scan_folder(images, masks, data.mask_suffix or None)
    # model.num_classes 1 (the default) lets the masks decide: a class label map with K > 2 values
    # builds a K-class model (data.mask_kind=binary merges all labels into one foreground instead)
    report = check_dataset(images, masks, mask_suffix=data.mask_suffix or None,
                           num_classes=config.model.num_classes if config.model.num_classes > 1 else None,
                           mask_kind=data.mask_kind, spatial_dims=dims, scan=scan, strict=data.strict,
                           in_channels=config.model.in_channels, min_size=min_size)
    report.raise_if_problems()  # training refuses data with problems, with check-data's table
    if report.warnings:
        print(report.format_warnings(), file=sys.stderr, flush=True)
    mask_kind = report.stats["mask_kind"]  # decided once, for the training and the validation set
    if config.model.num_classes <= 1 and mask_kind == "classes" and report.stats["num_classes"] > 2:
        config.model.num_classes = int(report.stats["num_classes"])
        print(f"model.num_classes={config.model.num_classes} from the masks ({report.stats['mask_kind_reason']})",
              file=sys.stderr)
        if not resuming:
            config.to_yaml(run_dir / "config.yaml")
    num_classes = max(2, config.model.num_classes)
    names = [c.name for c in scan.pairs]
    meta = {"dataset_stats": {k: report.stats.get(k) for k in ("intensity", "class_frequency", "spacing_median")
                              if k in report.stats}}
    splits_path = run_dir / "splits.json"
    if resuming and splits_path.is_file():
        split = get_fold(splits_path, 0)
    elif data.split_file is not None:
        split = get_fold(data.split_file, data.fold or 0)
    elif data.fold is not None:
        split = make_kfold(names, data.num_folds, config.seed)[data.fold]
    elif len(names) == 1 and not config.no_val and data.val_fraction > 0:
        from unetkit.data.io import read_labels

        labels = read_labels(scan.pairs[0].mask, dims)  # the held-out slab should hold foreground
        return region_datasets(config, scan, names[0], report.stats["size_min"], meta, splits_path, images,
                               mask=labels > 0, mask_kind=mask_kind)
    else:
        split = make_split(names, 0.0 if config.no_val else data.val_fraction, config.seed)
    if "regions" in split:  # a region split recorded in splits.json (resume, or a given split file)
        return region_datasets(config, scan, split["train"][0], None, meta, None, images, split["regions"],
                               mask_kind=mask_kind)
    _check_validation(config, split, len(names))
    if not resuming:
        save_splits(splits_path, split, seed=config.seed, overwrite=True, source=str(images), fold=data.fold)

    common = {"normalize": data.normalize, "num_classes": num_classes, "mask_kind": mask_kind,
              "target_spacing": data.target_spacing}  # 3D: both sets resampled (validation Dice in target space)
    transform = _augmentation(config)
    weight = _weight_map_fn(config)
    # patches with foreground oversampling, 2D and 3D: an epoch is samples_per_epoch patches
    train_set = _patches(config, scan, split["train"], transform, weight, **common)
    val_set = SegmentationDataset(scan, names=split["val"], spatial_dims=dims, **common) if split["val"] else None
    return train_set, val_set, meta


def region_datasets(config: TrainConfig, source: Any, name: str, shape: Any, meta: dict,
                    splits_path: Path | None = None, images: Path | None = None,
                    regions: dict | None = None, mask: Any = None, mask_kind: str | None = None
                    ) -> tuple[Dataset, Dataset, dict]:
    """One image or volume (a folder of one case, or a single-image sample dataset) split by region:
    random patches from the training region, the held-out slab (`val_fraction` of one axis, holding
    its share of the foreground when `mask` is given; see `unetkit.data.splits.region_split`)
    validated whole. With `data.target_spacing` the boxes are in the resampled volume's coordinates
    (its shape and mask are read through the same `PatchDataset` resampling)."""
    from unetkit.data.patches import PatchDataset, WholeCases
    from unetkit.data.splits import region_split, save_splits

    data = config.data
    common = {"normalize": data.normalize, "num_classes": max(2, config.model.num_classes),
              "mask_kind": mask_kind or data.mask_kind, "target_spacing": data.target_spacing}
    if regions is None:
        if data.target_spacing is not None:  # split the volume the patches will be drawn from
            resampled = PatchDataset(source, data.patch_size, names=[name], length=1, **common).volume(0)
            shape, mask = resampled["mask"].shape[1:], resampled["mask"][0] > 0
        split = region_split(shape, data.val_fraction, mask)
        regions = {"train": {name: split["train"]}, "val": {name: split["val"]}}
        if splits_path is not None:
            save_splits(splits_path, {"train": [name], "val": [name], "regions": regions}, seed=config.seed,
                        overwrite=True, source=str(images), kind_detail="region")
    train_set = _patches(config, source, [name], _augmentation(config), _weight_map_fn(config),
                         regions=regions["train"], **common)
    val_set = WholeCases(PatchDataset(source, data.patch_size, names=[name], regions=regions["val"], length=1,
                                      **common))
    train_box, val_box = regions["train"][name], regions["val"][name]
    meta = {**meta, "split": {"train_region": train_box, "heldout_region": val_box}}
    return train_set, val_set, meta


def _patches(config: TrainConfig, source: Any, names: list[str], transform: Any, weight: Any, **options: Any):
    from unetkit.data.patches import PatchDataset

    data = config.data
    length = data.samples_per_epoch
    if length is None:  # one patch per case (3D: four), at least one batch
        length = max(data.batch_size, len(names) * (4 if config.model.spatial_dims == 3 else 1))
    return PatchDataset(source, data.patch_size, names=names, transform=transform, weight_map=weight,
                        foreground_fraction=data.oversample_foreground, length=length, seed=config.seed, **options)


def _check_validation(config: TrainConfig, split: dict, cases: int) -> None:
    if split["val"] or config.no_val:
        return
    raise ConfigError(
        f"the validation set is empty ({cases} case(s), data.val_fraction={config.data.val_fraction}): nothing "
        "would measure the model or choose the best one. Raise data.val_fraction, give a split file, or pass "
        "--no-val (no_val: true) to train on every case without validation (the last model is kept; the "
        "schedule and early stopping then do not use validation)")


def _augmentation(config: TrainConfig):
    from unetkit.data.augment import build_augmentation

    return build_augmentation(config.data.augmentation, spatial_dims=config.model.spatial_dims, seed=config.seed)


def _weight_map_fn(config: TrainConfig):
    if not config.data.weight_map:
        return None
    from unetkit.losses import unet_weight_map

    w0, sigma = config.data.weight_map_w0, config.data.weight_map_sigma

    def weight_map(semantic: np.ndarray, instances: np.ndarray | None) -> np.ndarray:
        return unet_weight_map(instances if instances is not None and instances.any() else semantic,
                               w0=w0, sigma=sigma)

    return weight_map


def window_infer(config: TrainConfig):
    """Validation inference: whole images when small, sliding windows of patch_size otherwise;
    valid-padding models always use overlap-tile windows (mirrored borders), so predictions
    cover the whole image."""
    from unetkit.inference.sliding_window import sliding_window_inference

    patch = [int(p) for p in config.data.patch_size]

    def infer(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
        if getattr(model, "padding", "same") == "valid":
            roi = [model.valid_input_sizes(p, 1)[0] for p in patch]
            return sliding_window_inference(images, model, roi, overlap=0.25, output_size_fn=model.output_size,
                                            device=images.device, output_device=images.device)
        if images[0, 0].numel() <= 4 * int(np.prod(patch)):
            out = model(images)
            return out[0] if isinstance(out, (list, tuple)) else out
        return sliding_window_inference(images, model, patch, overlap=0.25, device=images.device,
                                        output_device=images.device)

    return infer


def auto_train(data: str | Path, *, budget: str | float | None = None, overrides: list[str] | tuple = (),
               echo: Any = print, started: float | None = None, **plan_options: Any) -> FitResult:
    """Plan for the dataset folder `data` (`unetkit.planning.plan`), show the plan, apply `overrides`
    (`section.field=value`, as `--set`), and train. The budget (default 10 minutes) bounds the whole
    call, planning included; the run ends cleanly with its best model when it is spent."""
    from unetkit.planning import parse_budget, plan

    started = time.monotonic() if started is None else started
    result = plan(data, budget=budget, started=started, **plan_options)
    echo(result.table())
    config = result.configure(list(overrides))
    deadline = started + 60 * (config.max_minutes if config.max_minutes is not None else result.budget_minutes)
    if parse_budget(budget) is None and config.max_minutes is None:
        deadline = None
    return train(config, deadline=deadline)
