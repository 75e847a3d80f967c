"""check-data: one hand-made broken folder per problem, statistics, and the CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from PIL import Image
from typer.testing import CliRunner

from unetkit.cli.main import app
from unetkit.data.checks import check_dataset
from unetkit.datasets import write_dataset
from unetkit.errors import DataError

RNG = np.random.default_rng(2)


def make_folder(root, n=3, size=(32, 32), values=(0, 255)):
    """A clean images/ + masks/ folder of n 8-bit PNGs with a foreground square in each mask."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        Image.fromarray(RNG.integers(0, 256, size, dtype=np.uint8)).save(root / "images" / f"img{i}.png")
        mask = np.zeros(size, np.uint8)
        mask[4:12, 4:12] = values[1]
        Image.fromarray(mask).save(root / "masks" / f"img{i}.png")
    return root


def problems(root, **kw):
    report = check_dataset(root, **kw)
    return report, {(p.split("/")[-1], prob.split(" (")[0]) for p, prob in report.problems}


def test_clean_folder_has_no_problems_and_statistics(tmp_path):
    root = make_folder(tmp_path / "d")
    report = check_dataset(root)
    assert report.ok and report.format_table() == ""
    s = report.stats
    assert s["cases"] == 3 and s["channels"] == [1] and s["mask_kind"] == "binary"
    assert s["class_pixels"] == [3 * (32 * 32 - 64), 3 * 64]
    images = np.stack([np.array(Image.open(root / "images" / f"img{i}.png")) for i in range(3)]).astype(float)
    assert s["intensity"]["min"][0] == images.min() and s["intensity"]["max"][0] == images.max()
    np.testing.assert_allclose(s["intensity"]["mean"][0], images.mean())
    np.testing.assert_allclose(s["intensity"]["std"][0], images.std())
    report.raise_if_problems()


def test_truncated_png(tmp_path):
    root = make_folder(tmp_path / "d", size=(64, 64))
    path = root / "images" / "img1.png"
    path.write_bytes(path.read_bytes()[:300])
    _, found = problems(root)
    assert found == {("img1.png", "unreadable or truncated image")}


def test_image_without_mask(tmp_path):
    root = make_folder(tmp_path / "d")
    (root / "masks" / "img2.png").unlink()
    _, found = problems(root)
    assert found == {("img2.png", "image without mask")}


def test_mask_without_image(tmp_path):
    root = make_folder(tmp_path / "d")
    (root / "images" / "img0.png").unlink()
    report, found = problems(root)
    assert found == {("img0.png", "mask without image")}
    assert report.problems[0][0].endswith("masks/img0.png")


def test_size_mismatch(tmp_path):
    root = make_folder(tmp_path / "d")
    Image.fromarray(np.zeros((30, 32), np.uint8)).save(root / "masks" / "img1.png")
    report, found = problems(root)
    assert found == {("img1.png", "size 30x32 differs from image 32x32")}
    assert report.problems[0][0].endswith("masks/img1.png")


def test_unexpected_label_value(tmp_path):
    root = make_folder(tmp_path / "d")
    mask = np.array(Image.open(root / "masks" / "img0.png"))
    mask[20, 20] = 128  # an anti-aliased edge in a 0/255 dataset
    Image.fromarray(mask).save(root / "masks" / "img0.png")
    _, found = problems(root)
    assert found == {("img0.png", "unexpected label values [128] for binary masks")}


def test_label_value_beyond_num_classes(tmp_path):
    root = make_folder(tmp_path / "d", values=(0, 2))
    _, found = problems(root, num_classes=2, mask_kind="classes")
    assert {f for f, _ in found} == {"img0.png", "img1.png", "img2.png"}
    _, found = problems(root, num_classes=3)
    assert not found


