"""Read and write images, masks and volumes, channel-first, with errors that name the file.

Array layouts (see docs/CONVENTIONS.md):
- 2D images: `(C, H, W)`, dtype as stored (uint8, uint16, float32, ...).
- masks: `(H, W)` / `(D, H, W)` integer labels, values as stored (0/255 stays 0/255 here).
- volumes: `(C, D, H, W)` plus a `VolumeMeta` (spacing in `(D, H, W)` order and the 4x4 affine).

Formats, chosen by the file suffix:
- PNG, JPEG, BMP through Pillow; every file is fully decoded so truncation is detected.
  RGBA/LA drop their alpha channel unless `keep_alpha=True`; palette ("P") images become RGB, while
  palette masks keep their indices (the usual encoding of class-index masks).
- TIFF through tifffile. In `read_image` every axis other than Y and X (pages, channels, RGB samples)
  becomes the channel axis, so a multi-page TIFF reads as a multi-channel image. In `read_volume` the
  Z axis (or, without one, the page axis) is depth and channel/sample axes are channels; the
  z spacing comes from ImageJ metadata when present, the in-plane spacing from the resolution tags
  when an ImageJ unit is set, else 1.
- NIfTI (.nii, .nii.gz) through nibabel. NIfTI stores voxels as (x, y, z[, c]); we transpose to
  (c, z, y, x) so that the last axis is the fastest-varying image column, and reverse the voxel
  sizes to `spacing = (sz, sy, sx)`. The affine is kept unchanged (it maps (x, y, z) indices to world
  coordinates); `write_*` transposes back and writes the same affine, so a round trip is exact.
"""
from __future__ import annotations

import gzip
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unetkit.errors import DataError
from unetkit.io.atomic import atomic_path

PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
TIFF_SUFFIXES = (".tif", ".tiff")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
IMAGE_SUFFIXES: tuple[str, ...] = PIL_SUFFIXES + TIFF_SUFFIXES + NIFTI_SUFFIXES
_PIL_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP"}


@dataclass
class VolumeMeta:
    """Geometry of a volume: voxel `spacing` in (D, H, W) order and the file's 4x4 `affine`.

    For NIfTI the affine maps (x, y, z) = (W, H, D) voxel indices to world coordinates; for TIFF it
    is the diagonal matrix of the spacing in that same (x, y, z) order.
    """

    spacing: tuple[float, ...] = (1.0, 1.0, 1.0)
    affine: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.spacing = tuple(float(s) for s in self.spacing)
        if self.affine is None:
            self.affine = affine_from_spacing(self.spacing)
        self.affine = np.asarray(self.affine, dtype=np.float64)


def affine_from_spacing(spacing: tuple[float, ...]) -> np.ndarray:
    """The diagonal (x, y, z) affine of a (D, H, W)-ordered spacing."""
    sz, sy, sx = ((1.0, 1.0, 1.0) + tuple(float(s) for s in spacing))[-3:]
    return np.diag([sx, sy, sz, 1.0])


# ---------------------------------------------------------------- names


def suffix_of(path: str | os.PathLike) -> str:
    """Lower-case suffix, treating `.nii.gz` as one suffix."""
    name = Path(path).name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return Path(name).suffix


def stem_of(path: str | os.PathLike) -> str:
    """File name without its image suffix: `case_01.nii.gz` -> `case_01`, `a.ome.tif` -> `a`."""
    name = Path(path).name
    suffix = suffix_of(name)
    stem = name[: len(name) - len(suffix)] if suffix else name
    if stem.lower().endswith(".ome"):
        stem = stem[:-4]
    return stem


def is_image_file(path: str | os.PathLike) -> bool:
    """True for a visible file whose suffix is one of `IMAGE_SUFFIXES`."""
    p = Path(path)
    return not p.name.startswith(".") and suffix_of(p) in IMAGE_SUFFIXES


# ---------------------------------------------------------------- reading


