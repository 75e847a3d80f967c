"""Newer paradigms: self-supervised pretraining, few-shot, active learning, and the multi-task,
spatio-temporal and multi-modal models (their registry-wide checks are in test_models.py)."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
import torch.nn as nn

import unetkit
from unetkit.data.normalize import normalize_image
from unetkit.datasets import load_dataset
from unetkit.metrics import confusion_counts, dice
from unetkit.models import MultiTaskLoss, create_model
from unetkit.paradigms import (PrototypeSegmenter, fine_tune, pretrain_encoder, score_uncertainty,
                               select_for_labelling, transfer_encoder, write_ranking_csv)
from unetkit.paradigms.pretrain import GenesisCorruption, in_paint, local_shuffle

TINY = (8, 16, 32)


@pytest.fixture(scope="module")
def nuclei() -> tuple[np.ndarray, np.ndarray]:
    """The real 512x512 DSB 2018 image, normalised (1, H, W) float32, and its mask (1, H, W) int64."""
    sample = load_dataset("dsb2018-nuclei")
    return normalize_image(sample.image.astype(np.float32)), sample.mask.astype(np.int64)


def tiny_unet(seed: int = 0, **kw) -> nn.Module:
    torch.manual_seed(seed)
    return create_model("unet", in_channels=1, num_classes=1, features=TINY, **kw)


def held_out_dice(model: nn.Module, image: np.ndarray, mask: np.ndarray) -> float:
    """Foreground Dice on the region x >= 358 (never used for support tiles or pretraining)."""
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(image[None, :, :, 358:]))
    return float(dice(confusion_counts((logits > 0).long(), torch.from_numpy(mask[None, :, :, 358:]), 2))[0, 1])


@pytest.fixture(scope="module")
def pretrained(nuclei) -> tuple[nn.Module, list[float]]:
    image, _ = nuclei
    model = tiny_unet(seed=100)
    history = pretrain_encoder(model, image[:, :, :358], steps=60, tile_size=48, batch_size=8, lr=3e-3)
    return model, history


# ---- self-supervised pretraining -----------------------------------------------------------------
def test_pretraining_restoration_loss_goes_down_on_nuclei(pretrained) -> None:
    _, history = pretrained
    assert len(history) == 60 and np.isfinite(history).all()
    assert np.mean(history[-5:]) < 0.5 * np.mean(history[:5]), history


def test_corruptions_are_n_dimensional_and_do_what_they_say() -> None:
    rng = np.random.default_rng(0)
    tile = rng.random((2, 12, 16, 10)).astype(np.float32)  # a 3D two-channel tile
    shuffled = local_shuffle(tile, blocks=20, max_fraction=0.3, rng=rng)
    assert shuffled.shape == tile.shape and not np.array_equal(shuffled, tile)
    for c in range(2):  # shuffling moves values, never changes them
        assert np.array_equal(np.sort(shuffled[c].ravel()), np.sort(tile[c].ravel()))
    painted = in_paint(np.zeros_like(tile), 5.0, 6.0, rng)
    assert ((painted == 0) | ((painted >= 5) & (painted <= 6))).all() and (painted >= 5).any()
    out = GenesisCorruption(nonlinear_p=1, shuffle_p=1, paint_p=1)(tile, rng)
    assert out.shape == tile.shape and out.dtype == np.float32 and np.isfinite(out).all()


def test_pretraining_3d_runs() -> None:
    torch.manual_seed(0)
    model = create_model("unet", spatial_dims=3, in_channels=1, num_classes=2, features=(4, 8))
    history = pretrain_encoder(model, np.random.default_rng(0).random((1, 20, 20, 20), np.float32), steps=3,
                               tile_size=(12, 16, 16), batch_size=2)
    assert len(history) == 3 and np.isfinite(history).all()


# ---- transfer -----------------------------------------------------------------------------------------
def test_transfer_copies_exactly_the_encoder_tensors(pretrained) -> None:
    source, _ = pretrained
    for target in (tiny_unet(seed=1), create_model("multitask-unet", in_channels=1, num_classes=3, features=TINY,
                                                   num_labels=2)):
        before = {k: v.clone() for k, v in target.state_dict().items()}
        report = transfer_encoder(source, target)
        src = source.state_dict()
        assert sorted(report.copied) == sorted(k for k in before if k.startswith("encoder."))
        for name, value in target.state_dict().items():  # parameters and BN buffers alike
            expected = src[name] if name.startswith("encoder.") else before[name]
            assert torch.equal(value, expected), name
        assert not report.shape_mismatch and not report.missing_in_source


def test_transfer_reports_mismatches_and_maps_prefixes(pretrained, tmp_path) -> None:
    source, _ = pretrained
    wider = create_model("unet", in_channels=1, num_classes=1, features=(8, 16, 64))
    with pytest.raises(ValueError, match=r"(?s)strict=False.*shape differs, kept: encoder\.levels\.2"):
        transfer_encoder(source, wider)
    report = transfer_encoder(source, wider, strict=False)  # the two shallow levels match
    assert report.copied and all(".levels.2." in n for n, _, _ in report.shape_mismatch)
    # a pretrained U-Net encoder (from its model file) starts one modality path of a multimodal model
    path = unetkit.save_model(source, tmp_path / "genesis.safetensors")
    multi = create_model("multimodal-unet", in_channels=2, num_classes=1, features=TINY)
    report = transfer_encoder(path, multi, target_prefix="encoder.paths.1.")
    assert all(n.startswith("encoder.paths.1.") for n in report.copied)
    assert torch.equal(multi.encoder.paths[1].levels[0][0][0].weight, source.encoder.levels[0][0][0].weight)
    with pytest.raises(ValueError, match="no tensor to copy"):
        transfer_encoder(source, multi, source_prefix="decoder.", target_prefix="encoder.")


# ---- few-shot -------------------------------------------------------------------------------------------
SUPPORT = [(40, 40), (200, 250)]  # two 64x64 labelled tiles, left of the held-out region


def support(nuclei) -> tuple[list[np.ndarray], list[np.ndarray]]:
    image, mask = nuclei
    return ([image[:, y:y + 64, x:x + 64] for y, x in SUPPORT], [mask[:, y:y + 64, x:x + 64] for y, x in SUPPORT])


def test_few_shot_fine_tuning_improves_held_out_dice(nuclei, pretrained) -> None:
    images, masks = support(nuclei)
    model = tiny_unet(seed=0)
    transfer_encoder(pretrained[0], model)
    encoder_before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    before = held_out_dice(model, *nuclei)
    history = fine_tune(model, images, masks, steps=40, freeze_encoder=True, lr=3e-3, tile_size=48)
    after = held_out_dice(model, *nuclei)
    assert np.mean(history[-5:]) < np.mean(history[:5])
    assert after > 0.6 and after > before + 0.2, (before, after)
    for name, value in model.encoder.state_dict().items():  # frozen: weights and BN statistics
        assert torch.equal(value, encoder_before[name]), name
    assert all(p.requires_grad for p in model.parameters())  # the flags are restored


def test_bn_only_trains_just_the_encoder_norm_layers(nuclei) -> None:
    images, masks = support(nuclei)
    model = tiny_unet()
    conv_before = model.encoder.levels[0][0][0].weight.clone()
    bn_before = model.encoder.levels[0][0][1].weight.clone()
    fine_tune(model, images[:1], masks[:1], steps=3, freeze_encoder="bn-only", tile_size=32, batch_size=2)
    assert torch.equal(model.encoder.levels[0][0][0].weight, conv_before)
    assert not torch.equal(model.encoder.levels[0][0][1].weight, bn_before)
    with pytest.raises(ValueError, match="freeze_encoder"):
        fine_tune(model, images, masks, steps=1, freeze_encoder="decoder")


def test_prototype_segmenter_exact_on_separable_features() -> None:
    """Features = the image: background pixels point along (1, 0.2), foreground along (0.2, 1)."""
    rng = np.random.default_rng(0)

    def scene(seed: int) -> tuple[np.ndarray, np.ndarray]:
        r = np.random.default_rng(seed)
        mask = np.zeros((40, 40), np.int64)
        for _ in range(4):
            y, x = r.integers(5, 35, 2)
            mask[max(0, y - 4):y + 4, max(0, x - 4):x + 4] = 1
        image = np.where(mask[None] == 1, np.array([0.2, 1.0])[:, None, None], np.array([1.0, 0.2])[:, None, None])
        return (image * rng.uniform(0.5, 2.0, (1, 40, 40))).astype(np.float32), mask  # brightness varies

    seg = PrototypeSegmenter(lambda x: x).fit(*scene(1))
    query, truth = scene(2)
    assert torch.equal(seg.predict(query)[0, 0], torch.from_numpy(truth))


def test_prototype_segmenter_on_pretrained_features(nuclei, pretrained) -> None:
    """No label was used to train the (Genesis-pretrained) network: the two support tiles give the
    prototypes, and the held-out region is segmented by cosine similarity alone."""
    images, masks = support(nuclei)
    seg = PrototypeSegmenter(pretrained[0]).fit(images, masks)
    image, mask = nuclei
    pred = seg.predict(torch.from_numpy(image[None, :, :, 358:]))
    assert pred.shape == (1, 1, 512, 154)
    assert float(dice(confusion_counts(pred, torch.from_numpy(mask[None, :, :, 358:]), 2))[0, 1]) > 0.6
    with pytest.raises(ValueError, match="only background"):
        PrototypeSegmenter(pretrained[0]).fit(images[0], np.zeros_like(masks[0]))


# ---- active learning ----------------------------------------------------------------------------------
class LogitsAre(nn.Module):
    """A 'model' whose logits are its input (times `gain`)."""

    def __init__(self, gain: float = 1.0) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(gain))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gain


class DropoutOnSecondChannel(nn.Module):
    """logits = channel 0 + dropout(channel 1): dropout changes the prediction only where channel
    1 is non-zero, so the model is 'epistemically' unsure exactly there."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(1.0))
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1] * self.gain + self.drop(x[:, 1:])


