"""Predictor: model file round trip, output formats, bad input, the predict CLI."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from typer.testing import CliRunner

import unetkit
from unetkit.cli.main import app
from unetkit.data.io import VolumeMeta, read_mask, read_volume, write_image
from unetkit.errors import ConfigError, DataError
from unetkit.inference.predictor import Predictor, expand_inputs
from unetkit.io.checkpoint import CheckpointError

EXTRA = {"preprocess": {"mode": "minmax"}, "mode": "binary", "threshold": 0.5, "patch_size": [32, 32],
         "in_channels": 1, "class_names": ["background", "cell"]}


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    model = unetkit.create_model("unet", features=(4, 8, 16), num_classes=1)
    return unetkit.save_model(model, tmp_path / "model.safetensors", extra=EXTRA)


def _png(path: Path, shape=(40, 56), dtype=np.uint8) -> Path:
    rng = np.random.default_rng(0)
    array = (rng.random(shape) * (255 if dtype == np.uint8 else 60000)).astype(dtype)
    Image.fromarray(array).save(path)
    return path


def test_round_trip_matches_direct_model_call(model_file: Path, tmp_path: Path) -> None:
    predictor = Predictor.from_checkpoint(model_file, device="cpu", roi_size=64)
    image = np.random.default_rng(1).random((1, 40, 56)).astype(np.float32) * 100
    pred = predictor.predict_array(image)
    model = unetkit.load_model(model_file)
    x = torch.from_numpy((image - image.min()) / (image.max() - image.min()))[None]
    with torch.no_grad():
        expected = torch.sigmoid(model(x))[0].numpy()
    np.testing.assert_allclose(pred.probabilities, expected, atol=1e-5)
    np.testing.assert_array_equal(pred.labels, (expected >= 0.5).astype(np.uint8))
    assert predictor.roi_size == (64, 64) and predictor.mode == "binary"


def test_png_outputs(model_file: Path, tmp_path: Path) -> None:
    src = _png(tmp_path / "cells.png")
    predictor = Predictor.from_checkpoint(model_file, device="cpu")
    result = predictor.predict_file(src, tmp_path / "out", save_probabilities=True, measure=True)
    mask = read_mask(result["mask"])
    assert result["mask"].suffix == ".png" and mask.shape == (40, 56) and set(np.unique(mask)) <= {0, 1}
    probs = tifffile.imread(result["probabilities"])
    assert probs.dtype == np.float32 and probs.shape == (1, 40, 56)
    assert Image.open(result["overlay"]).size[0] > 100
    assert result["objects"].read_text().startswith("id,class,class_name,pixels,area")
    with pytest.raises(FileExistsError, match="overwrite"):
        predictor.predict_file(src, tmp_path / "out")
    predictor.predict_file(src, tmp_path / "out", save_probabilities=True, measure=True, overwrite=True)


def test_16bit_tiff_and_nifti_outputs_keep_format(model_file: Path, tmp_path: Path) -> None:
    predictor = Predictor.from_checkpoint(model_file, device="cpu")
    tif = tmp_path / "img16.tif"
    tifffile.imwrite(tif, (np.random.default_rng(2).random((33, 45)) * 60000).astype(np.uint16))
    result = predictor.predict_file(tif, tmp_path / "out")
    assert result["mask"].name == "img16.tif" and read_mask(result["mask"]).shape == (33, 45)

    affine = np.array([[0.5, 0, 0, 10], [0, 0.7, 0, -3], [0, 0, 2.0, 1], [0, 0, 0, 1]])
    nii = tmp_path / "scan.nii.gz"
    write_image(nii, np.random.default_rng(3).random((1, 1, 30, 26)).astype(np.float32),
                VolumeMeta(spacing=(2.0, 0.7, 0.5), affine=affine))
    result = predictor.predict_file(nii, tmp_path / "out", save_probabilities=True)
    mask, meta = read_volume(result["mask"])
    assert result["mask"].name == "scan.nii.gz" and mask.shape == (1, 1, 30, 26)
    np.testing.assert_allclose(meta.affine, affine)
    _, pmeta = read_volume(result["probabilities"])
    np.testing.assert_allclose(pmeta.affine, affine)


def test_3d_volume_prediction_keeps_affine(tmp_path: Path) -> None:
    model = unetkit.create_model("unet", spatial_dims=3, features=(4, 8), num_classes=3)
    path = unetkit.save_model(model, tmp_path / "m3d.safetensors", extra={"patch_size": [16, 16, 16]})
    affine = np.diag([0.8, 0.8, 3.0, 1.0])
    nii = tmp_path / "vol.nii"
    write_image(nii, np.random.default_rng(4).random((1, 10, 20, 18)).astype(np.float32),
                VolumeMeta(spacing=(3.0, 0.8, 0.8), affine=affine))
    predictor = Predictor.from_checkpoint(path, device="cpu", tta=True)
    result = predictor.predict_file(nii, tmp_path / "out", measure=True)
    mask, meta = read_volume(result["mask"])
    assert mask.shape == (1, 10, 20, 18) and mask.max() <= 2
    np.testing.assert_allclose(meta.affine, affine)
    assert "volume" in result["objects"].read_text().splitlines()[0]


def test_valid_mode_model_uses_overlap_tile(tmp_path: Path) -> None:
    model = unetkit.create_model("unet-original", features=(4, 8, 16), num_classes=2, dropout=0.0)
    path = unetkit.save_model(model, tmp_path / "orig.safetensors", extra={"preprocess": {"mode": "none"}})
    predictor = Predictor.from_checkpoint(path, device="cpu", roi_size=62, overlap=0.0)
    assert predictor.valid_mode and predictor.roi_size == (60, 60)  # snapped to a valid size
    image = np.random.default_rng(5).random((1, 40, 52)).astype(np.float32)
    padded = np.pad(image, ((0, 0), (20, 20), (20, 20)), mode="reflect")
    with torch.no_grad():
        expected = torch.softmax(unetkit.load_model(path)(torch.from_numpy(padded)[None]), 1)[0].numpy()
    np.testing.assert_allclose(predictor.predict_array(image).probabilities, expected, atol=1e-5)


def test_truncated_png_gives_clear_error_and_no_output(model_file: Path, tmp_path: Path) -> None:
    src = _png(tmp_path / "broken.png", shape=(64, 64))
    src.write_bytes(src.read_bytes()[:200])
    predictor = Predictor.from_checkpoint(model_file, device="cpu")
    with pytest.raises(DataError, match="broken.png"):
        predictor.predict_file(src, tmp_path / "out")
    assert not any(p.is_file() for p in (tmp_path / "out").rglob("*"))


def test_wrong_channels_give_clear_error_and_no_output(model_file: Path, tmp_path: Path) -> None:
    rgb = tmp_path / "colour.png"
    Image.fromarray((np.random.default_rng(6).random((20, 20, 3)) * 255).astype(np.uint8)).save(rgb)
    pages = tmp_path / "stack.tif"
    tifffile.imwrite(pages, np.arange(1200, dtype=np.uint16).reshape(3, 20, 20), photometric="minisblack")
    predictor = Predictor.from_checkpoint(model_file, device="cpu")
    with pytest.raises(DataError, match=r"colour.png: has 3 channel\(s\) but the model .* expects 1"):
        predictor.predict_file(rgb, tmp_path / "out")
    with pytest.raises(DataError, match="stack.tif.*multi-page"):
        predictor.predict_file(pages, tmp_path / "out")
    assert not any(p.is_file() for p in (tmp_path / "out").rglob("*"))
    grey_rgb = tmp_path / "grey_rgb.png"  # grey saved as RGB is accepted
    Image.fromarray(np.repeat((np.arange(400).reshape(20, 20) % 256).astype(np.uint8)[..., None], 3, -1)).save(grey_rgb)
    assert predictor.predict_file(grey_rgb, tmp_path / "out")["mask"].is_file()


def test_corrupted_and_foreign_checkpoints(model_file: Path, tmp_path: Path) -> None:
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(model_file.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="damaged.safetensors"):
        Predictor.from_checkpoint(damaged, device="cpu")
    foreign = tmp_path / "foreign.pth"
    torch.save({"weight": torch.zeros(3)}, foreign)
    with pytest.raises(CheckpointError, match="foreign.pth"):
        Predictor.from_checkpoint(foreign, device="cpu")


def test_expand_inputs(tmp_path: Path) -> None:
    for name in ("a.png", "b.png", "c.tif"):
        _png(tmp_path / name, shape=(4, 4)) if name.endswith("png") else tifffile.imwrite(tmp_path / name, np.zeros((4, 4)))
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in expand_inputs(tmp_path)] == ["a.png", "b.png", "c.tif"]
    assert [p.name for p in expand_inputs(str(tmp_path / "*.png"))] == ["a.png", "b.png"]
    assert [p.name for p in expand_inputs([tmp_path / "c.tif"])] == ["c.tif"]
    with pytest.raises(DataError, match="no such file"):
        expand_inputs(tmp_path / "missing.png")


def test_cli_predict_exit_codes(model_file: Path, tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    _png(images / "one.png")
    _png(images / "two.png", dtype=np.uint16)
    runner = CliRunner()
    ok = runner.invoke(app, ["predict", str(model_file), str(images), "--out", str(tmp_path / "out"),
                             "--measure", "--device", "cpu"])
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "out" / "counts.csv").read_text().startswith("image,cell,total")
    again = runner.invoke(app, ["predict", str(model_file), str(images), "--out", str(tmp_path / "out"),
                                "--device", "cpu"])
    assert again.exit_code == 1 and "exists" in again.output
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    broken = runner.invoke(app, ["predict", str(model_file), str(bad), "--out", str(tmp_path / "o2"),
                                 "--device", "cpu"])
    assert broken.exit_code == 1 and "bad.png" in broken.output
    assert not (tmp_path / "o2" / "masks" / "bad.png").exists()
    damaged = tmp_path / "x.safetensors"
    damaged.write_bytes(b"not a model")
    assert runner.invoke(app, ["predict", str(damaged), str(bad), "--out", str(tmp_path / "o3")]).exit_code == 1


def test_overlay_colours_and_16bit_stretch(tmp_path: Path) -> None:
    from unetkit.inference.overlay import DEFAULT_COLORS, color_labels, display_image, overlay_figure

    image = np.linspace(1000, 3000, 30 * 40).reshape(1, 30, 40).astype(np.uint16)
    shown = display_image(image)
    assert shown.shape == (30, 40, 3) and shown.min() == 0.0 and shown.max() == 1.0
    labels = np.zeros((30, 40), np.uint8)
    labels[5:10, 5:10], labels[20:25, 20:25] = 1, 2
    colours = color_labels(labels)
    np.testing.assert_allclose(colours[7, 7], DEFAULT_COLORS[0], atol=1e-6)
    np.testing.assert_allclose(colours[22, 22], DEFAULT_COLORS[1], atol=1e-6)
    assert (colours[0, 0] == 0).all()
    path = overlay_figure(image, labels, tmp_path / "o.png")
    assert Image.open(path).format == "PNG" and not list(tmp_path.glob(".*.tmp"))


def test_predict_paths_skip_errors(model_file: Path, tmp_path: Path) -> None:
    good = _png(tmp_path / "good.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    predictor = Predictor.from_checkpoint(model_file, device="cpu")
    results = predictor.predict_paths([good, bad], tmp_path / "out", skip_errors=True, overlay=False)
    assert results[0]["mask"].is_file() and "bad.png" in results[1]["error"]


def test_bf16_precision_is_an_opt_in_close_to_fp32_and_refused_where_it_cannot_pay(model_file: Path, tmp_path: Path,
                                                                                   monkeypatch) -> None:
    import unetkit.export.optimize as optimize
    from typer.testing import CliRunner

    from unetkit.cli.main import app

    image = np.random.default_rng(1).random((1, 40, 56)).astype(np.float32) * 100
    fp32 = Predictor.from_checkpoint(model_file, device="cpu", roi_size=32).predict_array(image).probabilities
    monkeypatch.setattr(optimize, "cpu_bf16_supported", lambda: True)
    bf16 = Predictor.from_checkpoint(model_file, device="cpu", roi_size=32,
                                     precision="bf16").predict_array(image).probabilities
    diff = np.abs(bf16 - fp32).max()
    assert 0 < diff < 0.05  # it ran in bf16 (not bit-equal), and stays near fp32
    monkeypatch.setattr(optimize, "cpu_bf16_supported", lambda: False)  # e.g. an AVX2-only CPU
    with pytest.raises(ConfigError, match="no oneDNN bf16"):
        Predictor.from_checkpoint(model_file, device="cpu", precision="bf16")
    png = _png(tmp_path / "a.png")
    bad = CliRunner().invoke(app, ["predict", str(model_file), str(png), "-o", str(tmp_path / "out"),
                                   "--precision", "half", "--device", "cpu"])
    assert bad.exit_code == 1 and "precision must be fp32 or bf16, got 'half'" in bad.output
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