def read_image(path: str | os.PathLike, keep_alpha: bool = False) -> np.ndarray:
    """Read a 2D image as `(C, H, W)` with its stored dtype; raise DataError naming the file."""
    path = Path(path)
    suffix = suffix_of(path)
    if suffix in PIL_SUFFIXES:
        return _read_pil(path, keep_alpha=keep_alpha, as_mask=False)
    if suffix in TIFF_SUFFIXES:
        array, axes, rgb = _read_tiff(path)
        return _tiff_to_channels(path, array, axes, drop_alpha=rgb and not keep_alpha)
    if suffix in NIFTI_SUFFIXES:
        volume, _ = read_volume(path)
        if volume.shape[1] != 1:
            raise DataError(f"{path}: is a volume of depth {volume.shape[1]}, not a 2D image")
        return volume[:, 0]
    raise DataError(f"{path}: unsupported image format '{suffix}' (supported: {', '.join(IMAGE_SUFFIXES)})")


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a label image as `(H, W)` (or `(D, H, W)` for NIfTI/TIFF stacks) integers, values as stored.

    RGB masks are accepted when the three channels are equal (a grey mask saved as RGB).
    """
    path = Path(path)
    suffix = suffix_of(path)
    if suffix in PIL_SUFFIXES:
        labels, rgb = _read_pil(path, keep_alpha=False, as_mask=True), True
    elif suffix in TIFF_SUFFIXES:
        array, axes, rgb = _read_tiff(path)
        labels = _tiff_to_channels(path, array, axes, drop_alpha=rgb)
    elif suffix in NIFTI_SUFFIXES:
        volume, _ = read_volume(path)
        if volume.shape[0] != 1:
            raise DataError(f"{path}: a mask must have one channel, found {volume.shape[0]}")
        labels, rgb = volume[0], False
    else:
        raise DataError(f"{path}: unsupported mask format '{suffix}'")
    if labels.shape[0] == 1:
        labels = labels[0]
    elif rgb and labels.shape[0] == 3 and np.array_equal(labels[0], labels[1]) \
            and np.array_equal(labels[0], labels[2]):
        labels = labels[0]
    elif rgb:
        raise DataError(f"{path}: colour mask; expected one channel of integer labels")
    # a grey multi-page TIFF or a NIfTI volume stays a (D, H, W) label stack
    if labels.dtype.kind == "f":
        if not np.all(np.isfinite(labels)) or not np.array_equal(labels, np.round(labels)):
            raise DataError(f"{path}: mask holds non-integer values")
        labels = labels.astype(np.int64)
    elif labels.dtype == bool:
        labels = labels.astype(np.uint8)
    elif labels.dtype.kind not in "ui":
        raise DataError(f"{path}: mask has unsupported dtype {labels.dtype}")
    return labels


def read_volume(path: str | os.PathLike) -> tuple[np.ndarray, VolumeMeta]:
    """Read a 3D volume as `(C, D, H, W)` and its `VolumeMeta`; NIfTI or TIFF stack."""
    path = Path(path)
    suffix = suffix_of(path)
    if suffix in NIFTI_SUFFIXES:
        return _read_nifti(path)
    if suffix in TIFF_SUFFIXES:
        return _read_tiff_volume(path)
    raise DataError(f"{path}: unsupported volume format '{suffix}' (use .nii, .nii.gz, .tif)")


def _read_pil(path: Path, keep_alpha: bool, as_mask: bool) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()  # full decode: truncated files fail here
            mode = img.mode
            if mode == "P" and not as_mask:
                img = img.convert("RGBA" if keep_alpha and "transparency" in img.info else "RGB")
                mode = img.mode
            array = np.array(img)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError, DecompressionBombError
        raise DataError(f"{path}: unreadable or truncated image ({err})") from None
    if mode == "I" and array.size and array.min() >= 0 and array.max() < 65536:
        array = array.astype(np.uint16)  # 16-bit PNGs may decode as 32-bit "I"
    if mode == "1":
        array = array.astype(np.uint8)
    if array.ndim == 2:
        return array[None]
    if mode in ("RGBA", "LA") and not keep_alpha:
        array = array[..., :-1]
    return np.ascontiguousarray(np.moveaxis(array, -1, 0))


def _read_tiff(path: Path) -> tuple[np.ndarray, str, bool]:
    """The whole TIFF as an array, its axes string and whether it is RGB(A); same-shaped series stack."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series
            if not series:
                raise ValueError("no image data")
            first = series[0]
            rgb = first.keyframe.photometric == tifffile.PHOTOMETRIC.RGB
            if len(series) > 1 and all(s.shape == first.shape and s.dtype == first.dtype for s in series):
                return np.stack([s.asarray() for s in series]), "I" + first.axes, rgb
            return first.asarray(), first.axes, rgb
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except Exception as err:  # tifffile raises TiffFileError, ValueError, OSError, struct.error
        raise DataError(f"{path}: unreadable or truncated TIFF ({err})") from None


def _tiff_to_channels(path: Path, array: np.ndarray, axes: str, drop_alpha: bool) -> np.ndarray:
    """Move Y, X last and merge every other axis into one channel axis -> (C, H, W)."""
    if "Y" not in axes or "X" not in axes:
        raise DataError(f"{path}: TIFF axes '{axes}' have no Y and X")
    if drop_alpha and "S" in axes and array.shape[axes.index("S")] == 4:
        array = np.take(array, [0, 1, 2], axis=axes.index("S"))  # RGBA -> RGB
    others = [i for i, a in enumerate(axes) if a not in "YX"]
    array = np.transpose(array, others + [axes.index("Y"), axes.index("X")])
    return np.ascontiguousarray(array.reshape(-1, *array.shape[-2:]))


