"""Data: reading files, normalisation, folder/volume datasets, checks, splits, augmentation, loaders.

Submodules (import the one you need):
    io          read_image, read_mask, read_volume, write_image, write_mask, VolumeMeta
    normalize   normalize_image, default_spec
    folder      find_pairs (images <-> masks by stem, multi-modal cases)
    dataset     SegmentationDataset (2D folders)
    volume      VolumeDataset (3D patches, foreground oversampling, resampling)
    tiles       RandomTileDataset (random crops of one large image)
    checks      check_dataset -> CheckReport
    masks       decide_mask_kind (binary / classes / instances, with the reason), to_semantic
    splits      make_split, make_kfold, save_splits, load_splits
    augment     build_augmentation (presets none/light/default/heavy, 2D and 3D)
    sampling    class_weights, rare_class_sampler
    loader      make_loader
"""
from unetkit.data.io import (IMAGE_SUFFIXES, VolumeMeta, is_image_file, read_image, read_mask,
                             read_volume, stem_of, write_image, write_mask)
from unetkit.data.normalize import default_spec, normalize_image

__all__ = ["IMAGE_SUFFIXES", "VolumeMeta", "is_image_file", "read_image", "read_mask", "read_volume",
           "stem_of", "write_image", "write_mask", "default_spec", "normalize_image"]
