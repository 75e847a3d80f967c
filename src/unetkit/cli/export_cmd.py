"""`unetkit export`: a model file to ONNX (fp32), int8 ONNX (2D and 3D), a torch oneDNN int8 model file or
a 4-bit weight-only model file."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from unetkit.cli.common import fail, user_errors


def _calibration_batches(folder: Path, size: int, in_channels: int, spec: dict | None, limit: int = 32) -> list:
    """Tiles of size x size from the images in `folder`, normalised like the model's training data."""
    import numpy as np

    from unetkit.data.io import is_image_file, read_image
    from unetkit.export.quantize import image_tiles

    files = sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p))
    if not files:
        fail(f"{folder}: no image files for calibration")
    tiles = []
    for f in files:
        img = read_image(f).astype(np.float32)
        if img.ndim == 2:
            img = img[None]
        if img.shape[0] != in_channels:
            fail(f"{f}: has {img.shape[0]} channels, the model expects {in_channels}")
        img = _normalize(img, spec)
        if min(img.shape[1:]) < size:
            continue
        tiles.append(image_tiles(img, size, stride=size))
        if sum(len(t) for t in tiles) >= limit:
            break
    if not tiles:
        fail(f"{folder}: no image is at least {size}x{size}")
    arr = np.concatenate(tiles)[:limit]
    return [arr[i:i + 4] for i in range(0, len(arr), 4)]


def _calibration_patches(folder: Path, size: int, in_channels: int, spec: dict | None, limit: int = 32) -> list:
    """size^3 patches from the volumes in `folder` (NIfTI), normalised like the training data."""
    import numpy as np

    from unetkit.data.io import read_volume
    from unetkit.export.quantize import volume_patches

    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith((".nii", ".nii.gz")))
    if not files:
        fail(f"{folder}: no NIfTI volumes (.nii / .nii.gz) for 3D calibration")
    patches = []
    for f in files:
        vol = read_volume(f)[0].astype(np.float32)
        vol = vol[None] if vol.ndim == 3 else vol
        if vol.shape[0] != in_channels:
            fail(f"{f}: has {vol.shape[0]} channels, the model expects {in_channels}")
        if min(vol.shape[1:]) < size:
            continue
        patches.append(volume_patches(_normalize(vol, spec), size, count=limit))
    if not patches:
        fail(f"{folder}: no volume is at least {size}^3")
    arr = np.concatenate(patches)
    arr = arr[np.linspace(0, len(arr) - 1, min(limit, len(arr))).astype(int)]  # spread over the volumes
    return [arr[i:i + 2] for i in range(0, len(arr), 2)]


def _normalize(img, spec: dict | None):
    try:
        from unetkit.data.normalize import normalize_image

        return normalize_image(img, spec or {"mode": "percentile", "lower": 1.0, "upper": 99.8})
    except ImportError:  # per-image 1 / 99.8 percentiles, as the default spec
        import numpy as np

        lo, hi = np.percentile(img, [1.0, 99.8])
        return np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1).astype(np.float32)


def register(app: typer.Typer) -> None:
    @app.command("export")
    def export(
        checkpoint: Path = typer.Argument(..., help="A unetkit model file (.safetensors)."),
        format: str = typer.Option("onnx", "--format",
                                   help="onnx (fp32), int8 (ONNX Runtime, static, calibrated), int8-torch "
                                        "(torch oneDNN, static, calibrated) or int4 (4-bit weights)."),
        out: Path = typer.Option(..., "--out", help="Output path (.onnx; .safetensors for int8-torch, int4)."),
        group_size: int = typer.Option(32, help="int4: weights per scale (0: one scale per output channel)."),
        size: int = typer.Option(256, help="Export / calibration tile size per spatial dim."),
        calibration: Optional[Path] = typer.Option(None, help="Folder of images for int8 calibration."),
        opset: int = typer.Option(18, help="ONNX opset."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output file."),
    ) -> None:
        """Export a model file to ONNX, to int8 ONNX calibrated on real images (2D) or volumes (3D),
        to a torch oneDNN int8 model file (same calibration; `unetkit predict` runs it on the CPU),
        or to a 4-bit weight-only model file (smaller; `load_model` dequantises it)."""
        from unetkit import load_model

        if format not in ("onnx", "int8", "int8-torch", "int4"):
            fail(f"--format must be onnx, int8, int8-torch or int4, got '{format}'")
        if format in ("int8", "int8-torch") and calibration is None:
            fail(f"--format {format} needs --calibration DIR (images like the training data)")
        if out.exists() and not overwrite:
            fail(f"{out} exists; pass --overwrite to replace it")
        with user_errors():
            try:
                from unetkit.export.onnx import export_onnx
            except ImportError as err:
                fail(str(err))
            model = load_model(checkpoint)
            if format == "int4":
                from unetkit.export.quantize import save_model_4bit

                save_model_4bit(model, out, group_size=group_size or None, overwrite=overwrite)
                typer.echo(f"wrote {out}")
                return
            cfg = model.unetkit_config
            dims, in_ch = cfg.get("spatial_dims", 2), cfg.get("in_channels", 1)
            shape = (1, in_ch, *([size] * dims))
            if format == "onnx":
                export_onnx(model, out, shape, opset=opset, overwrite=overwrite)
            elif format == "int8-torch":
                from unetkit.export.onednn_int8 import quantize_torch_int8, save_model_int8

                spec = getattr(model, "unetkit_meta", {}).get("extra", {}).get("preprocess")
                batches = (_calibration_batches if dims == 2 else _calibration_patches)(calibration, size, in_ch, spec)
                save_model_int8(quantize_torch_int8(model, batches), out, overwrite=overwrite)
            else:
                from unetkit.export.quantize import quantize_int8

                spec = getattr(model, "unetkit_meta", {}).get("extra", {}).get("preprocess")
                batches = (_calibration_batches if dims == 2 else _calibration_patches)(calibration, size, in_ch, spec)
                quantize_int8(model, batches, out, example_shape=shape, overwrite=overwrite)
            typer.echo(f"wrote {out}")

    @app.command("import-nnunet")
    def import_nnunet(
        checkpoint: Path = typer.Argument(..., help="nnU-Net v2 checkpoint_final.pth (or a saved state dict)."),
        out: Path = typer.Option(..., "--out", help="Output unetkit model file (.safetensors)."),
        deep_supervision: bool = typer.Option(False, help="Keep the deep-supervision heads."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output file."),
    ) -> None:
        """Convert an nnU-Net v2 PlainConvUNet / ResidualEncoderUNet checkpoint to a unetkit model file."""
        from unetkit import save_model
        from unetkit.models.nnunet_import import load_nnunet

        with user_errors():
            model = load_nnunet(checkpoint, deep_supervision=deep_supervision)
            save_model(model, out, extra={"source": f"nnU-Net: {checkpoint.name}"}, overwrite=overwrite)
            typer.echo(model.nnunet_import_report.summary())
            typer.echo(f"wrote {out} ({model.unetkit_arch}); inputs must be preprocessed as nnU-Net did")