def _read_tiff_volume(path: Path) -> tuple[np.ndarray, VolumeMeta]:
    import tifffile

    array, axes, _ = _read_tiff(path)
    if "Y" not in axes or "X" not in axes:
        raise DataError(f"{path}: TIFF axes '{axes}' have no Y and X")
    depth_axes = [a for a in axes if a == "Z"] or [a for a in axes if a not in "YXSC"][:1]
    channel_axes = [a for a in axes if a not in "YX" and a not in depth_axes]
    order = [axes.index(a) for a in channel_axes + depth_axes + ["Y", "X"]]
    array = np.transpose(array, order)
    h, w = array.shape[-2:]
    depth = array.shape[len(channel_axes)] if depth_axes else 1
    volume = np.ascontiguousarray(array.reshape(-1, depth, h, w))
    spacing = [1.0, 1.0, 1.0]
    read = False  # whether the file states a spacing (the Predictor resamples only then)
    try:
        with tifffile.TiffFile(path) as tif:
            meta = tif.imagej_metadata or {}
            if "spacing" in meta:
                spacing[0] = float(meta["spacing"])
                read = True
            if meta.get("unit"):
                tags = tif.pages[0].tags
                for index, tag in ((1, "YResolution"), (2, "XResolution")):
                    if tag in tags:
                        num, den = tags[tag].value
                        if num:
                            spacing[index] = den / num
                            read = True
    except Exception:  # metadata is optional; the pixels were read above
        pass
    return volume, VolumeMeta(spacing=tuple(spacing), extra={"spacing_read": read})


def _read_nifti(path: Path) -> tuple[np.ndarray, VolumeMeta]:
    import nibabel as nib

    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)  # stored dtype unless the file has a scale slope
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except Exception as err:  # nibabel raises ImageFileError, EOFError, OSError, zlib errors
        raise DataError(f"{path}: unreadable or truncated NIfTI ({err})") from None
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim == 3:
        data = data[..., None]
    if data.ndim != 4:
        raise DataError(f"{path}: NIfTI with {data.ndim} dimensions is not supported (3 or 4)")
    volume = np.ascontiguousarray(np.transpose(data, (3, 2, 1, 0)))  # (x, y, z, c) -> (c, z, y, x)
    zooms = [float(z) for z in img.header.get_zooms()[:3]]
    zooms += [1.0] * (3 - len(zooms))
    return volume, VolumeMeta(spacing=tuple(reversed(zooms)), affine=np.asarray(img.affine))


# ---------------------------------------------------------------- writing


def write_image(path: str | os.PathLike, array: np.ndarray, meta: VolumeMeta | None = None,
                overwrite: bool = False) -> Path:
    """Write `(C, H, W)` (or `(H, W)`) images and `(C, D, H, W)` volumes; the format follows the suffix.

    PNG: 1, 3 or 4 channels of uint8, or 1 channel of uint16. JPEG/BMP: uint8, 1 or 3 channels.
    TIFF: any dtype; 2D as (C, H, W) pages, 3D as an ImageJ ZCYX hyperstack with `meta.spacing`.
    NIfTI: 2D or 3D with `meta.affine`. Atomic; refuses to overwrite unless `overwrite=True`.
    """
    path = Path(path)
    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if array.ndim == 2:
        array = array[None]
    if array.ndim not in (3, 4):
        raise DataError(f"{path}: expected (C, H, W) or (C, D, H, W), got shape {array.shape}")
    suffix = suffix_of(path)
    if suffix in PIL_SUFFIXES:
        if array.ndim != 3:
            raise DataError(f"{path}: {suffix} holds 2D images only; use .tif or .nii.gz for volumes")
        _write_pil(path, array, suffix, overwrite)
    elif suffix in TIFF_SUFFIXES:
        _write_tiff(path, array, meta, overwrite)
    elif suffix in NIFTI_SUFFIXES:
        _write_nifti(path, array if array.ndim == 4 else array[:, None], meta, overwrite, suffix)
    else:
        raise DataError(f"{path}: unsupported output format '{suffix}' (supported: {', '.join(IMAGE_SUFFIXES)})")
    return path