def test_entropy_scores_match_numpy() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (3, 3, 9, 7)).astype(np.float32)
    result = score_uncertainty(LogitsAre(), logits, method="entropy")
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    maps = -(p * np.log(p)).sum(1)
    np.testing.assert_allclose(np.stack(result.maps), maps, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.scores, maps.mean((1, 2)), rtol=1e-5)
    binary = rng.normal(0, 2, (1, 1, 5, 5)).astype(np.float32)  # K == 1: p = sigmoid, 1 - p
    q = 1 / (1 + np.exp(-binary[0, 0]))
    expected = -(q * np.log(q) + (1 - q) * np.log(1 - q))
    np.testing.assert_allclose(score_uncertainty(LogitsAre(), binary).maps[0], expected, rtol=1e-5, atol=1e-6)


def test_uncertain_image_ranks_first_for_every_method() -> None:
    rng = np.random.default_rng(0)
    signs = np.sign(rng.normal(size=(1, 1, 16, 16))).astype(np.float32)
    certain, unsure = 8.0 * signs[0], 0.05 * signs[0]
    images = [certain, unsure, 4.0 * signs[0]]
    assert select_for_labelling(score_uncertainty(LogitsAre(), images).scores, 2) == [1, 2]
    zeros, ones = np.zeros_like(certain), np.ones_like(certain)
    two_channel = [np.concatenate([certain, zeros]), np.concatenate([certain, -16 * ones]),
                   np.concatenate([certain, 2 * ones])]  # dropout flips image 1's sign, barely moves 2's
    mc = score_uncertainty(DropoutOnSecondChannel(), two_channel, method="mc_dropout", passes=16)
    assert select_for_labelling(mc.scores, 3) == [1, 2, 0] and abs(mc.scores[0]) < 1e-6
    assert all((m >= -1e-6).all() for m in mc.maps)  # mutual information is never negative
    again = score_uncertainty(DropoutOnSecondChannel(), two_channel, method="mc_dropout", passes=16)
    np.testing.assert_array_equal(mc.scores, again.scores)  # seeded
    conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)  # not flip-equivariant: TTA disagrees
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[[0.0, 0, 0], [0, 1, 3], [0, 0, 0]]]]))
    flat_and_bright, speckled = 8.0 * np.ones_like(certain), 0.5 * signs[0]  # the conv is sure on the first
    tta = score_uncertainty(conv, [flat_and_bright, speckled], method="tta_variance")
    assert select_for_labelling(tta.scores, 1) == [1] and tta.scores[0] < 1e-6 < tta.scores[1]
    assert score_uncertainty(LogitsAre(), images, method="tta_variance").scores.max() < 1e-10  # pointwise


