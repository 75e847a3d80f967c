"""Trainer: config round trip, schedules, run folder, resume bit-exact, clear failures."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from unetkit.errors import ConfigError, DataError, Interrupted, TrainingError
from unetkit.training import Callback, TrainConfig, Trainer, train
from unetkit.training.config import ScheduleConfig
from unetkit.training.schedule import LRSchedule


def tiny_config(tmp_path, name: str = "run", **overrides) -> TrainConfig:
    cfg = TrainConfig().with_overrides([
        "data.dataset=dsb2018-nuclei", "data.patch_size=[48,48]", "data.batch_size=4",
        "data.samples_per_epoch=8", "data.num_workers=0", "data.augmentation=light",
        "model.num_classes=1", "model.kwargs.features=[4,8,16]", "optim.lr=3e-3", "epochs=3",
        "progress=quiet", "tensorboard=false", "overlays=1", f"out_dir={tmp_path}", f"name={name}",
    ])
    return cfg.with_overrides([f"{k}={v}" for k, v in overrides.items()])


def test_config_yaml_round_trip_and_unknown_fields(tmp_path) -> None:
    cfg = tiny_config(tmp_path, **{"schedule.name": "cosine", "optim.lr": "2e-4"})
    path = tmp_path / "run.yaml"
    cfg.to_yaml(path)
    assert TrainConfig.from_yaml(path) == cfg
    assert cfg.optim.lr == 2e-4
    data = yaml.safe_load(path.read_text())
    data["optim"]["lrr"] = 1
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"run.yaml: unknown field\(s\) 'lrr' in 'optim'"):
        TrainConfig.from_yaml(path)
    with pytest.raises(ConfigError, match="'epochs' expects int"):
        TrainConfig.from_dict({"epochs": "many"})


def test_warmup_then_cosine_follows_the_formula() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = LRSchedule(opt, ScheduleConfig(name="cosine", warmup_epochs=1), steps_per_epoch=10, epochs=5)
    lrs = [sched.lr]
    for _ in range(49):
        sched.step()
        lrs.append(sched.lr)
    assert lrs[:10] == pytest.approx([(i + 1) / 10 for i in range(10)])
    for step in range(10, 50):
        progress = (step - 10) / 40
        assert lrs[step] == pytest.approx(0.5 * (1 + math.cos(math.pi * progress)))


def test_plateau_reduces_after_patience() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = LRSchedule(opt, ScheduleConfig(name="plateau", patience=2, factor=0.5), 10, 10)
    for value in [0.5, 0.6, 0.6, 0.6]:
        sched.validation_result(value, higher_is_better=True)
    assert sched.lr == 1.0
    sched.validation_result(0.6, higher_is_better=True)
    assert sched.lr == 0.5


def test_training_lowers_the_loss_and_fills_the_run_folder(tmp_path) -> None:
    result = train(tiny_config(tmp_path, epochs=4))
    run = result.run_dir
    losses = [row["train_loss"] for row in result.history]
    assert losses[-1] < losses[0]
    for name in ["config.yaml", "metrics.csv", "curves.png", "report.json", "best.safetensors",
                 "last.safetensors", "checkpoints/last.pt", "checkpoints/best.pt"]:
        assert (run / name).is_file(), name
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len((run / "metrics.csv").read_text().strip().splitlines()) == 1 + 4
    report = json.loads((run / "report.json").read_text())
    assert report["epochs"] == 4 and report["monitor"] == "dice"
    assert 0 <= report["best_value"] <= 1 and list((run / "overlays").glob("*.png"))


def test_existing_run_folder_is_never_overwritten_silently(tmp_path) -> None:
    train(tiny_config(tmp_path, epochs=1))
    with pytest.raises(ConfigError, match="exists and is not empty"):
        train(tiny_config(tmp_path, epochs=1))
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep")
    with pytest.raises(ConfigError, match="not a unetkit run folder"):
        train(tiny_config(tmp_path, name="mine", overwrite="true", epochs=1))
    assert (foreign / "precious.txt").read_text() == "keep"


class CrashAt(Callback):
    def __init__(self, epoch: int, step: int) -> None:
        self.epoch, self.step = epoch, step

    def on_step_end(self, trainer, step, loss) -> None:
        if trainer.epoch + 1 == self.epoch and step == self.step:
            raise KeyboardInterrupt("simulated crash")


def test_resume_after_a_crash_is_bit_exact(tmp_path) -> None:
    reference = train(tiny_config(tmp_path, name="straight", **{"model.kwargs.dropout": 0.2}))
    crashed_cfg = tiny_config(tmp_path, name="crashed", **{"model.kwargs.dropout": 0.2})
    with pytest.raises(Interrupted, match="stopped at epoch 1; continue with `unetkit train --resume"):
        train(crashed_cfg, callbacks=[CrashAt(epoch=2, step=3)])  # mid-epoch 2 (2 steps per epoch)
    resumed = train(None, resume=tmp_path / "crashed")
    a = load_file(str(reference.run_dir / "last.safetensors"))
    b = load_file(str(resumed.run_dir / "last.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert [r["train_loss"] for r in reference.history] == [r["train_loss"] for r in resumed.history]


class NaNLoss(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, logits, target, weight=None):
        self.calls += 1
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target.float())
        return loss * float("nan") if self.calls == 4 else loss  # 2 batches + 1 validation per epoch


def test_nan_loss_names_the_step_and_keeps_the_last_checkpoint(tmp_path) -> None:
    from unetkit.training.run import build_datasets

    cfg = tiny_config(tmp_path)
    train_set, val_set, _ = build_datasets(cfg, tmp_path / "run")
    trainer = Trainer(cfg, train_set, val_set, loss=NaNLoss())
    with pytest.raises(TrainingError, match=r"non-finite loss at epoch 2, batch 1 .*dsb2018_nuclei@\d+,\d+"):
        trainer.fit()
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_mask_class_beyond_num_classes_is_a_data_error(tmp_path) -> None:
    from unetkit.training.run import build_datasets

    cfg = tiny_config(tmp_path)
    train_set, val_set, _ = build_datasets(cfg, tmp_path / "run")
    train_set.volume(0)["mask"] *= 3  # ids 0 and 3 for a binary model (the cached, preprocessed case)
    with pytest.raises(DataError, match=r"dsb2018_nuclei@\d+,\d+.*class id 3 .*num_classes=1"):
        Trainer(cfg, train_set, val_set).fit()


def test_loss_that_does_not_fit_the_classes_is_refused(tmp_path) -> None:
    cfg = tiny_config(tmp_path, **{"model.num_classes": 3, "loss.kwargs.mode": "binary"})
    with pytest.raises(ConfigError, match="num_classes=3"):
        train(cfg)


@pytest.mark.parametrize("dims", [2, 3])
def test_folder_training_from_a_written_sample_dataset(tmp_path, dims: int) -> None:
    size = [40, 40] if dims == 2 else [24, 24, 24]
    cfg = TrainConfig().with_overrides([
        "data.dataset=synthetic-cells", f"model.spatial_dims={dims}", "model.num_classes=1",
        "model.kwargs.features=[4,8]", f"data.patch_size={size}", "data.batch_size=2", "data.num_workers=0",
        "data.samples_per_epoch=4", "epochs=1", "progress=quiet", "tensorboard=false", f"out_dir={tmp_path}",
        "name=folder", "data.augmentation=light", "data.dataset_options={size: 48, count: 4}",
    ])
    result = train(cfg)
    split = json.loads((result.run_dir / "splits.json").read_text())
    train_names, val_names = split["folds"][0]["train"], split["folds"][0]["val"]
    assert train_names and val_names and not set(train_names) & set(val_names)
    assert np.isfinite(result.history[-1]["val_loss"])


def test_worker_count_does_not_change_the_result(tmp_path) -> None:
    runs = [train(tiny_config(tmp_path, name=f"w{w}", epochs=1, **{"data.num_workers": w})) for w in (0, 1)]
    a, b = (load_file(str(r.run_dir / "last.safetensors")) for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_valid_padding_network_trains_on_cropped_targets(tmp_path) -> None:
    cfg = tiny_config(tmp_path, epochs=2, **{"model.name": "unet-original", "model.num_classes": 2,
                                             "data.patch_size": [92, 92], "model.kwargs.features": [4, 8, 16]})
    result = train(cfg)  # 92 -> 52: the loss sees the centre of each tile, validation uses overlap-tile
    assert all(np.isfinite(row["train_loss"]) for row in result.history)
    assert 0.0 <= result.history[-1]["val_dice"] <= 1.0


def test_deep_supervision_accumulation_clipping_and_json_log(tmp_path, capsys) -> None:
    cfg = tiny_config(tmp_path, epochs=2, progress="json", accumulate=2, grad_clip=1.0, **{
        "model.kwargs.deep_supervision": True, "optim.name": "sgd", "optim.lr": 0.01, "schedule.name": "step",
        "schedule.step_size": 1, "schedule.gamma": 0.5})
    result = train(cfg)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [row["epoch"] for row in lines] == [1, 2]
    assert result.history[-1]["steps"] == 2  # 2 batches per epoch, one optimiser step per 2 batches
    assert [row["lr"] for row in lines] == pytest.approx([0.01, 0.005])  # halved after the first epoch
    assert all(np.isfinite(row["train_loss"]) for row in lines)


def test_training_refuses_a_broken_folder_and_leaves_no_run_folder(tmp_path) -> None:
    from unetkit.datasets import write_dataset

    data = write_dataset("synthetic-cells", tmp_path / "data", size=32, count=4)
    (data / "images" / "cells_001.tif").write_bytes(b"II*\x00 truncated")
    cfg = TrainConfig().with_overrides([f"data.images={data}", "model.num_classes=1", f"out_dir={tmp_path}",
                                        "name=broken", "progress=quiet"])
    with pytest.raises(DataError, match=r"1 problem found by check-data(.|\n)*images/cells_001.tif  unreadable or truncated"):
        train(cfg)
    assert not (tmp_path / "broken").exists()
