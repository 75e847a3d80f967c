"""File formats written with PIL / tifffile / nibabel and read back bit-exact through unetkit.data.io."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import tifffile
from PIL import Image

from unetkit.data.io import (VolumeMeta, is_image_file, read_image, read_mask, read_volume, stem_of,
                             write_image, write_mask)
from unetkit.errors import DataError

RNG = np.random.default_rng(0)


def _u8(*shape):
    return RNG.integers(0, 256, shape, dtype=np.uint8)


def _u16(*shape):
    return RNG.integers(0, 65536, shape, dtype=np.uint16)


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif"])
def test_grayscale_uint8(tmp_path, suffix):
    arr = _u8(20, 30)
    Image.fromarray(arr).save(tmp_path / f"a{suffix}")
    out = read_image(tmp_path / f"a{suffix}")
    assert out.shape == (1, 20, 30) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0], arr)


def test_png_16bit(tmp_path):
    arr = _u16(20, 30)
    Image.fromarray(arr).save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out[0], arr)


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif"])
def test_rgb(tmp_path, suffix):
    arr = _u8(20, 30, 3)
    Image.fromarray(arr).save(tmp_path / f"a{suffix}")
    out = read_image(tmp_path / f"a{suffix}")
    np.testing.assert_array_equal(out, arr.transpose(2, 0, 1))


def test_rgba_png_drops_alpha_unless_asked(tmp_path):
    arr = _u8(10, 12, 4)
    Image.fromarray(arr, mode="RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), arr[..., :3].transpose(2, 0, 1))
    np.testing.assert_array_equal(read_image(tmp_path / "a.png", keep_alpha=True), arr.transpose(2, 0, 1))


def test_jpeg_reads_rgb_shape(tmp_path):
    arr = np.full((16, 16, 3), 128, np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.jpg", quality=95)
    out = read_image(tmp_path / "a.jpg")
    assert out.shape == (3, 16, 16) and abs(int(out.mean()) - 128) <= 2


def test_tiff_16bit_rgb_hwc(tmp_path):
    arr = _u16(20, 30, 3)
    tifffile.imwrite(tmp_path / "a.tif", arr, photometric="rgb")
    np.testing.assert_array_equal(read_image(tmp_path / "a.tif"), arr.transpose(2, 0, 1))


def test_tiff_multichannel_chw(tmp_path):
    arr = _u16(5, 20, 30)
    tifffile.imwrite(tmp_path / "a.tif", arr, photometric="minisblack")
    np.testing.assert_array_equal(read_image(tmp_path / "a.tif"), arr)


def test_tiff_multipage_pages_become_channels(tmp_path):
    pages = [_u8(20, 30) for _ in range(4)]
    for page in pages:
        tifffile.imwrite(tmp_path / "a.tif", page, append=True)
    np.testing.assert_array_equal(read_image(tmp_path / "a.tif"), np.stack(pages))


def test_tiff_float32(tmp_path):
    arr = RNG.random((2, 8, 9), dtype=np.float32)
    tifffile.imwrite(tmp_path / "a.tif", arr)
    out = read_image(tmp_path / "a.tif")
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, arr)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti_axes_spacing_affine(tmp_path, suffix):
    data = RNG.integers(-1000, 1000, (12, 10, 6)).astype(np.int16)  # (x, y, z)
    affine = np.array([[0.7, 0, 0, 10], [0, 0.8, 0, -5], [0, 0, 2.5, 3], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(data, affine), tmp_path / f"v{suffix}")
    volume, meta = read_volume(tmp_path / f"v{suffix}")
    assert volume.shape == (1, 6, 10, 12) and volume.dtype == np.int16
    np.testing.assert_array_equal(volume[0], data.transpose(2, 1, 0))
    np.testing.assert_allclose(meta.spacing, (2.5, 0.8, 0.7), rtol=1e-6)
    np.testing.assert_allclose(meta.affine, affine)
    # write back: nibabel sees the original (x, y, z) array and affine
    write_image(tmp_path / f"w{suffix}", volume, meta)
    img = nib.load(tmp_path / f"w{suffix}")
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), data)
    np.testing.assert_allclose(img.affine, affine)


def test_tiff_stack_volume_with_spacing(tmp_path):
    volume = _u16(2, 7, 20, 30)
    write_image(tmp_path / "v.tif", volume, VolumeMeta(spacing=(3.0, 0.5, 0.5)))
    out, meta = read_volume(tmp_path / "v.tif")
    np.testing.assert_array_equal(out, volume)
    np.testing.assert_allclose(meta.spacing, (3.0, 0.5, 0.5))
    # a plain multi-page TIFF (no ImageJ metadata) reads as depth with spacing 1
    tifffile.imwrite(tmp_path / "p.tif", volume[0], photometric="minisblack")
    out, meta = read_volume(tmp_path / "p.tif")
    np.testing.assert_array_equal(out, volume[:1])
    assert meta.spacing == (1.0, 1.0, 1.0)


@pytest.mark.parametrize("name,array", [
    ("a.png", _u8(1, 20, 30)), ("b.png", _u16(1, 20, 30)), ("c.png", _u8(3, 20, 30)),
    ("d.bmp", _u8(3, 20, 30)), ("e.tif", _u16(3, 20, 30)), ("f.tif", _u8(4, 20, 30)),
    ("g.nii.gz", RNG.random((2, 20, 30), dtype=np.float32)),
])
def test_write_image_round_trip(tmp_path, name, array):
    write_image(tmp_path / name, array)
    np.testing.assert_array_equal(read_image(tmp_path / name), array)
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temp files left


def test_write_refuses_overwrite(tmp_path):
    write_image(tmp_path / "a.png", _u8(1, 4, 4))
    with pytest.raises(FileExistsError, match="a.png"):
        write_image(tmp_path / "a.png", _u8(1, 4, 4))
    new = _u8(1, 4, 4)
    write_image(tmp_path / "a.png", new, overwrite=True)
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), new)


@pytest.mark.parametrize("values", [(0, 1), (0, 255), (0, 1, 2, 3), tuple(range(0, 300, 7))])
@pytest.mark.parametrize("suffix", [".png", ".tif", ".nii.gz"])
def test_mask_round_trip_keeps_raw_values(tmp_path, values, suffix):
    labels = RNG.choice(np.array(values), size=(16, 18))
    write_mask(tmp_path / f"m{suffix}", labels)
    out = read_mask(tmp_path / f"m{suffix}")
    assert out.shape == (16, 18) and out.dtype.kind in "ui"
    np.testing.assert_array_equal(out, labels)


def test_palette_mask_keeps_indices(tmp_path):
    labels = RNG.integers(0, 4, (10, 10)).astype(np.uint8)
    img = Image.fromarray(labels, mode="P")
    img.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 756)
    img.save(tmp_path / "m.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), labels)


def test_grey_mask_saved_as_rgb_is_accepted(tmp_path):
    labels = RNG.choice(np.array([0, 255], np.uint8), (10, 10))
    Image.fromarray(np.stack([labels] * 3, -1)).save(tmp_path / "m.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), labels)
    Image.fromarray(_u8(10, 10, 3)).save(tmp_path / "c.png")
    with pytest.raises(DataError, match="c.png: colour mask"):
        read_mask(tmp_path / "c.png")


@pytest.mark.parametrize("suffix", [".png", ".tif", ".nii.gz"])
def test_truncated_files_raise_data_error_naming_file(tmp_path, suffix):
    write_image(tmp_path / f"a{suffix}", _u16(1, 64, 64) if suffix != ".png" else _u8(1, 64, 64))
    data = (tmp_path / f"a{suffix}").read_bytes()
    (tmp_path / f"a{suffix}").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=f"a{suffix}".replace(".", r"\.")):
        read_image(tmp_path / f"a{suffix}")


def test_garbage_and_missing_files(tmp_path):
    (tmp_path / "x.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="x.png: unreadable"):
        read_image(tmp_path / "x.png")
    with pytest.raises(DataError, match="nope.tif: file not found"):
        read_image(tmp_path / "nope.tif")


def test_names():
    assert stem_of("a/case_01.nii.gz") == "case_01"
    assert stem_of("b.ome.tif") == "b"
    assert stem_of("c.PNG") == "c"
    assert is_image_file("x.TIF") and is_image_file("y.nii.gz")
    assert not is_image_file(".hidden.png") and not is_image_file("notes.txt")