def test_mc_dropout_needs_dropout_and_keeps_batchnorm_frozen() -> None:
    with pytest.raises(ValueError, match="needs dropout layers"):
        score_uncertainty(tiny_unet(), np.zeros((1, 1, 16, 16), np.float32), method="mc_dropout")
    model = tiny_unet(dropout=0.3)
    stats = model.encoder.levels[0][0][1].running_mean.clone()
    result = score_uncertainty(model, np.random.default_rng(0).random((2, 1, 16, 16), np.float32),
                               method="mc_dropout", passes=3)
    assert result.scores.shape == (2,) and (result.scores > 0).all()
    assert torch.equal(model.encoder.levels[0][0][1].running_mean, stats) and model.training
    with pytest.raises(ValueError, match="unknown uncertainty method"):
        score_uncertainty(model, np.zeros((1, 1, 8, 8), np.float32), method="bald")


def test_selection_with_diversity_skips_near_duplicates() -> None:
    scores = [0.9, 0.89, 0.5, 0.1]
    features = np.array([[0.0, 0.0], [0.0, 0.01], [10.0, 10.0], [10.0, 10.1]])
    assert select_for_labelling(scores, 2) == [0, 1]
    assert select_for_labelling(scores, 2, features, diversity=0.5) == [0, 2]
    assert select_for_labelling(scores, 10) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="features"):
        select_for_labelling(scores, 2, diversity=0.5)