def write_mask(path: str | os.PathLike, labels: np.ndarray, meta: VolumeMeta | None = None,
               overwrite: bool = False) -> Path:
    """Write integer labels `(H, W)`, `(1, H, W)`, `(D, H, W)` or `(1, D, H, W)` losslessly.

    The dtype is the smallest of uint8/uint16/uint32 that holds the labels (PNG: up to uint16).
    """
    path = Path(path)
    labels = np.asarray(labels)
    if labels.ndim in (3, 4) and labels.shape[0] == 1:
        labels = labels[0]
    if labels.dtype.kind not in "uib":
        raise DataError(f"{path}: mask labels must be integers, got {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise DataError(f"{path}: mask labels must be >= 0")
    top = int(labels.max()) if labels.size else 0
    dtype = np.uint8 if top < 2**8 else np.uint16 if top < 2**16 else np.uint32
    suffix = suffix_of(path)
    if suffix in (".jpg", ".jpeg"):
        raise DataError(f"{path}: JPEG is lossy; write masks as .png, .tif or .nii.gz")
    if dtype == np.uint32 and suffix in PIL_SUFFIXES:
        raise DataError(f"{path}: labels up to {top} do not fit in {suffix}; use .tif")
    return write_image(path, labels.astype(dtype)[None], meta, overwrite)


def _write_pil(path: Path, array: np.ndarray, suffix: str, overwrite: bool) -> None:
    from PIL import Image

    channels = array.shape[0]
    fmt = _PIL_FORMATS[suffix]
    allowed = {"PNG": (1, 3, 4), "JPEG": (1, 3), "BMP": (1, 3)}[fmt]
    if channels not in allowed:
        raise DataError(f"{path}: {fmt} holds {allowed} channels, got {channels}; use .tif")
    if array.dtype == np.uint16 and fmt == "PNG" and channels == 1:
        img = Image.fromarray(array[0])
    elif array.dtype == np.uint8:
        img = Image.fromarray(array[0] if channels == 1 else np.ascontiguousarray(np.moveaxis(array, 0, -1)))
    else:
        raise DataError(f"{path}: {fmt} cannot store {array.dtype} x {channels} channels; "
                        f"convert to uint8 (or uint16 grayscale PNG) or use .tif")
    with atomic_path(path, overwrite=overwrite) as tmp:
        img.save(tmp, format=fmt)


def _write_tiff(path: Path, array: np.ndarray, meta: VolumeMeta | None, overwrite: bool) -> None:
    import tifffile

    with atomic_path(path, overwrite=overwrite) as tmp:
        if array.ndim == 3:
            tifffile.imwrite(tmp, array, photometric="minisblack")  # C pages, read back as channels
            return
        spacing = meta.spacing if meta is not None else (1.0, 1.0, 1.0)
        stack = np.ascontiguousarray(np.transpose(array, (1, 0, 2, 3)))  # (C, D, H, W) -> ZCYX
        if stack.dtype in (np.uint8, np.uint16, np.float32):
            tifffile.imwrite(tmp, stack, imagej=True, resolution=(1.0 / spacing[2], 1.0 / spacing[1]),
                             metadata={"axes": "ZCYX", "spacing": spacing[0], "unit": "um"})
        else:
            tifffile.imwrite(tmp, stack, photometric="minisblack", metadata={"axes": "ZCYX"})


def _write_nifti(path: Path, volume: np.ndarray, meta: VolumeMeta | None, overwrite: bool,
                 suffix: str) -> None:
    import nibabel as nib

    data = np.transpose(volume, (3, 2, 1, 0))  # (c, z, y, x) -> (x, y, z, c)
    if data.shape[-1] == 1:
        data = data[..., 0]
    meta = meta or VolumeMeta()
    img = nib.Nifti1Image(np.ascontiguousarray(data), meta.affine)
    img.header.set_zooms(tuple(reversed(meta.spacing))[: 3] + (1.0,) * (data.ndim - 3))
    payload = img.to_bytes()
    if suffix == ".nii.gz":
        payload = gzip.compress(payload, compresslevel=6)
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_bytes(payload)


def is_volume_file(path: str | os.PathLike, spatial_dims: int | None = None) -> bool:
    """Whether `path` is read as a volume: NIfTI always (unless spatial_dims=2), TIFF when spatial_dims=3."""
    suffix = suffix_of(path)
    if spatial_dims == 3:
        return suffix in NIFTI_SUFFIXES + TIFF_SUFFIXES
    return suffix in NIFTI_SUFFIXES and spatial_dims != 2


def read_input(path: str | os.PathLike, spatial_dims: int | None = None) -> tuple[np.ndarray, VolumeMeta | None]:
    """An image as `(C, H, W)` (meta None) or a volume as `(C, D, H, W)` with its meta."""
    if is_volume_file(path, spatial_dims):
        return read_volume(path)
    return read_image(path), None


def read_labels(path: str | os.PathLike, spatial_dims: int | None = None) -> np.ndarray:
    """Mask labels as `(H, W)` or, for volumes, `(D, H, W)` (a one-slice volume keeps D=1)."""
    labels = read_mask(path)
    if is_volume_file(path, spatial_dims) and labels.ndim == 2:
        labels = labels[None]
    return labels
