"""Find image/mask pairs in a folder, matched by file stem.

Layouts recognised by `scan_folder(root)` (first match wins):
- `root/images/` + `root/masks/` (or `labels/`, `ground_truth/`, `gt/`);
- nnU-Net: `root/imagesTr/` + `root/labelsTr/`;
- one folder holding both, the masks named `<stem><mask_suffix>` (auto-detected among
  `_mask`, `_masks`, `_label`, `_labels`, `_seg`, `_gt`, or given);
- `masks_dir=` given explicitly: images in `root`, masks there.
An optional `instances/` folder beside `images/` holds instance ids for semantic masks (as
`write_dataset` writes them); `SegmentationDataset(return_instances=True)` reads them.

Multi-modal cases: images named `<case>_0000`, `<case>_0001`, ... (nnU-Net) or `<case>_<channel>`
for the names in `channels=[...]` are stacked as input channels of one case whose mask is `<case>`.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from unetkit.data.io import is_image_file, stem_of
from unetkit.errors import DataError

MASK_FOLDERS = ("masks", "labels", "ground_truth", "gt", "mask", "label")
MASK_SUFFIXES = ("_mask", "_masks", "_label", "_labels", "_seg", "_gt")
_MODALITY = re.compile(r"^(?P<case>.+)_(?P<index>\d{4})$")


@dataclass
class Case:
    """One training case: its input files (one per channel group, in order) and its mask (or None)."""

    name: str
    images: list[Path]
    mask: Path | None = None
    instances: Path | None = None  # optional instance ids (root/instances/<case>.*) next to a semantic mask


@dataclass
class FolderScan:
    """The result of pairing: matched/unmatched cases, and masks that have no image."""

    images_dir: Path
    masks_dir: Path | None
    cases: list[Case]
    orphan_masks: list[Path] = field(default_factory=list)
    mask_suffix: str = ""
    modalities: list[str] = field(default_factory=list)

    @property
    def pairs(self) -> list[Case]:
        """Cases that have a mask."""
        return [c for c in self.cases if c.mask is not None]


def scan_folder(root: str | os.PathLike, masks_dir: str | os.PathLike | None = None,
                mask_suffix: str | None = None, channels: list[str] | None = None) -> FolderScan:
    """Pair images and masks under `root` (see the module docstring for the layouts)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    images_dir, found_masks = _resolve(root, masks_dir)
    if found_masks is not None:
        images = _image_files(images_dir)
        masks = _image_files(found_masks)
        suffix = mask_suffix or ""
        masks_by_case = {_strip(stem_of(m), suffix): m for m in masks}
    else:
        files = _image_files(images_dir)
        suffix = mask_suffix if mask_suffix is not None else _detect_suffix(files)
        if not suffix:
            raise DataError(f"{root}: no masks found; expected images/ and masks/ folders, "
                            f"or masks named <stem>{{{', '.join(MASK_SUFFIXES)}}} next to the images")
        masks = [f for f in files if stem_of(f).endswith(suffix)]
        images = [f for f in files if not stem_of(f).endswith(suffix)]
        masks_by_case = {_strip(stem_of(m), suffix): m for m in masks}
    groups, modalities = _group_modalities(images, set(masks_by_case), channels)
    instances = _instance_files(images_dir.parent if found_masks is not None else root)
    cases = [Case(name, files, masks_by_case.get(name), instances.get(name)) for name, files in sorted(groups.items())]
    orphans = [m for case, m in sorted(masks_by_case.items()) if case not in groups]
    return FolderScan(images_dir, found_masks, cases, orphans, suffix, modalities)


def _resolve(root: Path, masks_dir: str | os.PathLike | None) -> tuple[Path, Path | None]:
    if masks_dir is not None:
        masks = Path(masks_dir)
        if not masks.is_dir():
            raise DataError(f"{masks}: masks folder not found")
        return root, masks
    if (root / "imagesTr").is_dir() and (root / "labelsTr").is_dir():
        return root / "imagesTr", root / "labelsTr"
    if (root / "images").is_dir():
        for name in MASK_FOLDERS:
            if (root / name).is_dir():
                return root / "images", root / name
        raise DataError(f"{root}: has images/ but no masks folder ({', '.join(MASK_FOLDERS)})")
    return root, None


def _instance_files(root: Path) -> dict[str, Path]:
    folder = root / "instances"
    return {stem_of(p): p for p in _image_files(folder)} if folder.is_dir() else {}


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p))


def _strip(stem: str, suffix: str) -> str:
    return stem[: -len(suffix)] if suffix and stem.endswith(suffix) else stem


def _detect_suffix(files: list[Path]) -> str:
    counts = {s: sum(stem_of(f).endswith(s) for f in files) for s in MASK_SUFFIXES}
    best = max(counts, key=lambda s: counts[s])
    return best if counts[best] else ""


def _group_modalities(images: list[Path], mask_cases: set[str], channels: list[str] | None
                      ) -> tuple[dict[str, list[Path]], list[str]]:
    """Group image files by case: `<case>_0000`-style or named channels; else one file per case."""
    stems = {stem_of(p): p for p in images}
    if channels:
        groups: dict[str, list[Path]] = {}
        for stem, path in stems.items():
            for index, channel in enumerate(channels):
                if stem.endswith(f"_{channel}"):
                    groups.setdefault(stem[: -len(channel) - 1], [None] * len(channels))[index] = path
        return {c: [p for p in files if p is not None] for c, files in groups.items()}, list(channels)
    matches = {stem: _MODALITY.match(stem) for stem in stems}
    if stems and all(matches.values()) and not (set(stems) & mask_cases):
        groups = {}
        indices = sorted({m.group("index") for m in matches.values()})
        for stem in sorted(stems):
            groups.setdefault(matches[stem].group("case"), []).append(stems[stem])
        return groups, indices
    return {stem: [path] for stem, path in stems.items()}, []