def test_suggest_labels_cli_writes_the_ranking(tmp_path) -> None:
    from typer.testing import CliRunner

    from unetkit.cli.main import app
    from unetkit.cli import paradigms_cmd
    from unetkit.data.io import write_image

    if "suggest-labels" not in [c.name for c in app.registered_commands]:
        paradigms_cmd.register(app)  # until cli/main.py lists the module
    model = tiny_unet()
    ckpt = unetkit.save_model(model.eval(), tmp_path / "m.safetensors")
    rng = np.random.default_rng(0)
    for i in range(4):
        write_image(tmp_path / "images" / f"img{i}.tif", (rng.random((1, 40, 36)) * 1000).astype(np.uint16))
    out = tmp_path / "ranking.csv"
    result = CliRunner().invoke(app, ["suggest-labels", str(ckpt), str(tmp_path / "images"), "--k", "2",
                                      "--out", str(out), "--roi", "32"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open()))
    assert [r["rank"] for r in rows] == ["1", "2", "3", "4"]
    assert [r["selected"] for r in rows] == ["1", "2", "", ""]
    picked = [float(r["score"]) for r in rows[:2]]
    assert picked == sorted(picked, reverse=True) and min(picked) >= max(float(r["score"]) for r in rows[2:])
    again = CliRunner().invoke(app, ["suggest-labels", str(ckpt), str(tmp_path / "images"), "--out", str(out)])
    assert again.exit_code == 1 and "exists" in again.output
    bad = CliRunner().invoke(app, ["suggest-labels", str(ckpt), str(tmp_path / "images"), "--out",
                                   str(tmp_path / "r2.csv"), "--method", "mc_dropout"])
    assert bad.exit_code == 1 and "dropout" in bad.output


def test_ranking_csv_orders_picks_first(tmp_path) -> None:
    path = write_ranking_csv(tmp_path / "r.csv", ["a", "b", "c"], [0.1, 0.3, 0.2], [2, 1])
    rows = list(csv.DictReader(path.open()))
    assert [(r["image"], r["selected"]) for r in rows] == [("c", "1"), ("b", "2"), ("a", "")]


# ---- multi-task -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("dims", [2, 3])
def test_multitask_forward_all_shapes(dims: int) -> None:
    size = (19, 22, 17)[:dims] if dims == 3 else (45, 38)
    model = create_model("multitask-unet", spatial_dims=dims, in_channels=2, num_classes=3, features=(4, 8, 16),
                         num_labels=5, regression_channels=2).eval()
    x = torch.randn(2, 2, *size)
    with torch.no_grad():
        out = model.forward_all(x)
        assert torch.equal(out["segmentation"], model(x))
    assert out["segmentation"].shape == (2, 3, *size)
    assert out["classification"].shape == (2, 5)
    assert out["regression"].shape == (2, 2, *size)
    plain = create_model("multitask-unet", features=(4, 8))
    assert plain.classifier is None and plain.regressor is None
    assert set(plain.forward_all(torch.randn(1, 1, 16, 16))) == {"segmentation"}


