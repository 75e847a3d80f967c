"""From a TrainConfig to a finished run: data checked and split, datasets built, Trainer run.

    from unetkit.training import TrainConfig, train
    cfg = TrainConfig.from_yaml("run.yaml")
    result = train(cfg)                # or train(cfg, resume="runs/my-run")

Data sources (config.data):
- a folder of images + masks (`images`, `masks`, `mask_suffix`): checked with check-data first
  (training refuses data with problems), split by `val_fraction` / `fold` / `split_file`, the split
  recorded in the run's splits.json; 2D images are cropped to `patch_size` by the augmentation,
  3D volumes sampled as patches with foreground oversampling;
- a sample dataset by name (`dataset`): written once as a folder inside the run directory, then as
  above; a single-image dataset (dsb2018-nuclei) is split into a training region (random tiles)
  and a held-out region on the right (`val_fraction` of the width).
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from unetkit.errors import ConfigError
from unetkit.training.config import TrainConfig
from unetkit.training.distributed import DistContext
from unetkit.training.trainer import FitResult, Trainer, default_run_name, prepare_run_dir


def train(config: TrainConfig | None, resume: str | Path | None = None, **trainer_kwargs: Any) -> FitResult:
    """Build the datasets of `config` and train; `resume` continues the run in that folder."""
    if resume is not None:
        resume = Path(resume)
        config = TrainConfig.from_yaml(resume / "config.yaml")
    elif config is None:
        raise ConfigError("train() needs a config, or resume= a run folder")
    dist = DistContext.from_env("cuda" if torch.cuda.is_available() and config.device != "cpu" else "cpu")
    if resume is not None:
        run_dir = resume
    else:
        run_dir = Path(config.out_dir) / dist.broadcast_object(default_run_name(config))
        config.name = run_dir.name
    prepare_run_dir(config, run_dir, resume is not None, dist)
    try:
        train_set, val_set, meta = build_datasets(config, run_dir, resuming=resume is not None)
    except Exception:
        if resume is None and dist.is_main:  # the folder holds nothing but what we just wrote
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    trainer = Trainer(config, train_set, val_set, run_dir=run_dir, resume=resume is not None,
                      extra_meta=meta, infer=window_infer(config), run_dir_ready=True, **trainer_kwargs)
    try:
        return trainer.fit()
    finally:
        trainer.dist.close()


def build_datasets(config: TrainConfig, run_dir: Path, resuming: bool = False) -> tuple[Dataset, Dataset, dict]:
    """(train set, validation set, metadata for the model file) for `config.data`."""
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
        if len(sample) == 1 and dims == 2:
            return single_image_split(config, sample[0])
        folder = run_dir / "data"
        if not folder.exists():
            write_samples(sample, folder)  # the samples just generated, not a second generation
        images, masks = folder, None
    elif data.images is not None:
        images, masks = Path(data.images), Path(data.masks) if data.masks else None
    else:
        raise ConfigError("no training data: set data.images (a folder) or data.dataset (a sample dataset)")
    return folder_datasets(config, images, masks, run_dir, resuming)


def folder_datasets(config: TrainConfig, images: Path, masks: Path | None, run_dir: Path,
                    resuming: bool) -> tuple[Dataset, Dataset, dict]:
    from unetkit.data.augment import build_augmentation
    from unetkit.data.checks import check_dataset
    from unetkit.data.dataset import SegmentationDataset
    from unetkit.data.folder import scan_folder
    from unetkit.data.splits import get_fold, make_kfold, make_split, save_splits
    from unetkit.data.volume import VolumeDataset

    data, dims = config.data, config.model.spatial_dims
    scan = scan_folder(images, masks, data.mask_suffix or None)
    # model.num_classes 1 (the default) lets the masks decide: a class label map with K > 2 values
    # builds a K-class model (data.mask_kind=binary merges all labels into one foreground instead)
    report = check_dataset(images, masks, mask_suffix=data.mask_suffix or None,
                           num_classes=config.model.num_classes if config.model.num_classes > 1 else None,
                           mask_kind=data.mask_kind, spatial_dims=dims, scan=scan)
    report.raise_if_problems()  # training refuses data with problems, with check-data's table
    mask_kind = report.stats["mask_kind"]  # decided once, for the training and the validation set
    if config.model.num_classes <= 1 and mask_kind == "classes" and report.stats["num_classes"] > 2:
        config.model.num_classes = int(report.stats["num_classes"])
        print(f"model.num_classes={config.model.num_classes} from the masks ({report.stats['mask_kind_reason']})",
              file=sys.stderr)
        if not resuming:
            config.to_yaml(run_dir / "config.yaml")
    num_classes = max(2, config.model.num_classes)
    names = [c.name for c in scan.pairs]
    splits_path = run_dir / "splits.json"
    if resuming and splits_path.is_file():
        split = get_fold(splits_path, 0)
    elif data.split_file is not None:
        split = get_fold(data.split_file, data.fold or 0)
    elif data.fold is not None:
        folds = make_kfold(names, data.num_folds, config.seed)
        split = folds[data.fold]
    else:
        split = make_split(names, data.val_fraction, config.seed)
    if not resuming:
        save_splits(splits_path, split, seed=config.seed, overwrite=True, source=str(images), fold=data.fold)

    common = {"normalize": data.normalize, "num_classes": num_classes, "mask_kind": mask_kind}
    weight = _weight_map_fn(config)
    aug_config = _with_crop(data.augmentation, data.patch_size) if dims == 2 else data.augmentation
    transform = build_augmentation(aug_config, spatial_dims=dims, seed=config.seed)
    if dims == 2:
        train_set = SegmentationDataset(scan, names=split["train"], transform=transform, weight_map=weight,
                                        spatial_dims=2, **common)
    else:
        train_set = VolumeDataset(scan, data.patch_size, names=split["train"], transform=transform,
                                  foreground_fraction=data.oversample_foreground, length=data.samples_per_epoch,
                                  seed=config.seed, **common)
    val_set = SegmentationDataset(scan, names=split["val"], spatial_dims=dims, **common)
    meta = {"dataset_stats": {k: report.stats.get(k) for k in ("intensity", "class_frequency", "spacing_median")
                              if k in report.stats}}
    return train_set, val_set, meta


def single_image_split(config: TrainConfig, sample: Any) -> tuple[Dataset, Dataset, dict]:
    """Random tiles from the left part of one image; the right `val_fraction` of its width held out."""
    from unetkit.data.augment import build_augmentation
    from unetkit.data.dataset import to_sample
    from unetkit.data.normalize import normalize_image
    from unetkit.data.tiles import RandomTileDataset

    data = config.data
    image = normalize_image(sample.image, data.normalize)
    mask, instances = sample.mask, sample.instances
    weight = None
    if data.weight_map:
        from unetkit.losses import separate_touching, unet_weight_map

        separated = separate_touching(instances)
        mask = (separated > 0).astype(np.int64)[None]
        weight = unet_weight_map(separated, w0=data.weight_map_w0, sigma=data.weight_map_sigma)[None]
    h, w = image.shape[-2:]
    split_x = int(round(w * (1 - data.val_fraction)))
    tile = tuple(int(p) for p in data.patch_size)
    transform = build_augmentation(data.augmentation, spatial_dims=2, seed=config.seed)
    length = data.samples_per_epoch or 16 * data.batch_size
    train_set = RandomTileDataset(image, mask, tile, length, transform=transform, region=(0, h, 0, split_x),
                                  weight=weight, seed=config.seed)
    val_sample = to_sample(image[:, :, split_x:], sample.mask[:, :, split_x:], name=f"{sample.name}_heldout")
    meta = {"split": {"train_region": [0, h, 0, split_x], "heldout_region": [0, h, split_x, w]}}
    return train_set, _ListDataset([val_sample]), meta


def _with_crop(augmentation: str | dict, patch_size: list) -> dict:
    config = {"preset": augmentation} if isinstance(augmentation, str) else dict(augmentation)
    config.setdefault("crop", {"size": list(patch_size)})
    return config


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


class _ListDataset(Dataset):
    def __init__(self, items: list[dict]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        return self.items[index]
