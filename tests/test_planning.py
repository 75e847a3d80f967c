"""Planning: the dataset fingerprint (values, modality, cache), nnU-Net's rules, the plan as a
TrainConfig, `unetkit plan`, and `unetkit train --images DIR` planning by default."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import yaml
from scipy import ndimage as ndi
from typer.testing import CliRunner

from unetkit.cli.main import app
from unetkit.data.io import VolumeMeta, write_image, write_mask
from unetkit.errors import ConfigError
from unetkit.planning import dataset_fingerprint, parse_budget, parse_memory, plan
from unetkit.planning import fingerprint as fpmod
from unetkit.planning.planner import nnunet_patch, pools_for, target_spacing, unet_flops
from unetkit.training import TrainConfig


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("UNETKIT_CACHE_DIR", str(tmp_path / "cache"))


def _rgb_folder(root, n: int = 3, size=(40, 48)):
    """RGB images with 3-class masks: squares of class 1 and 2 (known count and size)."""
    rng = np.random.default_rng(1)
    for i in range(n):
        mask = np.zeros(size, np.uint8)
        mask[4:12, 4:12] = 1  # 64 px
        mask[20:30, 30:40] = 2  # 100 px
        if i == 0:
            mask[30:34, 5:9] = 1  # a second class-1 object (16 px) in the first image
        image = np.stack([rng.integers(0, 100, size) + 80 * (mask > 0) for _ in range(3)]).astype(np.uint8)
        write_image(root / "images" / f"im{i}.png", image)
        write_mask(root / "masks" / f"im{i}.png", mask)


def _ct_folder(root, n: int = 2):
    rng = np.random.default_rng(2)
    for i in range(n):
        image = rng.normal(-800, 50, (6, 24, 24))
        mask = np.zeros((6, 24, 24), np.uint8)
        mask[2:4, 8:16, 8:16] = 1
        image[mask > 0] = rng.normal(40 + 10 * i, 20, int(mask.sum()))
        meta = VolumeMeta(spacing=(4.0, 0.8, 0.8))
        write_image(root / "images" / f"ct{i}.nii.gz", image.astype(np.int16)[None], meta)
        write_mask(root / "masks" / f"ct{i}.nii.gz", mask, meta)
    return root


def test_fingerprint_values_against_numpy(tmp_path) -> None:
    _rgb_folder(tmp_path / "d")
    fp = dataset_fingerprint(tmp_path / "d")
    from PIL import Image

    images = [np.asarray(Image.open(tmp_path / "d" / "images" / f"im{i}.png")) for i in range(3)]
    masks = [np.asarray(Image.open(tmp_path / "d" / "masks" / f"im{i}.png")) for i in range(3)]
    fg = np.concatenate([im[m > 0] for im, m in zip(images, masks)])  # (N, 3)
    assert fp.channels == 3 and fp.modality == "rgb" and fp.spatial_dims == 2 and fp.num_classes == 3
    np.testing.assert_allclose(fp.intensity_foreground["mean"], fg.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(fp.intensity_foreground["std"], fg.std(axis=0), rtol=1e-6)
    counts = np.bincount(np.concatenate([m.ravel() for m in masks]), minlength=3)
    np.testing.assert_allclose(fp.class_frequency, counts / counts.sum())
    # objects: 3 in the first image, 2 in the others; sizes 16, 64 x3, 100 x3
    assert fp.objects["per_image_min"] == 2 and fp.objects["per_image_max"] == 3
    assert fp.objects["size_median"] == 64 and fp.objects["size_min"] == 16
    assert [c["shape"] for c in fp.cases] == [[40, 48]] * 3 and fp.anisotropy == 1.0


def test_fingerprint_detects_ct_and_is_cached_until_a_file_changes(tmp_path, monkeypatch) -> None:
    root = _ct_folder(tmp_path / "ct")
    fp = dataset_fingerprint(root)
    assert fp.modality == "ct" and fp.modality_source == "detected"
    assert fp.spacing_median == pytest.approx([4.0, 0.8, 0.8]) and fp.anisotropy == pytest.approx(5.0)
    assert dataset_fingerprint(root, modality="mr").modality == "mr"  # given beats detected
    calls = []
    original = fpmod._compute
    monkeypatch.setattr(fpmod, "_compute", lambda *a, **k: calls.append(1) or original(*a, **k))
    dataset_fingerprint(root)
    assert calls == []  # cached: nothing read again
    path = root / "images" / "ct0.nii.gz"
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    dataset_fingerprint(root)
    assert calls == [1]  # a changed file means a new fingerprint


def test_nnunet_rules() -> None:
    # anisotropic spacing with few voxels along it -> the 10th percentile of that axis
    fp = fpmod.Fingerprint(root="x", spatial_dims=3, channels=1, dtypes=["int16"], cases=[
        {"name": f"c{i}", "shape": [20, 256, 256], "spacing": [s, 0.7, 0.7]} for i, s in enumerate([3, 5, 5, 5, 6])],
        shape_median=[20, 256, 256], spacing_median=[5, 0.7, 0.7], spacing_p10=[3.8, 0.7, 0.7], anisotropy=7.1,
        intensity={}, intensity_foreground={}, modality="mr", modality_source="detected", mask_kind="binary",
        num_classes=2, class_frequency=[1.0, 0.0], class_images=[5, 0], objects={})
    assert target_spacing(fp) == pytest.approx([float(np.percentile([3, 5, 5, 5, 6], 10)), 0.7, 0.7])
    assert pools_for([20, 256, 256], 3) == 2  # 20 -> 10 -> 5: every axis keeps >= 4 px
    assert pools_for([512, 512], 2) == 6  # capped at 7 levels
    patch = nnunet_patch([1000, 900], [1.0, 1.0], 2)
    assert all(p % 2 ** pools_for(patch, 2) == 0 for p in patch) and patch[0] <= 1000 and patch[1] <= 900


def test_budget_and_memory_parsing() -> None:
    assert parse_budget("10m") == 10 and parse_budget("90s") == 1.5 and parse_budget("1.5h") == 90
    assert parse_budget(None) is None and parse_memory("8G") == 8 * 2**30 and parse_memory("512M") == 512 * 2**20
    with pytest.raises(ConfigError, match="budget 'soon'"):
        parse_budget("soon")


def test_plan_is_a_plain_trainconfig_from_the_data(tmp_path) -> None:
    _rgb_folder(tmp_path / "d")
    p = plan(tmp_path / "d", budget="5m", device="cpu", probe=False)
    cfg = p.config
    assert cfg.model.in_channels == 3 and cfg.model.num_classes == 3  # RGB in, 3 classes out: from the data
    assert cfg.model.spatial_dims == 2 and cfg.model.kwargs["deep_supervision"] is True
    depth = len(cfg.model.kwargs["features"])
    assert all(s % 2 ** (depth - 1) == 0 for s in cfg.data.patch_size)
    assert cfg.data.samples_per_epoch % cfg.data.batch_size == 0 and cfg.early_stop_patience is None
    assert cfg.max_minutes == 5 and cfg.data.normalize == {"mode": "zscore"}
    assert "why" in p.table() and "patch" in p.table()
    saved = p.save(tmp_path / "plan.yaml")
    assert TrainConfig.from_yaml(saved) == cfg  # the table is a YAML comment; the rest a TrainConfig
    with pytest.raises(FileExistsError):
        p.save(tmp_path / "plan.yaml")


def test_ct_plan_normalises_with_foreground_statistics(tmp_path) -> None:
    root = _ct_folder(tmp_path / "ct")
    p = plan(root, budget="5m", device="cpu", probe=False)
    spec = p.config.data.normalize
    fp = p.fingerprint
    assert spec["mode"] == "dataset" and spec["mean"] == fp.intensity_foreground["mean"]
    assert spec["clip"] == [[fp.intensity_foreground["p0.5"][0], fp.intensity_foreground["p99.5"][0]]]
    assert p.config.model.spatial_dims == 3 and p.config.model.kwargs["norm"] == "instance"


def test_plan_cli_writes_yaml(tmp_path) -> None:
    _rgb_folder(tmp_path / "d")
    result = CliRunner().invoke(app, ["plan", str(tmp_path / "d"), "--budget", "2m", "--no-probe",
                                      "--out", str(tmp_path / "p.yaml")])
    assert result.exit_code == 0, result.output
    assert "fingerprint: 3 case(s), 2D, 3 channel(s)" in result.output and "in_channels" in result.output
    assert yaml.safe_load((tmp_path / "p.yaml").read_text())["model"]["in_channels"] == 3
    bad = CliRunner().invoke(app, ["plan", str(tmp_path / "d"), "--modality", "xray", "--no-probe"])
    assert bad.exit_code == 1 and "unknown modality 'xray'" in bad.output


def test_unet_flops_match_torch_flop_counter() -> None:
    from unetkit.models.summary import model_flops

    for features, patch, classes in (([8, 16, 32], [64, 48], 1), ([4, 8, 16], [16, 32, 24], 3)):
        counted = model_flops("unet", (2, 3, *patch), spatial_dims=len(patch), in_channels=3, num_classes=classes,
                              features=features)[1]
        assert unet_flops(features, patch, 3, classes, batch=2) == counted


def test_probe_times_a_real_training_step() -> None:
    from unetkit.planning.probe import time_step

    assert 0 < time_step(2, 1, 1, [4, 8], [16, 16], 2, steps=1) < 60


@pytest.mark.slow
def test_train_with_images_only_plans_then_applies_overrides(tmp_path, monkeypatch) -> None:
    import unetkit.planning.planner as planner

    monkeypatch.setattr(planner, "_time", lambda c, *a, **k: 0.01 * c["flops"] / 1e8)  # no probing in this test
    _rgb_folder(tmp_path / "d", n=4)
    result = CliRunner().invoke(app, [
        "train", "--images", str(tmp_path / "d"), "--budget", "2m", "--epochs", "1", "--out-dir", str(tmp_path),
        "--name", "auto", "--progress", "quiet", "--set", "data.samples_per_epoch=4", "--set", "data.batch_size=2",
        "--set", "data.num_workers=0", "--set", "model.kwargs.features=[4,8]", "--set", "tensorboard=false"])
    assert result.exit_code == 0, result.output
    assert "setting" in result.output and "why" in result.output  # the plan was printed
    cfg = TrainConfig.from_yaml(tmp_path / "auto" / "config.yaml")
    assert cfg.model.in_channels == 3 and cfg.model.num_classes == 3 and cfg.epochs == 1
    assert cfg.model.kwargs["features"] == [4, 8] and cfg.max_minutes == 2
    history = json.loads((tmp_path / "auto" / "report.json").read_text())
    assert history["validation"] is True and history["best_epoch"] == 1


def test_fast_device_gets_nnunet_scale_slow_device_gets_small_patches(tmp_path, monkeypatch) -> None:
    import unetkit.planning.planner as planner

    _rgb_folder(tmp_path / "d", n=4, size=(256, 256))
    speed = {"flops_per_s": 0.0}

    def fake_time(c, *args, **kwargs):  # a device of a given speed, 10 ms per step of overhead
        c["augment_s"] = 0.0
        return 0.01 + c["flops"] / speed["flops_per_s"]

    monkeypatch.setattr(planner, "_time", fake_time)
    speed["flops_per_s"] = 1e14  # a big GPU, an hour
    fast = plan(tmp_path / "d", budget="60m", device="cpu", memory="64G")
    speed["flops_per_s"] = 2e9  # a slow, busy CPU, 3 minutes
    slow = plan(tmp_path / "d", budget="3m", device="cpu", memory="64G")
    nnunet = nnunet_patch([256, 256], [1.0, 1.0], 2)
    assert fast.config.data.patch_size == nnunet and fast.config.model.kwargs["features"][0] == 32
    assert np.prod(slow.config.data.patch_size) < np.prod(nnunet)
    assert slow.config.model.kwargs["features"][0] < 32
    for p in (fast, slow):  # the iterations fill the budget at the timed speed, not more
        chosen = next(c for c in p.candidates if c["patch"] == p.config.data.patch_size
                      and c["features"] == p.config.model.kwargs["features"])
        assert p.config.epochs * p.config.data.samples_per_epoch / p.config.data.batch_size * chosen["step_s"] \
            <= 60 * p.budget_minutes


def test_the_schedule_comes_from_a_measured_step_of_the_chosen_configuration(tmp_path, monkeypatch) -> None:
    """The two candidates timed first run at the FLOPs rate; every other one 3x faster (as bf16
    autocast where its probe chooses it, or channels-last). The first check of the chosen one moves
    the choice to a larger candidate; its step time must be measured too before the schedule is
    derived from it (a prediction left the cosine cut off by the budget, or a third of it unused)."""
    import unetkit.planning.planner as planner

    _rgb_folder(tmp_path / "d", n=4, size=(256, 256))
    first: list[int] = []

    def fake_time(c, *args, **kwargs):
        c["augment_s"] = 0.0
        if id(c) not in first and len(first) < 2:
            first.append(id(c))
        return 0.01 + c["flops"] / 1e10 * (1.0 if id(c) in first else 1 / 3)

    monkeypatch.setattr(planner, "_time", fake_time)
    p = plan(tmp_path / "d", budget="10m", device="cpu", memory="64G")
    chosen = next(c for c in p.candidates if c["patch"] == p.config.data.patch_size
                  and c["features"] == p.config.model.kwargs["features"] and c["batch"] == p.config.data.batch_size)
    assert chosen.get("measured"), p.table()
    assert abs(chosen["compute_s"] - (0.01 + chosen["flops"] / 3e10)) < 1e-9
    assert "measured on cpu" in next(r for r in p.table().splitlines() if r.startswith("step time"))


def test_step_timing_runs_in_the_layout_and_precision_the_trainer_will_choose(monkeypatch) -> None:
    """time_step asks the same probes as the Trainer: the layout probe's answer (not 'channels-last
    for 2D') is the layout the precision probe is asked about and the step is timed in."""
    import unetkit.export.optimize as optimize
    from unetkit.planning.probe import time_step

    for dims, layout in ((2, False), (3, True)):  # against the old rule (channels-last for 2D only)
        asked: list = []
        monkeypatch.setattr(optimize, "probe_channels_last",
                            lambda model, example, **k: asked.append(example) or layout)
        monkeypatch.setattr(optimize, "probe_cpu_autocast",
                            lambda model, example, train=True, channels_last=False:
                            asked.append(channels_last) or False)
        assert time_step(dims, 1, 1, [4, 8], [16] * dims, 4, steps=1) > 0
        assert asked == [(2, 1, *[16] * dims), layout]


