"""Sharded prediction: `torchrun --nproc_per_node 2 -m unetkit.cli.main predict ...` (gloo, CPU) writes
the same masks, byte for byte, and the same counts.csv as one process; `--resume` skips finished images."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import unetkit
from unetkit.data.io import write_image
from unetkit.datasets import load_dataset
from unetkit.inference.predictor import Predictor

EXTRA = {"preprocess": {"mode": "percentile", "lower": 1.0, "upper": 99.8}, "patch_size": [64, 64],
         "class_names": ["background", "nucleus"]}


def _inputs(folder: Path, count: int = 5) -> list[Path]:
    image = load_dataset("dsb2018-nuclei").image
    folder.mkdir()
    return [write_image(folder / f"img{i}.png", image[:, 60 * i:60 * i + 70 + 4 * i, 40 * i:40 * i + 90])
            for i in range(count)]


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    torch_model = unetkit.create_model("unet", features=(4, 8), num_classes=1)
    return unetkit.save_model(torch_model, tmp_path / "m.safetensors", extra=EXTRA)


def _predict(args: list[str], cwd: Path, nproc: int = 1) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    head = [sys.executable, "-m", "unetkit.cli.main"] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
        "-m", "unetkit.cli.main"]
    return subprocess.run(head + ["predict", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_two_ranks_match_one_rank_and_resume(model_file: Path, tmp_path: Path) -> None:
    images = _inputs(tmp_path / "images")
    common = [str(model_file), str(tmp_path / "images"), "--measure", "--split", "--no-overlay"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun process (OMP_NUM_THREADS=1)
    try:  # one process, in this one: the same code as `unetkit predict` without torchrun
        Predictor.from_checkpoint(model_file, device="cpu").predict_paths(
            tmp_path / "images", tmp_path / "one", measure=True, split=True, overlay=False)
    finally:
        torch.set_num_threads(threads)
    two = _predict(common + ["--out", str(tmp_path / "two")], tmp_path, nproc=2)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "5 image(s) predicted" in two.stdout and "by 2 processes" in two.stdout
    a, b = _files(tmp_path / "one"), _files(tmp_path / "two")
    masks = [k for k in a if k.startswith("masks/")]
    assert len(masks) == 5 and sorted(a) == sorted(b)  # every output once, no strays, no temporaries
    for key in masks + [k for k in a if k.endswith(".csv")]:
        assert a[key] == b[key], key  # masks, per-object tables and the combined counts.csv
    assert b["counts.csv"].decode().splitlines()[1:] == [
        f"img{i}.png,{row.split(',', 1)[1]}" for i, row in enumerate(a["counts.csv"].decode().splitlines()[1:])]

    # resume: one mask lost (an interrupted run) and one new, unreadable image
    (tmp_path / "two" / "masks" / "img3.png").unlink()
    (tmp_path / "images" / "zz_broken.png").write_bytes(images[0].read_bytes()[:200])
    again = _predict(common + ["--out", str(tmp_path / "two"), "--resume", "--skip-errors"], tmp_path, nproc=2)
    assert again.returncode == 1  # the broken image is reported ...
    assert "zz_broken.png: unreadable or truncated" in again.stderr
    assert "1 image(s) predicted" in again.stdout and "(4 already done, skipped)" in again.stdout
    assert _files(tmp_path / "two") == b  # ... and everything else is as before, counts.csv included


def test_resume_skips_finished_images_in_process(model_file: Path, tmp_path: Path) -> None:
    _inputs(tmp_path / "images", count=3)
    predictor = Predictor.from_checkpoint(model_file, device="cpu")
    first = predictor.predict_paths(tmp_path / "images", tmp_path / "out", measure=True, overlay=False)
    counts = (tmp_path / "out" / "counts.csv").read_text()
    with pytest.raises(FileExistsError):  # without --resume existing outputs are kept, and it says so
        predictor.predict_paths(tmp_path / "images", tmp_path / "out", measure=True, overlay=False)
    (tmp_path / "out" / "objects" / "img1.csv").unlink()  # img1 half done
    stamp = (tmp_path / "out" / "masks" / "img0.png").stat().st_mtime_ns
    again = predictor.predict_paths(tmp_path / "images", tmp_path / "out", measure=True, overlay=False, resume=True)
    assert [r.get("skipped", False) for r in again] == [True, False, True]
    assert [r["counts"] for r in again] == [r["counts"] for r in first]
    assert (tmp_path / "out" / "counts.csv").read_text() == counts
    assert (tmp_path / "out" / "masks" / "img0.png").stat().st_mtime_ns == stamp  # not rewritten