def test_empty_mask(tmp_path):
    root = make_folder(tmp_path / "d")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(root / "masks" / "img2.png")
    report, found = problems(root)  # negative examples are normal: a warning, not a problem
    assert report.ok and [(w[0].split("/")[-1], w[1]) for w in report.warnings] == \
        [("img2.png", "empty mask (background only)")]
    _, found = problems(root, strict=True)
    assert found == {("img2.png", "empty mask")}
    assert check_dataset(root, allow_empty=True).ok and not check_dataset(root, allow_empty=True).warnings


def test_mixed_channel_counts(tmp_path):
    root = make_folder(tmp_path / "d")
    Image.fromarray(RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / "images" / "img1.png")
    _, found = problems(root)
    assert found == {("img1.png", "mixed channel counts: 3 channel(s), most images have 1")}


def test_single_folder_with_suffix_and_multimodal(tmp_path):
    root = tmp_path / "d"
    root.mkdir()
    for case in ("a", "b"):
        for m in range(2):
            Image.fromarray(RNG.integers(0, 256, (16, 16), dtype=np.uint8)).save(root / f"{case}_{m:04d}.png")
        Image.fromarray(np.eye(16, dtype=np.uint8)).save(root / f"{case}_mask.png")
    report = check_dataset(root)
    assert report.ok, report.format_table()
    assert report.stats["channels"] == [2] and report.stats["cases"] == 2


def test_raise_if_problems_lists_every_file(tmp_path):
    root = make_folder(tmp_path / "d")
    (root / "masks" / "img2.png").unlink()
    Image.fromarray(np.zeros((30, 32), np.uint8)).save(root / "masks" / "img1.png")
    with pytest.raises(DataError) as info:
        check_dataset(root).raise_if_problems()
    text = str(info.value)
    assert text.startswith(str(root)) and "2 problems" in text
    assert "images/img2.png" in text and "masks/img1.png" in text


def test_cli_broken_folder_exits_nonzero_naming_each_file(tmp_path):
    root = make_folder(tmp_path / "d", n=4, size=(48, 48))
    (root / "masks" / "img0.png").unlink()
    path = root / "images" / "img1.png"
    path.write_bytes(path.read_bytes()[:200])
    Image.fromarray(np.zeros((48, 48), np.uint8)).save(root / "masks" / "img2.png")
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(root / "masks" / "orphan.png")
    result = CliRunner().invoke(app, ["check-data", str(root)])
    assert result.exit_code == 1
    out = result.output + (result.stderr if result.stderr_bytes is not None else "")
    for name in ("images/img0.png", "images/img1.png", "masks/img2.png", "masks/orphan.png"):
        assert name in out
    result = CliRunner().invoke(app, ["check-data", str(root), "--json"])
    assert result.exit_code == 1
    payload = json.loads(result.stdout)
    assert len(payload["problems"]) == 3 and not payload["ok"]
    assert [w["file"] for w in payload["warnings"]] == ["masks/img2.png"]  # empty: a warning


def test_cli_on_written_dsb2018_prints_statistics(tmp_path):
    write_dataset("dsb2018-nuclei", tmp_path / "nuclei")
    result = CliRunner().invoke(app, ["check-data", str(tmp_path / "nuclei")])
    assert result.exit_code == 0, result.output
    assert "cases: 1 (2D)" in result.output and "512x512" in result.output
    assert "class 1:" in result.output and "no problems found" in result.output
    result = CliRunner().invoke(app, ["check-data", str(tmp_path / "nuclei"), "--json"])
    stats = json.loads(result.stdout)["stats"]
    instances = tifffile.imread(tmp_path / "nuclei" / "instances" / "dsb2018_nuclei.tif")
    assert stats["class_pixels"][1] == int((instances > 0).sum()) and stats["size_max"] == [512, 512]


def test_cli_separate_masks_option(tmp_path):
    root = make_folder(tmp_path / "d")
    result = CliRunner().invoke(app, ["check-data", str(root / "images"), "--masks", str(root / "masks")])
    assert result.exit_code == 0, result.output