@pytest.mark.parametrize("supported,faster,row", [(True, True, "bf16 mixed"), (True, False, "fp32"),
                                                  (False, True, "fp32")])
def test_plan_states_the_precision_the_trainer_will_use(tmp_path, monkeypatch, supported, faster, row) -> None:
    import unetkit.export.optimize as optimize
    import unetkit.planning.planner as planner

    monkeypatch.setattr(planner, "_time", lambda c, *a, **k: 0.01 * c["flops"] / 1e8)  # no step timing here
    monkeypatch.setattr(optimize, "cpu_bf16_supported", lambda: supported)
    asked: list = []

    def probe(model, example, train=True, channels_last=False):
        asked.append((model.unetkit_config["features"], tuple(example)))
        return faster

    monkeypatch.setattr(optimize, "probe_cpu_autocast", probe)
    monkeypatch.setattr(optimize, "probe_channels_last", lambda model, example, **k: True)
    _rgb_folder(tmp_path / "d")
    p = plan(tmp_path / "d", budget="5m", device="cpu")
    line = next(r for r in p.table().splitlines() if r.startswith("precision"))
    assert row in line
    cfg = p.config  # the probe saw the model and batch the Trainer will build
    assert asked == ([(cfg.model.kwargs["features"], (min(cfg.data.batch_size, 2), 3, *cfg.data.patch_size))]
                     if supported else [])