def test_multitask_loss_learned_and_fixed_weights() -> None:
    model = create_model("multitask-unet", num_classes=2, features=(4, 8), num_labels=3, regression_channels=1)
    x = torch.randn(2, 1, 16, 16)
    targets = {"segmentation": torch.randint(0, 2, (2, 1, 16, 16)), "classification": torch.tensor([0, 2]),
               "regression": torch.randn(2, 1, 16, 16)}
    losses = {"segmentation": unetkit.losses.create_loss("dice_ce"), "classification": nn.CrossEntropyLoss(),
              "regression": nn.MSELoss()}
    learned = MultiTaskLoss(losses, learned=True)
    with torch.no_grad():
        learned.log_vars["regression"].fill_(1.0)
    total, parts = learned(model.forward_all(x), targets)
    expected = parts["segmentation"] + parts["classification"] + np.exp(-1.0) * parts["regression"] + 1.0
    assert torch.allclose(total, expected.float())
    total.backward()
    assert all(p.grad is not None and p.grad.abs() > 0 for p in learned.log_vars.values())
    assert model.classifier[-1].weight.grad is not None and model.regressor[0].weight.grad is not None
    fixed = MultiTaskLoss(losses, weights={"classification": 0.5})
    total, parts = fixed(model.forward_all(x), {k: targets[k] for k in ("segmentation", "classification")})
    assert set(parts) == {"segmentation", "classification"}  # tasks without targets are skipped
    assert torch.allclose(total, parts["segmentation"] + 0.5 * parts["classification"])
    with pytest.raises(KeyError, match="num_labels"):
        fixed(create_model("multitask-unet", features=(4, 8)).forward_all(x), targets)


# ---- spatio-temporal ----------------------------------------------------------------------------------
def test_temporal_inputs_agree_and_earlier_frames_matter() -> None:
    torch.manual_seed(0)
    model = create_model("temporal-unet", in_channels=2, num_classes=3, features=(4, 8, 16)).eval()
    clip = torch.randn(1, 2, 4, 21, 18)  # (N, C, T, H, W)
    stacked = clip.transpose(1, 2).reshape(1, 8, 21, 18)  # frame-major channels
    with torch.no_grad():
        out = model(clip)
        assert out.shape == (1, 3, 21, 18)
        assert torch.equal(out, model(stacked))
        changed = clip.clone()
        changed[:, :, 0] += 1.0  # only frame 0 differs
        assert not torch.allclose(model(changed), out, atol=1e-6)
        frames = model.forward_frames(clip)  # every frame's mask, causal
        assert frames.shape == (1, 3, 4, 21, 18) and torch.allclose(frames[:, :, -1], out, atol=1e-6)
        later = clip.clone()
        later[:, :, 3] += 1.0
        assert torch.equal(model.forward_frames(later)[:, :, 0], frames[:, :, 0])
    with pytest.raises(ValueError, match="whole number of 2-channel frames"):
        model(torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match="built for 3 frames"):
        create_model("temporal-unet", in_channels=2, features=(4, 8), frames=3)(stacked)


def test_temporal_3d_plus_time() -> None:
    model = create_model("temporal-unet", spatial_dims=3, in_channels=1, num_classes=2, features=(4, 8)).eval()
    clip = torch.randn(1, 1, 3, 9, 12, 10)  # (N, C, T, D, H, W)
    with torch.no_grad():
        out = model(clip)
        assert out.shape == (1, 2, 9, 12, 10)
        assert torch.equal(out, model(clip.transpose(1, 2).reshape(1, 3, 9, 12, 10)))


# ---- multi-modal ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("dims,fusion", [(2, "concat"), (2, "attention"), (3, "attention")])
def test_multimodal_modalities_of_different_channel_counts(dims: int, fusion: str) -> None:
    size = (13, 18, 15)[:dims] if dims == 3 else (45, 38)
    model = create_model("multimodal-unet", spatial_dims=dims, in_channels=3, num_classes=2, features=(4, 8, 16),
                         modalities=(1, 2), fusion=fusion, modality_dropout=0.3)
    assert [p.levels[0][0][0].in_channels for p in model.encoder.paths] == [1, 2]
    out = model(torch.randn(2, 3, *size))  # training mode: modality dropout active
    assert out.shape == (2, 2, *size)
    with pytest.raises(ValueError, match=r"expects 3 input channels split as modalities=\(1, 2\)"):
        model(torch.randn(2, 4, *size))


def test_multimodal_fusion_sees_every_modality_and_checks_its_config() -> None:
    model = create_model("multimodal-unet", in_channels=2, num_classes=1, features=(4, 8)).eval()
    x = torch.randn(1, 2, 16, 16)
    with torch.no_grad():
        y = x.clone()
        y[:, 1] += 1.0  # the second modality alone changes
        assert not torch.allclose(model(x), model(y))
    with pytest.raises(ValueError, match=r"add up to 3, not in_channels=2"):
        create_model("multimodal-unet", in_channels=2, modalities=(1, 2))
    with pytest.raises(ValueError, match="fusion must be one of"):
        create_model("multimodal-unet", in_channels=2, fusion="sum")
