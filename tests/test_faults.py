"""Issue 12: nothing lost, right numbers, one clear message for every bad input.

Each test reproduces one fault-injection finding; the high-severity ones fail on the code before
the fix (run folder deleted before validation, any folder with a config.yaml wiped, objects scored
against merged connected components, background-only masks refused).
"""
from __future__ import annotations

import csv
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from unetkit.cli.main import app
from unetkit.data.checks import check_dataset
from unetkit.errors import ConfigError, DataError, TrainingError
from unetkit.io.atomic import atomic_path
from unetkit.training import TrainConfig
from unetkit.training.run import train
from unetkit.training.runfolder import MANIFEST, read_manifest

RNG = np.random.default_rng(12)
# plain SGD at an absurd rate: the second step of epoch 1 has a non-finite loss
DIVERGE = {"optim.lr": 1e38, "optim.name": "sgd", "optim.momentum": 0.0, "optim.nesterov": "false"}
SRC = Path(__file__).resolve().parents[1] / "src"


def make_folder(root: Path, n: int = 8, size=(32, 32), channels: int = 1, empty: tuple[int, ...] = ()) -> Path:
    """images/ + masks/ of n 8-bit PNGs, a bright square on noise in each mask (except `empty`)."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        mask = np.zeros(size, np.uint8)
        if i not in empty:
            mask[4 + i:14 + i, 6:18] = 1
        image = (RNG.integers(0, 60, size) + 150 * mask).astype(np.uint8)
        if channels == 3:
            image = np.stack([image, image // 2, 255 - image], axis=-1)
        Image.fromarray(image).save(root / "images" / f"img{i}.png")
        Image.fromarray(mask * 255).save(root / "masks" / f"img{i}.png")
    return root


def tiny(tmp_path: Path, images: Path, name: str = "run", **overrides) -> TrainConfig:
    cfg = TrainConfig().with_overrides([
        f"data.images={images}", "data.patch_size=[32,32]", "data.batch_size=2", "data.num_workers=0",
        "data.augmentation=none", "data.val_fraction=0.25", "model.kwargs.features=[4,8]", "epochs=1",
        "progress=quiet", "tensorboard=false", "overlays=0", f"out_dir={tmp_path / 'runs'}", f"name={name}",
    ])
    return cfg.with_overrides([f"{k}={v}" for k, v in overrides.items()])


def cli(*args: str, env: dict | None = None):
    """Run a verb in-process through the real entry point (the error boundary included)."""
    return CliRunner().invoke(app, list(args), env=env)


# ---- run folders (high) ---------------------------------------------------------------------------
@pytest.mark.slow  # four short training runs
def test_overwrite_keeps_the_old_run_until_the_new_one_has_started(tmp_path) -> None:
    data = make_folder(tmp_path / "data")
    first = train(tiny(tmp_path, data))
    old_id = read_manifest(first.run_dir)["run_id"]
    weights = (first.run_dir / "last.safetensors").read_bytes()
    # bad data: the old run must survive untouched (before the fix it was deleted first)
    with pytest.raises(DataError, match="not a folder"):
        train(tiny(tmp_path, tmp_path / "nonexist", overwrite="true"))
    assert read_manifest(first.run_dir)["run_id"] == old_id
    assert (first.run_dir / "last.safetensors").read_bytes() == weights
    # RGB images for a 1-channel model: refused before training, naming the file and the fix
    bad = make_folder(tmp_path / "rgb", channels=3)
    with pytest.raises(DataError, match=r"images/img0.png\s+has 3 channel\(s\) \(RGB\) but the model takes "
                                         r"in_channels=1; set --in-channels 3"):
        train(tiny(tmp_path, bad, overwrite="true"))
    assert read_manifest(first.run_dir)["run_id"] == old_id
    # a failure inside the first epoch (after the old run was moved aside): it is put back
    with pytest.raises(TrainingError, match="non-finite loss"):
        train(tiny(tmp_path, data, overwrite="true", **DIVERGE))
    assert read_manifest(first.run_dir)["run_id"] == old_id
    assert (first.run_dir / "last.safetensors").read_bytes() == weights
    # a good new run replaces it, and no aside copy is left over
    second = train(tiny(tmp_path, data, overwrite="true", seed=1))
    assert read_manifest(second.run_dir)["run_id"] != old_id
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["run"]


def test_overwrite_refuses_a_folder_unetkit_did_not_make(tmp_path) -> None:
    data = make_folder(tmp_path / "data")
    project = tmp_path / "runs" / "thesis"
    project.mkdir(parents=True)
    (project / "config.yaml").write_text("mine: true\n")  # looked like a run to the old code
    (project / "thesis.tex").write_text("years of work")
    with pytest.raises(ConfigError, match=f"not a unetkit run folder \\(no {MANIFEST}\\)"):
        train(tiny(tmp_path, data, name="thesis", overwrite="true"))
    assert (project / "thesis.tex").read_text() == "years of work"


def test_a_run_that_fails_before_its_first_checkpoint_leaves_nothing(tmp_path) -> None:
    data = make_folder(tmp_path / "data")
    with pytest.raises(TrainingError, match="non-finite loss.*No checkpoint had been written, so the new run folder was removed"):
        train(tiny(tmp_path, data, **DIVERGE))
    assert not (tmp_path / "runs" / "run").exists()
    result = train(tiny(tmp_path, data))  # the corrected re-run is not blocked
    assert (result.run_dir / MANIFEST).is_file()


def test_resume_does_not_depend_on_the_working_directory(tmp_path, monkeypatch) -> None:
    make_folder(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    cfg = tiny(tmp_path, Path("data"))
    result = train(cfg)
    saved = TrainConfig.from_yaml(result.run_dir / "config.yaml")
    assert Path(saved.data.images).is_absolute() and Path(saved.data.images) == (tmp_path / "data").resolve()


# ---- empty masks (high) --------------------------------------------------------------------------
def test_background_only_masks_train_with_a_warning_and_fail_only_when_strict(tmp_path, capsys) -> None:
    data = make_folder(tmp_path / "data", empty=(1,))
    with pytest.raises(DataError, match="empty mask"):
        train(tiny(tmp_path, data, name="strict", **{"data.strict": "true"}))
    result = train(tiny(tmp_path, data))  # refused before the fix
    assert (result.run_dir / "last.safetensors").is_file()
    assert "empty mask (background only)" in capsys.readouterr().err


# ---- evaluate --objects (high) -------------------------------------------------------------------
def test_evaluate_objects_uses_instance_labels_and_agrees_with_the_demo(tmp_path) -> None:
    from unetkit.data.io import read_image, write_mask
    from unetkit.datasets import load_dataset, write_dataset
    from unetkit.training.demo import otsu_mask, score

    folder = write_dataset("dsb2018-nuclei", tmp_path / "nuclei")
    image_file = next((folder / "images").iterdir())
    image = read_image(image_file)
    otsu = otsu_mask(image[0])
    (tmp_path / "pred").mkdir()
    write_mask(tmp_path / "pred" / f"{image_file.name.split('.')[0]}.png", otsu.astype(np.uint8)[None])
    result = cli("evaluate", str(tmp_path / "pred"), str(folder), "-o", str(tmp_path / "ev"), "--objects",
                 "--split", "--min-distance", "7", "--min-size", "20", "--no-hd95")
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())["objects"]
    truth = load_dataset("dsb2018-nuclei")[0].instances
    assert summary["true_objects"] == len(np.unique(truth)) - 1 == 125  # components merge them into fewer
    assert summary["ground_truth"].startswith("instance labels")
    demo = score(otsu, truth, min_size=20)  # the demo's scoring of the same prediction
    assert summary["f1"] == pytest.approx(demo["object_f1"]) and summary["pred_objects"] == demo["nuclei"]


# ---- one error boundary (medium) -----------------------------------------------------------------
@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    from unetkit.io.checkpoint import save_model
    from unetkit.models import create_model

    path = tmp_path_factory.mktemp("m") / "m.safetensors"
    save_model(create_model("unet", spatial_dims=2, in_channels=1, num_classes=1, features=[4, 8, 16]), path)
    return path


@pytest.mark.parametrize("args, message", [
    (["--overlap", "1.5"], r"overlap \(--overlap\) must be in \[0, 1\)"),
    (["--overlap", "-0.5"], r"overlap \(--overlap\) must be in \[0, 1\)"),
    (["--batch-size", "0"], r"batch size \(--batch-size\) must be at least 1"),
    (["--roi", "-5"], r"--roi: sizes must be positive"),
    (["--roi", "3"], r"smaller than the network's total stride \(4\)"),
    (["--threshold", "7"], r"threshold \(--threshold\) is a probability"),
    (["--min-size", "-3"], r"--min-size\) must be >= 0"),
    (["--roi", "256", "256"], r"256: no such file or folder \(a window size per axis is written --roi 256,256\)"),
    (["--tta", "true"], r"true: no such file or folder \(flags such as --tta take no value\)"),
])
def test_bad_predict_options_are_one_line_and_exit_1(model_file, tmp_path, args, message) -> None:
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(image)
    result = cli("predict", str(model_file), str(image), "-o", str(tmp_path / "out"), *args)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert __import__("re").search(message, result.output), result.output
    assert not (tmp_path / "out").exists()  # refused before any work


def test_help_shows_flags_without_a_value() -> None:
    result = cli("predict", "--help")
    assert "--tta " in result.output and "<bool>" not in result.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_a_message(model_file, tmp_path) -> None:
    result = cli("predict", str(model_file), str(tmp_path), "-o", str(tmp_path / "o"), "--device", "cuda")
    assert result.exit_code == 1 and "CUDA is not available" in result.output and "use --device cpu" in result.output


def test_images_smaller_than_the_network_stride_are_predicted(model_file) -> None:
    from unetkit.inference.predictor import Predictor

    predictor = Predictor.from_checkpoint(model_file, device="cpu")
    for shape in [(1, 1), (3, 3), (1, 300)]:
        pred = predictor.predict_array(np.random.default_rng(0).random((1, *shape), dtype=np.float32))
        assert pred.labels.shape == (1, *shape) and np.isfinite(pred.probabilities).all()


def test_small_images_and_wrong_channels_are_refused_before_training(tmp_path) -> None:
    data = make_folder(tmp_path / "small", size=(3, 3), empty=tuple(range(8)))
    with pytest.raises(DataError, match=r"img0.png\s+size 3x3 is smaller than the model's smallest input \(4"):
        train(tiny(tmp_path, data, **{"model.kwargs.features": "[4,8,16]"}))
    assert not (tmp_path / "runs" / "run").exists()


def test_model_files_that_cannot_be_rebuilt_name_the_file(model_file, tmp_path) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(model_file), framework="pt") as f:
        meta, state = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    for arch, config, expect in [("unett", meta["config"], "unknown model 'unett'"),
                                 ("unet", json.dumps({"nosuch": 1}), "has no option 'nosuch'")]:
        data = make_folder(tmp_path / f"data-{arch}", n=1)
        bad = tmp_path / f"{arch}.safetensors"
        save_file(state, str(bad), metadata={**meta, "arch": arch, "config": config})
        for verb in (["predict", str(bad), str(tmp_path), "-o", str(tmp_path / "o")],
                     ["evaluate", str(bad), str(data), "-o", str(tmp_path / "e")],
                     ["export", str(bad), "--format", "onnx", "--out", str(tmp_path / "x.onnx")]):
            result = cli(*verb)
            assert result.exit_code == 1 and f"{bad}: cannot rebuild" in result.output and expect in result.output
    ckpt = tmp_path / "best.pt"
    torch.save({"model": {}}, ckpt)
    result = cli("predict", str(ckpt), str(tmp_path), "-o", str(tmp_path / "o"))
    assert result.exit_code == 1 and "is a training checkpoint" in result.output and "best.safetensors" in result.output


@pytest.mark.parametrize("args, message", [
    (["train", "--model", "unett"], "unknown model 'unett'; did you mean 'unet'?"),
    (["train", "--loss", "dicee"], "unknown loss 'dicee'; did you mean 'dice'?"),
    (["train", "--set", "model.kwargs.nosuch=1"], "model 'unet' has no option 'nosuch'"),
    (["train", "--epochs", "-1"], "'epochs' must be at least 1, got -1"),
    (["train", "--progress", "fancy"], "'progress' must be bar, quiet or json"),
    (["models", "--dims", "5"], "--dims: must be in [2, 3], got 5"),
    (["benchmark", "unet", "--size", "0"], "--size: must be >= 1, got 0"),
])
def test_bad_settings_fail_before_any_work(tmp_path, monkeypatch, args, message) -> None:
    monkeypatch.chdir(tmp_path)
    extra = ["--dataset", "dsb2018-nuclei"] if args[0] == "train" else []
    result = cli(*args, *extra)
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()


def test_disk_full_names_the_file(tmp_path, monkeypatch) -> None:
    from unetkit.training.state import save_training_state

    def full(*a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    monkeypatch.setattr(torch, "save", full)
    target = tmp_path / "checkpoints" / "last.pt"
    with pytest.raises(OSError) as info:
        save_training_state(target, {"x": 1})
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    assert list(target.parent.iterdir()) == []  # no temporary file left
    from unetkit.cli.common import describe_error

    message, code = describe_error(info.value)
    assert code == 1 and message.startswith(f"error: {target}: could not write it: no space left on device")

    def enospc(path, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    from PIL import Image as PILImage

    from unetkit.data import io as data_io
    monkeypatch.setattr(PILImage.Image, "save", enospc)
    with pytest.raises(OSError, match="no space left") as info:
        data_io.write_mask(tmp_path / "masks" / "a.png", np.zeros((1, 4, 4), np.uint8))
    assert info.value.filename == str(tmp_path / "masks" / "a.png")


def test_debug_shows_the_traceback(model_file, tmp_path) -> None:
    result = CliRunner().invoke(app, ["predict", str(model_file), "x", "-o", str(tmp_path), "--overlap", "2"],
                                env={"UNETKIT_DEBUG": "1"})
    assert isinstance(result.exception, ConfigError)


# ---- files, checks, outputs (medium) -------------------------------------------------------------
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_writes_respect_the_umask(tmp_path, umask) -> None:
    old = os.umask(umask)
    try:
        with atomic_path(tmp_path / "f.txt") as tmp:
            tmp.write_text("x")
        with open(tmp_path / "plain.txt", "w") as f:  # what an ordinary open() gives
            f.write("x")
    finally:
        os.umask(old)
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == (tmp_path / "plain.txt").stat().st_mode & 0o777
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o666 & ~umask


def _nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(array, affine), str(path))


@pytest.mark.parametrize("change, expect", [
    (lambda a: a @ np.diag([-1, 1, 1, 1]), "orientation LAS vs the image's RAS"),
    (lambda a: a @ np.diag([1, 1, 2, 1]), "spacing 1x1x2 vs the image's 1x1x1"),
    (lambda a: a + np.pad(np.array([[100.0], [0], [0]]), ((0, 1), (3, 0))), "origin shifted by 100 mm"),
    (lambda a: a + 1e-6, None),
])
def test_nifti_label_geometry_is_compared_with_its_image(tmp_path, change, expect) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    image = RNG.random((8, 8, 4)).astype(np.float32)
    label = np.zeros((8, 8, 4), np.uint8)
    label[2:5, 2:5, 1:3] = 1
    _nifti(tmp_path / "images" / "c.nii.gz", image, np.eye(4))
    _nifti(tmp_path / "masks" / "c.nii.gz", label, change(np.eye(4)))
    report = check_dataset(tmp_path, spatial_dims=3)
    texts = [p for _, p in report.problems]
    if expect is None:
        assert report.ok, texts
    else:
        assert len(texts) == 1 and "label geometry differs from its image" in texts[0] and expect in texts[0]


def test_16_bit_two_valued_masks_are_binary(tmp_path) -> None:
    make_folder(tmp_path)
    for f in (tmp_path / "masks").iterdir():
        mask = np.asarray(Image.open(f)) > 0
        Image.fromarray((mask * 65535).astype(np.uint16)).save(f)  # as Fiji saves them
    report = check_dataset(tmp_path)
    assert report.ok and report.stats["mask_kind"] == "binary" and report.stats["num_classes"] == 2
    assert len(report.format_stats().splitlines()) < 12


def test_overlay_previews_have_bounded_size_and_show_the_truth(tmp_path, monkeypatch) -> None:
    from unetkit.inference import overlay

    seen = []
    real = overlay.display_image
    monkeypatch.setattr(overlay, "display_image", lambda image, *a, **k: seen.append(image.shape) or real(image))
    big = np.zeros((1, 4000, 3000), np.uint16)
    big[:, :, 1500:] = 1000
    labels = np.zeros((4000, 3000), np.uint8)
    labels[:, :1500] = 1
    overlay.overlay_figure(big, labels, tmp_path / "o.png", truth=labels, max_side=256)
    assert seen == [(1, 250, 188)]  # drawn from a preview (factor 16) of at most 256 pixels a side, not 12 Mpx
    small_image = overlay.downsample_image(big, 16)
    assert small_image[0, 0, 0] == 0 and small_image[0, 0, -1] == 1000  # area means of the blocks
    votes = np.array([[1, 1, 2, 2], [1, 0, 2, 0]])
    assert overlay.downsample_labels(votes, 2).tolist() == [[1, 2]]  # the majority of each 2x2 block
    assert overlay.downsample_labels(np.array([[0, 2], [2, 0]]), 2).tolist() == [[0]]  # ties: the lower class


def test_predict_measure_refuses_an_existing_output_before_any_work(model_file, tmp_path) -> None:
    images = tmp_path / "img"
    images.mkdir()
    for name in "ab":
        Image.fromarray(RNG.integers(0, 255, (24, 24), dtype=np.uint8)).save(images / f"{name}.png")
    out = tmp_path / "out"
    assert cli("predict", str(model_file), str(images / "a.png"), "-o", str(out), "--measure").exit_code == 0
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    result = cli("predict", str(model_file), str(images), "-o", str(out), "--measure")
    assert result.exit_code == 1 and "a.png exists" in result.output
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before  # b was not predicted either
    assert cli("predict", str(model_file), str(images / "b.png"), "-o", str(out), "--measure").exit_code == 0
    with open(out / "counts.csv") as f:
        listed = sorted(row["image"] for row in csv.DictReader(f))
    assert listed == sorted(p.name for p in (out / "masks").iterdir()) == ["a.png", "b.png"]


def test_curves_leave_counts_off_the_metric_axis() -> None:
    from unetkit.training.artifacts import curve_metric_keys

    history = [{"epoch": 1, "val_dice": 0.5, "val_dice_std": 0.1, "val_num_images": 12, "val_iou": 0.4,
                "val_hd95": 7.0}]
    assert curve_metric_keys(history) == ["val_dice", "val_iou"]


def test_divergence_is_warned_about(tmp_path, capsys) -> None:
    from unetkit.training.trainer import Trainer

    data = make_folder(tmp_path / "data")
    fake = Trainer.__new__(Trainer)  # the rule itself, on a known history
    fake.history, fake.warnings = [{"epoch": 1, "train_loss": 4e10}], []
    fake._initial_loss = 0.7  # the first batch: what an exploding first epoch is compared with
    fake.cfg, fake.dist = tiny(tmp_path, data), type("D", (), {"is_main": True})()
    fake._check_divergence({"epoch": 2, "train_loss": 2e11})
    assert fake.warnings and "training is diverging" in capsys.readouterr().err


# ---- signals (medium): a real process, a real SIGINT ----------------------------------------------
@pytest.mark.slow  # a real process: torch import + first epoch
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_training_cleanly_with_exit_130(tmp_path, sig) -> None:
    data = make_folder(tmp_path / "data")
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    cmd = [sys.executable, "-m", "unetkit.cli.main", "train", "--images", str(data), "--patch-size", "32,32",
           "--batch-size", "2", "--features", "4,8", "--epochs", "100000", "--progress", "quiet",
           "--augmentation", "none", "--out-dir", str(tmp_path / "runs"), "--name", "run",
           "--set", "data.num_workers=0", "--set", "tensorboard=false", "--set", "overlays=0"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ckpt = tmp_path / "runs" / "run" / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 120
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Exception ignored" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("stopped at epoch ") and \
        last.endswith(f"continue with `unetkit train --resume {tmp_path / 'runs' / 'run'}`")
    epoch = int(last.split("stopped at epoch ")[1].split(";")[0])
    state = torch.load(ckpt, weights_only=True)
    assert state["epoch"] == epoch  # the checkpoint is the epoch the message names: nothing half-done
    assert not list((tmp_path / "runs" / "run").rglob("*.tmp"))


def test_unsynced_batchnorm_under_ddp_is_warned_about(tmp_path, capsys) -> None:
    from unetkit.models import create_model
    from unetkit.training.trainer import Trainer

    fake = Trainer.__new__(Trainer)
    fake.warnings, fake.cfg = [], tiny(tmp_path, tmp_path)
    fake.dist = type("D", (), {"is_main": True, "enabled": True, "world_size": 2})()
    fake.device = torch.device("cpu")
    fake.model = create_model("unet", spatial_dims=2, in_channels=1, num_classes=1, features=[4, 8])
    fake._warn_unsynced_batchnorm()
    assert "BatchNorm statistics are computed per process" in capsys.readouterr().err
    fake.warnings, fake.model = [], create_model("unet", spatial_dims=2, in_channels=1, num_classes=1,
                                                 features=[4, 8], norm="instance")
    fake._warn_unsynced_batchnorm()
    assert not fake.warnings


@pytest.mark.slow
def test_fault_injection_script_runs_a_subset_without_tracebacks() -> None:
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "fault_injection.py"
    only = "predict --overlap 1.5,disk full while predicting,check-data: 16-bit,models --dims 5"
    run = subprocess.run([sys.executable, str(script), "--only", only], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(SRC)})
    assert run.returncode == 0, run.stdout + run.stderr
    rows = run.stdout.strip().splitlines()[1:]
    assert len(rows) == 4 and all(r.endswith(" | yes") for r in rows) and "Traceback" not in run.stderr


@pytest.mark.parametrize("args, says", [(["synth"], "No such command 'synth'"),
                                        (["train", "--bogus"], "No such option: --bogus")])
def test_a_usage_mistake_gets_clicks_usage_message_not_a_bug_report(args, says) -> None:
    # Typer >= 0.16 vendors click: the boundary took its usage errors for bugs in unetkit (exit 1,
    # "unexpected UsageError ... report it"). They are the user's mistake: click's message, exit 2.
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert says in result.output
    assert "a bug in unetkit" not in result.output
