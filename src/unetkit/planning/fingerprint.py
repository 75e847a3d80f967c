"""Dataset fingerprint: what a plan is derived from (nnU-Net's "dataset fingerprint", and more).

    fp = dataset_fingerprint("data/nuclei")      # cached: computed once per set of files
    print(fp.format())

Per case: shape, spacing, channels, dtype. Per channel: intensity statistics overall (from
`unetkit.data.checks`, the statistics check-data prints) and inside the foreground. Modality:
detected (CT when most cases span Hounsfield units, from air at -1000 to tissue above 0; RGB for 3-channel 8-bit
images; MR for other volumes; else other) or given. Class
frequencies, objects per image and their sizes (instance ids, or connected components of each
class), and anisotropy (largest / smallest median spacing).

The result is cached as JSON under `$UNETKIT_CACHE_DIR` (default `~/.cache/unetkit`)/fingerprints,
keyed by the files' paths, modification times and sizes, so a changed file means a new fingerprint.
The data folder itself is never written to.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from unetkit.data.checks import _IntensityAccumulator, check_dataset
from unetkit.data.folder import FolderScan, scan_folder
from unetkit.data.io import read_input, read_labels
from unetkit.data.masks import to_semantic
from unetkit.errors import ConfigError

VERSION = 1
MODALITIES = ("ct", "mr", "microscopy", "rgb", "other")
_FG_SAMPLE = 20000  # foreground voxels kept per case and channel for the percentiles


@dataclass
class Fingerprint:
    root: str
    spatial_dims: int
    channels: int
    dtypes: list[str]
    cases: list[dict[str, Any]]  # {"name", "shape", "spacing"} per case
    shape_median: list[float]
    spacing_median: list[float]
    spacing_p10: list[float]
    anisotropy: float  # largest / smallest median spacing (1.0: isotropic)
    intensity: dict[str, Any]  # overall, per channel (check-data's statistics)
    intensity_foreground: dict[str, Any]  # inside the foreground, per channel
    modality: str
    modality_source: str  # "detected" | "given"
    mask_kind: str
    num_classes: int  # including background
    class_frequency: list[float]
    class_images: list[int]
    objects: dict[str, Any]  # per_image (mean, min, max), size (median, p10, p90, min), counted_as
    ct_like_cases: int = 0
    version: int = VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_cases(self) -> int:
        return len(self.cases)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Fingerprint":
        return cls(**data)

    def with_modality(self, modality: str | None) -> "Fingerprint":
        """This fingerprint with a user-given modality (None keeps the detected one)."""
        if modality is None:
            return self
        if modality not in MODALITIES:
            raise ConfigError(f"unknown modality '{modality}'; choose one of {', '.join(MODALITIES)}")
        data = self.to_dict()
        data.update(modality=modality, modality_source="given")
        return Fingerprint.from_dict(data)

    def format(self) -> str:
        """Readable lines (shown by `unetkit check-data` and `unetkit plan`)."""
        axes = "D H W" if self.spatial_dims == 3 else "H W"
        fg = self.intensity_foreground
        obj = self.objects
        lines = [
            f"fingerprint: {self.num_cases} case(s), {self.spatial_dims}D, {self.channels} channel(s), "
            f"{', '.join(self.dtypes)}, modality {self.modality} ({self.modality_source})",
            f"  median shape ({axes}): {_r(self.shape_median)}; median spacing: {_r(self.spacing_median)}; "
            f"anisotropy {self.anisotropy:.2f}",
        ]
        for c in range(self.channels):
            if fg.get("mean"):
                lines.append(f"  foreground ch{c}: mean={fg['mean'][c]:.5g} std={fg['std'][c]:.5g} "
                             f"p0.5={fg['p0.5'][c]:.5g} p99.5={fg['p99.5'][c]:.5g}")
        lines.append(f"  classes: {self.num_classes} ({self.mask_kind}); frequency "
                     + ", ".join(f"{k}: {f * 100:.2f}%" for k, f in enumerate(self.class_frequency)))
        if obj.get("per_image_mean") is not None:
            lines.append(f"  objects ({obj['counted_as']}): {obj['per_image_mean']:.1f} per image "
                         f"(min {obj['per_image_min']}, max {obj['per_image_max']}); size median "
                         f"{obj['size_median']:.0f} px (p10 {obj['size_p10']:.0f}, p90 {obj['size_p90']:.0f})")
        return "\n".join(lines)


def cache_dir() -> Path:
    root = os.environ.get("UNETKIT_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "unetkit"
    return Path(root) / "fingerprints"


def fingerprint_key(scan: FolderScan, spatial_dims: int | None) -> str:
    """A hash of every file of the dataset (path, modification time, size) and the settings."""
    h = hashlib.sha256(f"v{VERSION}|dims={spatial_dims}".encode())
    for case in scan.cases:
        for path in [*case.images, case.mask, case.instances]:
            if path is None:
                continue
            st = Path(path).stat()
            h.update(f"|{Path(path).resolve()}|{st.st_mtime_ns}|{st.st_size}".encode())
    return h.hexdigest()[:32]


def dataset_fingerprint(root: str | os.PathLike, masks_dir: str | os.PathLike | None = None,
                        mask_suffix: str | None = None, modality: str | None = None,
                        spatial_dims: int | None = None, mask_kind: str = "auto", cache: bool = True,
                        report: Any = None) -> Fingerprint:
    """The fingerprint of a dataset folder (read once, then cached; see the module docstring).

    Raises DataError with check-data's table when the folder has problems. `report`: a CheckReport
    of the same folder already made (check-data passes its own), so it is not read a second time.
    """
    if modality is not None and modality not in MODALITIES:
        raise ConfigError(f"unknown modality '{modality}'; choose one of {', '.join(MODALITIES)}")
    scan = scan_folder(root, masks_dir, mask_suffix)
    key = fingerprint_key(scan, spatial_dims) + f"-{mask_kind}"
    path = cache_dir() / f"{key}.json"
    if cache and path.is_file():
        try:
            fp = Fingerprint.from_dict(json.loads(path.read_text()))
            fp.modality = detect_modality(fp)
            return fp.with_modality(modality)
        except (ValueError, TypeError):
            pass  # an unreadable cache entry is recomputed
    started = time.monotonic()
    if report is None:
        report = check_dataset(root, masks_dir, mask_suffix=mask_suffix, mask_kind=mask_kind,
                               spatial_dims=spatial_dims, scan=scan)
    report.raise_if_problems()
    fp = _compute(Path(root), scan, report.stats, spatial_dims)
    fp.extra["seconds"] = round(time.monotonic() - started, 2)  # reading everything once (planning uses it)
    if cache:
        _write_cache(path, fp)
    return fp.with_modality(modality)


def _compute(root: Path, scan: FolderScan, stats: dict[str, Any], spatial_dims: int | None) -> Fingerprint:
    dims = stats["spatial_dims"]
    kind = stats["mask_kind"]
    rng = np.random.default_rng(0)
    fg_acc = _IntensityAccumulator()
    cases, counts, sizes = [], [], []
    ct_like = 0
    for case in scan.pairs:
        parts = [read_input(p, spatial_dims) for p in case.images]
        image = np.concatenate([a for a, _ in parts]) if len(parts) > 1 else parts[0][0]
        meta = parts[0][1]
        spacing = [float(s) for s in meta.spacing] if meta is not None else [1.0] * dims
        cases.append({"name": case.name, "shape": [int(s) for s in image.shape[1:]], "spacing": spacing})
        labels = read_labels(case.mask, spatial_dims)
        semantic, instances = to_semantic(labels, kind)
        fg = semantic > 0
        if fg.any():
            values = image[:, fg]
            take = min(values.shape[1], _FG_SAMPLE)
            fg_acc.add(values[:, rng.choice(values.shape[1], take, replace=False)] if take < values.shape[1]
                       else values, rng)
        if image.shape[0] == 1 and float(image.min()) <= -500 and float(image.max()) >= 0:
            ct_like += 1  # air at about -1000 HU, soft tissue about 0-100 HU
        n, s = _objects(semantic, instances)
        counts.append(n)
        sizes.extend(s)
    spacings = np.array([c["spacing"] for c in cases], dtype=np.float64)
    shapes = np.array([c["shape"] for c in cases], dtype=np.float64)
    median_spacing = np.median(spacings, axis=0)
    fg_stats = fg_acc.result()
    pct = fg_stats.pop("percentiles")
    fg_stats.update({"p0.5": pct["0.5"], "p99.5": pct["99.5"]})
    channels = stats["channels"][0] if stats["channels"] else 1
    fp = Fingerprint(
        root=str(root), spatial_dims=dims, channels=channels, dtypes=stats["dtypes"], cases=cases,
        shape_median=[float(v) for v in np.median(shapes, axis=0)],
        spacing_median=[float(v) for v in median_spacing],
        spacing_p10=[float(v) for v in np.percentile(spacings, 10, axis=0)],
        anisotropy=float(median_spacing.max() / max(median_spacing.min(), 1e-12)),
        intensity=stats["intensity"], intensity_foreground=fg_stats,
        modality="other", modality_source="detected", mask_kind=kind, num_classes=stats["num_classes"],
        class_frequency=stats["class_frequency"], class_images=stats["class_images"],
        objects=_object_summary(counts, sizes, "instances" if kind == "instances" else "components"),
        ct_like_cases=ct_like,
    )
    fp.modality = detect_modality(fp)
    return fp


def detect_modality(fp: Fingerprint) -> str:
    """ct | rgb | mr | microscopy | other, from the fingerprint (see the module docstring)."""
    if fp.channels == 1 and fp.ct_like_cases * 2 > fp.num_cases:
        return "ct"
    if fp.channels == 3 and fp.dtypes == ["uint8"]:
        return "rgb"
    if fp.spatial_dims == 3:
        return "mr"
    return "other"  # 2D grayscale / multi-channel: microscopy, satellite, X-ray... (give --modality)


def _objects(semantic: np.ndarray, instances: np.ndarray | None) -> tuple[int, list[int]]:
    """Objects in one mask (instance ids, else connected components of each class) and their sizes."""
    if instances is not None:
        sizes = np.bincount(instances.ravel())[1:]
        sizes = sizes[sizes > 0]
        return len(sizes), sizes.tolist()
    out: list[int] = []
    for k in np.unique(semantic):
        if k == 0:
            continue
        components, n = ndi.label(semantic == k)
        if n:
            out.extend(np.bincount(components.ravel())[1:].tolist())
    return len(out), out


def _object_summary(counts: list[int], sizes: list[int], counted_as: str) -> dict[str, Any]:
    if not counts:
        return {"counted_as": counted_as, "per_image_mean": None}
    s = np.asarray(sizes if sizes else [0], dtype=np.float64)
    return {"counted_as": counted_as, "per_image_mean": float(np.mean(counts)), "per_image_min": int(min(counts)),
            "per_image_max": int(max(counts)), "size_median": float(np.median(s)),
            "size_p10": float(np.percentile(s, 10)), "size_p90": float(np.percentile(s, 90)),
            "size_min": float(s.min())}


def _write_cache(path: Path, fp: Fingerprint) -> None:
    from unetkit.io.atomic import atomic_path

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path, overwrite=True) as tmp:
            tmp.write_text(json.dumps(fp.to_dict()), encoding="utf-8")
    except OSError:
        pass  # a read-only home: the fingerprint is simply not cached


def _r(values: list[float]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"
