"""Uploads in, masks out: every file a request brings or gets lives in a temporary folder.

The client's file name is used for its suffix (the format) and, cleaned, in messages and download
names; it never becomes a path. Sizes are checked from the headers before pixels are decoded, so a
small file that would decompress into a huge image is refused early.
"""
from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import numpy as np

from unetkit.data.io import (IMAGE_SUFFIXES, NIFTI_SUFFIXES, PIL_SUFFIXES, TIFF_SUFFIXES, VolumeMeta,
                             suffix_of, write_image, write_mask)

MEDIA_TYPES = {".png": "image/png", ".tif": "image/tiff", ".tiff": "image/tiff", ".nii": "application/x-nifti",
               ".nii.gz": "application/gzip", ".json": "application/json"}
# response formats a client may ask for with ?format= (or Accept)
FORMATS = {"json": ".json", "png": ".png", "tif": ".tif", "tiff": ".tif", "nii": ".nii", "nii.gz": ".nii.gz"}
ACCEPT = {"application/json": "json", "image/png": "png", "image/tiff": "tif", "application/x-nifti": "nii",
          "application/gzip": "nii.gz", "application/x-gzip": "nii.gz"}


class RequestProblem(Exception):
    """A request the server refuses: an HTTP status and a message naming the file and the problem."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def clean_name(name: str | None) -> str:
    """A display-only version of a client's file name (no folders, no odd characters)."""
    base = re.split(r"[\\/]", name or "")[-1]
    base = re.sub(r"[^A-Za-z0-9._ ()+-]", "_", base).strip(" .")
    return base[:120] or "upload"


def upload_suffix(name: str) -> str:
    suffix = suffix_of(name)
    if suffix not in IMAGE_SUFFIXES:
        shown = suffix or "(none)"
        raise RequestProblem(415, f"{name}: unsupported file type '{shown}'; send PNG, JPEG, BMP, TIFF "
                                  f"(8/16-bit, multi-page) or NIfTI (.nii, .nii.gz)")
    return ".tif" if suffix == ".tiff" else ".jpg" if suffix == ".jpeg" else suffix


def count_pixels(path: Path, name: str) -> int:
    """Pixels (voxels) of every page, slice and channel, read from the file's header only."""
    suffix = suffix_of(path)
    try:
        if suffix in PIL_SUFFIXES:
            from PIL import Image

            with Image.open(path) as img:
                width, height = img.size
                return width * height * int(getattr(img, "n_frames", 1))
        if suffix in TIFF_SUFFIXES:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                total = 0
                for series in tif.series:
                    total += int(np.prod([n for n, a in zip(series.shape, series.axes) if a != "S"], dtype=np.int64))
                return total
        if suffix in NIFTI_SUFFIXES:
            import nibabel as nib

            return int(np.prod(nib.load(str(path)).shape, dtype=np.int64))
    except Exception as err:  # the reader's own message, e.g. "cannot identify image file"
        if type(err).__name__ == "DecompressionBombError":  # Pillow refuses the header's size itself
            raise RequestProblem(413, f"{name}: image too large ({relabel_error(err, path, name)})") from None
        raise RequestProblem(400, f"{name}: unreadable or truncated file ({relabel_error(err, path, name)})") from None
    raise RequestProblem(415, f"{name}: unsupported file type '{suffix}'")


def check_pixels(path: Path, name: str, max_pixels: int) -> None:
    pixels = count_pixels(path, name)
    if pixels > max_pixels:
        raise RequestProblem(413, f"{name}: {pixels:,} pixels is over this server's limit of {max_pixels:,} "
                                  f"(--max-pixels)")


def relabel_error(err: BaseException, path: Path, name: str) -> str:
    """An error text with the temporary file replaced by the client's file name."""
    return str(err).replace(str(path), name).replace(path.name, name).replace(str(path.parent), "")


def mask_file(labels: np.ndarray, meta: VolumeMeta | None, suffix: str, folder: Path, multilabel: bool) -> Path:
    """Write `labels` with the project's writers (as `unetkit predict` does) and return the file."""
    target = folder / f"mask{suffix}"
    if multilabel:
        write_image(target, labels, meta, overwrite=True)
    else:
        write_mask(target, labels, meta, overwrite=True)
    return target


def default_mask_suffix(input_suffix: str, multilabel: bool) -> str:
    """The format `unetkit predict` writes masks in for an input of this suffix."""
    if input_suffix in PIL_SUFFIXES:
        return ".tif" if multilabel else ".png"
    return input_suffix


def encode_array(array: np.ndarray) -> dict[str, Any]:
    """An array as JSON: little-endian bytes in base64 with its dtype and shape (C order)."""
    array = np.ascontiguousarray(array)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return {"dtype": array.dtype.name, "shape": list(array.shape), "encoding": "base64",
            "data": base64.b64encode(array.tobytes()).decode("ascii")}


def decode_array(payload: dict[str, Any]) -> np.ndarray:
    """Inverse of `encode_array` (for clients written in Python)."""
    data = base64.b64decode(payload["data"])
    return np.frombuffer(data, dtype=np.dtype(payload["dtype"]).newbyteorder("<")).reshape(payload["shape"])


def preview(image: np.ndarray) -> np.ndarray:
    """The image as uint8 for display: `(*S, 1)` grey or `(*S, 3)` RGB; 3D volumes stretched as a whole."""
    from unetkit.inference.overlay import display_image

    image = np.asarray(image)
    spatial = image.shape[1:]
    flat = image.reshape(image.shape[0], -1, spatial[-1])  # (C, D*H, W): one percentile stretch per channel
    shown = display_image(flat)
    out = np.round(shown * 255).astype(np.uint8).reshape(*spatial, 3)
    if image.shape[0] < 3:
        out = out[..., :1]
    return out
