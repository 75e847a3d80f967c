"""Anisotropic U-Nets (per-axis strides and kernels) and the planner's per-axis pooling (issue 11)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import unetkit
from unetkit.losses import DeepSupervisionLoss, create_loss, resize_to
from unetkit.models.registry import min_input_size, min_input_sizes
from unetkit.planning.fingerprint import Fingerprint
from unetkit.planning.planner import make_candidates, patch_geometry, pool_and_conv_props, unet_flops, unet_params

THICK = [[1, 2, 2], [1, 2, 2], [2, 2, 2]]  # below the top level: keep the depth twice
KERNELS = [[1, 3, 3], [1, 3, 3], [3, 3, 3], [3, 3, 3]]


def _aniso(down_mode: str = "maxpool", up_mode: str = "transpose", ds: bool = True, **kw):
    return unetkit.create_model("unet", spatial_dims=3, in_channels=1, num_classes=2, features=(4, 8, 8, 16),
                                norm="instance", down_mode=down_mode, up_mode=up_mode, deep_supervision=ds,
                                strides=THICK, kernel_sizes=KERNELS, **kw)


@pytest.mark.parametrize("down_mode,up_mode", [("maxpool", "transpose"), ("stride", "transpose"),
                                               ("stride", "linear"), ("conv", "nearest")])
def test_anisotropic_unet_forward_backward(down_mode: str, up_mode: str) -> None:
    torch.manual_seed(0)
    model = _aniso(down_mode, up_mode)
    x = torch.randn(2, 1, 5, 19, 26)  # no axis a multiple of the total stride (2, 8, 8)
    outs = model(x)
    assert outs[0].shape == (2, 2, 5, 19, 26)
    # the deep-supervision maps follow the per-axis factors: the depth is kept by levels 1 and 2
    # (pooling floors odd sizes; 'stride' pads to (6, 24, 32) first and crops the same fraction)
    want = [(5, 19, 26), (5, 10, 13), (5, 5, 7)] if down_mode == "stride" else [(5, 19, 26), (5, 9, 13), (5, 4, 6)]
    assert [tuple(o.shape[2:]) for o in outs] == want
    loss = DeepSupervisionLoss(create_loss("combo"))(outs, torch.randint(0, 2, (2, 1, 5, 19, 26)))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert min_input_sizes(model) == (2, 8, 8) and min_input_size(model) == 8
    if down_mode == "stride":
        assert model.size_divisors == (2, 8, 8)


def test_anisotropic_kernels_are_per_axis() -> None:
    model = _aniso("stride", ds=False)
    first = model.encoder.levels[0][0][0]
    assert tuple(first.kernel_size) == (1, 3, 3) and tuple(first.padding) == (0, 1, 1)
    assert tuple(model.encoder.levels[1][0][0].stride) == (1, 2, 2)
    assert tuple(model.decoder.blocks[-1].up.op.kernel_size) == (1, 2, 2)  # top level's up-conv
    assert tuple(model.decoder.blocks[-1].conv[0][0].kernel_size) == (1, 3, 3)


@pytest.mark.parametrize("down_mode", ["maxpool", "stride"])
def test_explicit_isotropic_geometry_equals_the_default(down_mode: str) -> None:
    """strides 2 / kernels 3 everywhere, spelled out, build the default network: same tensors, same outputs."""
    torch.manual_seed(0)
    default = unetkit.create_model("unet", spatial_dims=3, features=(4, 8, 16), down_mode=down_mode, norm="instance")
    spelled = unetkit.create_model("unet", spatial_dims=3, features=(4, 8, 16), down_mode=down_mode, norm="instance",
                                   strides=[[2, 2, 2]] * 2, kernel_sizes=[3, 3, 3])
    assert {k: v.shape for k, v in default.state_dict().items()} == \
        {k: v.shape for k, v in spelled.state_dict().items()}
    spelled.load_state_dict(default.state_dict())
    x = torch.randn(1, 1, 8, 12, 16)
    with torch.no_grad():
        assert torch.equal(default.eval()(x), spelled.eval()(x))


def test_bad_geometry_is_refused() -> None:
    with pytest.raises(ValueError, match="strides needs 3 entries"):
        unetkit.create_model("unet", spatial_dims=3, features=(4, 8, 16, 32), strides=[[1, 2, 2]])
    with pytest.raises(ValueError, match="one per axis"):
        unetkit.create_model("unet", spatial_dims=3, features=(4, 8), strides=[[1, 2]])
    with pytest.raises(ValueError, match="padding='same'"):
        unetkit.create_model("unet", spatial_dims=3, features=(4, 8), strides=[[1, 2, 2]], padding="valid")


def test_deep_supervision_targets_follow_per_axis_factors() -> None:
    """Each deep-supervision target is the full target subsampled by that level's per-axis factor
    (depth kept where the network kept it), i.e. the voxel under each coarse output voxel."""
    model = _aniso("maxpool")
    target = torch.randint(0, 3, (1, 1, 4, 16, 24))
    with torch.no_grad():
        outs = model(torch.randn(1, 1, 4, 16, 24))
    factors = [(1, 1, 1), (1, 2, 2), (1, 4, 4)]  # model.encoder.axis_strides of the levels with a head
    assert [tuple(s) for s in model.encoder.axis_strides[:3]] == factors
    for out, f in zip(outs, factors):
        resized = resize_to(target, out.shape[2:])
        assert torch.equal(resized, target[:, :, ::f[0], ::f[1], ::f[2]])


def test_pool_and_conv_props_follow_nnunet() -> None:
    # thick slices: in-plane pooled until its spacing is within 2x of the depth's, kernel 1 on depth meanwhile
    # (0.6 -> 1.2 -> 2.4 -> 4.8: the depth's 5 mm is within 2x only after three in-plane poolings)
    strides, kernels = pool_and_conv_props([5.0, 0.6, 0.6], [16, 160, 160], max_pools=5)
    assert strides[:3] == [[1, 2, 2]] * 3 and strides[3] == [2, 2, 2]
    assert kernels[:3] == [[1, 3, 3]] * 3 and kernels[3] == [3, 3, 3]
    # 0.63 mm: 2.52 mm after two poolings is within 2x of 5 mm: the depth joins at the third
    assert pool_and_conv_props([5.0, 0.63, 0.63], [16, 160, 160], max_pools=5)[0][:3] == \
        [[1, 2, 2], [1, 2, 2], [2, 2, 2]]
    total = np.prod(strides, axis=0)
    assert all(p / t >= 4 for p, t in zip([16, 160, 160], total))
    assert len(kernels) == len(strides) + 1
    # isotropic: every axis together, 3 everywhere
    strides, kernels = pool_and_conv_props([1.0, 1.0, 1.0], [32, 32, 32], max_pools=5)
    assert strides == [[2, 2, 2]] * 3 and all(k == [3, 3, 3] for k in kernels)


def _fingerprint(spacing, shape) -> Fingerprint:
    cases = [{"name": f"c{i}", "shape": list(shape), "spacing": list(spacing)} for i in range(4)]
    return Fingerprint(root="x", spatial_dims=3, channels=1, dtypes=["int16"], cases=cases,
                       shape_median=list(shape), spacing_median=list(spacing), spacing_p10=list(spacing),
                       anisotropy=max(spacing) / min(spacing), intensity={}, intensity_foreground={},
                       modality="ct", modality_source="given", mask_kind="labels", num_classes=2,
                       class_frequency=[0.9, 0.1], class_images=[4, 4], objects={})


def test_planner_candidates_pool_thick_axis_later() -> None:
    fp = _fingerprint((5.0, 0.6, 0.6), (60, 512, 512))
    cands = make_candidates([48, 320, 320], 3, 1, 1, fp, 64 * 2**30, [5.0, 0.6, 0.6])
    assert cands
    for c in cands:
        assert c["strides"] is not None and c["strides"][0] == [1, 2, 2]
        assert c["kernel_sizes"][0] == [1, 3, 3]
        assert c["patch"][1] > c["patch"][0] and c["patch"][2] > c["patch"][0]  # longer in-plane
        total = np.prod(c["strides"], axis=0)
        assert all(p % t == 0 and p // t >= 4 for p, t in zip(c["patch"], total))
        assert len(c["features"]) == len(c["strides"]) + 1
    iso = _fingerprint((1.0, 1.0, 1.0), (128, 128, 128))
    for c in make_candidates([128, 128, 128], 3, 1, 1, iso, 64 * 2**30, [1.0, 1.0, 1.0]):
        assert c["strides"] is None and c["kernel_sizes"] is None  # pooled together, as before


def test_3d_patches_span_the_typical_object_in_physical_space() -> None:
    """A lung tumour of ~24,600 voxels at 5 x 0.63 x 0.63 mm (a 45 mm sphere): every candidate patch
    spans 1.5 of its diameters per axis (up to 128 voxels), so no candidate sees only the tumour's
    inside. Before, the smallest candidates were 8x56x40 on this volume."""
    import dataclasses
    import math

    spacing = (5.0, 0.627, 0.627)
    fp = dataclasses.replace(_fingerprint(spacing, (61, 512, 512)), objects={"size_median": 24644.0})
    diameter = (6 * 24644.0 * np.prod(spacing) / math.pi) ** (1 / 3)
    need = [min(128, math.ceil(1.5 * diameter / sp)) for sp in spacing]  # 14, 108, 108
    cands = make_candidates([56, 504, 408], 3, 1, 1, fp, 64 * 2**30, list(spacing))
    assert cands
    for c in cands:
        total = np.prod(c["strides"], axis=0)
        # per axis: at least the object floor, less only by the rounding to the network's total stride
        assert all(p + t > n for p, t, n in zip(c["patch"], total, need)), (c["patch"], need)
    small = make_candidates([56, 504, 408], 3, 1, 1, _fingerprint(spacing, (61, 512, 512)), 64 * 2**30, list(spacing))
    assert min(c["patch"][1] for c in small) < need[1]  # without object sizes the patch may shrink below


def test_flops_and_params_count_per_axis_kernels() -> None:
    """The planner's FLOPs and parameter counts of an anisotropic candidate equal PyTorch's."""
    from torch.utils.flop_counter import FlopCounterMode

    patch, features = [8, 32, 32], [4, 8, 16]
    strides, kernels = [[1, 2, 2], [2, 2, 2]], [[1, 3, 3], [3, 3, 3], [3, 3, 3]]
    model = unetkit.create_model("unet", spatial_dims=3, in_channels=1, num_classes=2, features=features,
                                 norm="none", conv_bias=False, strides=strides, kernel_sizes=kernels)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.randn(1, 1, *patch))
    assert unet_flops(features, patch, 1, 2, 1, strides, kernels) == counter.get_total_flops()
    convs = sum(p.numel() for n, p in model.named_parameters() if n.endswith("weight"))
    assert unet_params(features, 3, 1, 2, strides, kernels) == convs


def test_patch_geometry_is_isotropic_for_2d_and_isotropic_3d() -> None:
    assert patch_geometry([256, 192], [1.0, 1.0], 2)[2] is None
    assert patch_geometry([64, 64, 48], [1.0, 1.0, 1.5], 3)[2] is None
    patch, _, strides, _ = patch_geometry([20, 150, 150], [5.0, 0.6, 0.6], 3)
    total = np.prod(strides, axis=0)
    assert all(p % t == 0 for p, t in zip(patch, total)) and strides[0] == [1, 2, 2]


def _thick_folder(root, n: int = 3, shape=(12, 40, 40)):
    """Thick-slice CT-like volumes (spacing 4 x 0.8 x 0.8 mm) with a bright block as foreground."""
    from unetkit.data.io import VolumeMeta, write_image, write_mask

    rng = np.random.default_rng(3)
    for i in range(n):
        image = rng.normal(-800, 40, shape)
        mask = np.zeros(shape, np.uint8)
        mask[3:8, 10 + i:24 + i, 12:28] = 1
        image[mask > 0] = rng.normal(60, 20, int(mask.sum()))
        meta = VolumeMeta(spacing=(4.0, 0.8, 0.8))
        write_image(root / "images" / f"ct{i}.nii.gz", image.astype(np.int16)[None], meta)
        write_mask(root / "masks" / f"ct{i}.nii.gz", mask, meta)
    return root


@pytest.mark.slow
def test_train_plans_per_axis_pooling_then_predicts_any_size(tmp_path, monkeypatch) -> None:
    """`unetkit train --images` on thick-slice volumes: the plan's per-axis strides reach the model
    file (re-derived when --set changes the depth); `unetkit predict` on a volume whose size is no
    multiple of the stride writes a mask of the input's shape."""
    from typer.testing import CliRunner

    import unetkit.planning.planner as planner
    from unetkit.cli.main import app
    from unetkit.data.io import VolumeMeta, read_volume, write_image

    monkeypatch.setenv("UNETKIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(planner, "_time", lambda c, *a, **k: 0.01 * c["flops"] / 1e8)  # no probing here
    _thick_folder(tmp_path / "d")
    p = planner.plan(tmp_path / "d", budget="2m", device="cpu", probe=False)
    assert p.config.model.kwargs["strides"][0] == [1, 2, 2]
    assert any(r[0] == "pooling" for r in p.reasons)
    result = CliRunner().invoke(app, [
        "train", "--images", str(tmp_path / "d"), "--budget", "2m", "--epochs", "1", "--out-dir", str(tmp_path),
        "--name", "aniso", "--progress", "quiet", "--set", "data.samples_per_epoch=2", "--set", "data.batch_size=2",
        "--set", "data.num_workers=0", "--set", "model.kwargs.features=[4,8,8]", "--set", "tensorboard=false"])
    assert result.exit_code == 0, result.output
    assert "pooling" in result.output
    model_file = tmp_path / "aniso" / "last.safetensors"
    model = unetkit.load_model(model_file)
    assert model.unetkit_config["strides"][0] == [1, 2, 2] and len(model.unetkit_config["strides"]) == 2
    image = np.random.default_rng(0).normal(-800, 40, (7, 37, 29)).astype(np.int16)
    write_image(tmp_path / "new" / "case.nii.gz", image[None], VolumeMeta(spacing=(4.0, 0.8, 0.8)))
    out = CliRunner().invoke(app, ["predict", str(model_file), str(tmp_path / "new"), "--out", str(tmp_path / "pred"),
                                   "--no-overlay", "--device", "cpu"])
    assert out.exit_code == 0, out.output
    written = list((tmp_path / "pred").rglob("*.nii.gz"))
    assert written
    mask, meta = read_volume(written[0])
    assert mask.shape[-3:] == (7, 37, 29)
