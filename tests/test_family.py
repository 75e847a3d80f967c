"""The U-Net family (issue 7): model-specific behaviour beyond the registry-wide tests."""
from __future__ import annotations

import pytest
import torch

import unetkit
from unetkit.models import (ENCODERS, DECODERS, attention_maps, count_parameters, create_model, list_models,
                            model_info)
from unetkit.models.encoders import MobileNetEncoder, ResNetEncoder
from unetkit.models.transformer import (PatchExpand, PatchMerging, WindowBlock, shifted_window_mask,
                                        window_partition, window_reverse)
from unetkit.models.unet3p import SUPPRESS

ODD_2D = (45, 38)


# ---- U-Net++ ---------------------------------------------------------------------------------
def test_unetpp_nodes_are_the_nested_grid() -> None:
    model = create_model("unet++", features=(4, 8, 16, 32))
    # X[i][j] for j >= 1 and i + j <= 3: 3 + 2 + 1 nodes; node X[i][j] joins j earlier maps of level i
    assert sorted(model.decoder.nodes) == sorted(f"x{i}_{j}" for j in range(1, 4) for i in range(4 - j))
    widths = (4, 8, 16, 32)
    for name, node in model.decoder.nodes.items():
        i, j = map(int, name[1:].split("_"))
        assert node.conv[0][0].in_channels == (j + 1) * widths[i]  # j skips + the up-sampled map


def test_unetpp_prune_reproduces_each_head_exactly(tmp_path) -> None:
    model = create_model("unet++", in_channels=2, num_classes=3, features=(4, 8, 16, 32),
                         deep_supervision=True).eval()
    x = torch.randn(2, 2, *ODD_2D)
    with torch.no_grad():
        outs = model(x)
    assert len(outs) == 3 and all(o.shape == (2, 3, *ODD_2D) for o in outs)
    sizes = []
    for level in (1, 2, 3):
        pruned = model.prune(level)
        assert not pruned.training and not pruned.deep_supervision
        assert len(pruned.decoder.nodes) == level * (level + 1) // 2
        with torch.no_grad():
            assert torch.equal(pruned(x), outs[3 - level]), f"level {level}"
        sizes.append(count_parameters(pruned))
        loaded = unetkit.load_model(unetkit.save_model(pruned, tmp_path / f"l{level}.safetensors"))
        with torch.no_grad():
            assert torch.equal(loaded(x), outs[3 - level])
    assert sizes[0] < sizes[1] < sizes[2] < count_parameters(model)


def test_unetpp_prune_rejects_bad_levels() -> None:
    model = create_model("unet++", features=(4, 8, 16))
    with pytest.raises(ValueError, match="deep_supervision=True"):
        model.prune(1)
    assert count_parameters(model.prune(2)) == count_parameters(model)  # full network, same weights
    with pytest.raises(ValueError, match=r"1\.\.2"):
        model.prune(3)


# ---- Attention U-Net -------------------------------------------------------------------------
def test_attention_coefficients_shape_and_range() -> None:
    model = create_model("attention-unet", in_channels=2, features=(4, 8, 16, 32)).eval()
    x = torch.randn(2, 2, *ODD_2D)
    with torch.no_grad():
        alphas = model.attention_maps(x)
        skips = model.encoder(x)[:-1]
    assert [a.shape for a in alphas] == [(2, 1, *s.shape[2:]) for s in skips[1:]]  # the finest is not gated
    assert all(((a >= 0) & (a <= 1)).all() for a in alphas)


def test_attention_gate_formula() -> None:
    """psi = 0 with bias b gives alpha = sigmoid(b) everywhere, and the skip is scaled by it."""
    model = create_model("attention-unet", features=(4, 8)).eval()
    from unetkit.models.decoders.attention import AttentionGate

    gate = AttentionGate(2, 4, 8, 4).eval()
    with torch.no_grad():
        gate.psi.weight.zero_()
        gate.psi.bias.fill_(-1.0)
        skip, g = torch.randn(1, 4, 9, 7), torch.randn(1, 8, 4, 3)
        gated, alpha = gate(skip, g)
    assert torch.allclose(alpha, torch.full_like(alpha, torch.sigmoid(torch.tensor(-1.0)).item()))
    assert torch.allclose(gated, gate.combine(gate.out(skip * alpha)))  # output transform, then combine


def test_attention_maps_on_other_encoders_and_3d() -> None:
    model = create_model("hybrid", spatial_dims=3, encoder="mobilenet", decoder="attention",
                         encoder_kwargs={"width_mult": 0.25, "depth": 3}).eval()
    with torch.no_grad():
        alphas = attention_maps(model, torch.randn(1, 1, 19, 22, 17))
    assert len(alphas) == 1 and alphas[0].shape[2:] == (5, 6, 5)  # stride 4 (the stride-2 skip is not gated)


# ---- UNet 3+ ---------------------------------------------------------------------------------
def test_unet3p_full_scale_deep_supervision() -> None:
    model = create_model("unet3+", features=(4, 8, 16, 32), deep_supervision=True).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 1, *ODD_2D))
    # a head on every decoder stage and on the bottleneck, highest resolution first
    assert [tuple(o.shape[2:]) for o in outs] == [ODD_2D, (22, 19), (11, 9), (5, 4)]  # floor pooling
    # every decoder stage gathers all four scales
    assert all(len(b) == 4 for b in model.decoder.branches)


def test_unet3p_classification_guided_module() -> None:
    model = create_model("unet3+", num_classes=1, features=(4, 8, 16), classification_guided=True).eval()
    x = torch.randn(2, 1, *ODD_2D)
    with torch.no_grad():
        seg, cls = model.forward_with_classification(x)
        assert cls.shape == (2, 2) and seg.shape == (2, 1, *ODD_2D)
        model.cgm.trained_steps.fill_(1)  # gating applies to a trained CGM only
        conv = model.cgm.conv
        conv.weight.zero_()
        conv.bias.copy_(torch.tensor([-5.0, 5.0]))  # "present" for every image: output untouched
        assert torch.equal(model(x), seg)
        conv.bias.copy_(torch.tensor([5.0, -5.0]))  # "absent": confident background
        assert torch.equal(model(x), torch.full_like(seg, -SUPPRESS))
    multi = create_model("unet3+", num_classes=3, features=(4, 8), classification_guided=True).eval()
    with torch.no_grad():
        multi.cgm.trained_steps.fill_(1)
        multi.cgm.conv.weight.zero_()
        multi.cgm.conv.bias.copy_(torch.tensor([5.0, -5.0]))
        assert (multi(x).argmax(1) == 0).all()
    with pytest.raises(ValueError, match="classification_guided=True"):
        create_model("unet3+", features=(4, 8)).forward_with_classification(x)


# ---- encoders --------------------------------------------------------------------------------
def test_mobilenet_v2_encoder_matches_the_paper_network() -> None:
    # torchvision's mobilenet_v2 (3,504,872 parameters) minus its 1x1 conv to 1280 + BN (412,160)
    # and its classifier (1,281,000)
    assert count_parameters(MobileNetEncoder(2, 3)) == 3_504_872 - 412_160 - 1_281_000
    enc = MobileNetEncoder(2, 1, width_mult=0.5)
    assert enc.out_channels == [8, 16, 16, 48, 160] and enc.strides == [2, 4, 8, 16, 32]


def test_resnet50_encoder_matches_resnet50() -> None:
    # torchvision's resnet50 (25,557,032 parameters) minus its fc layer (2048 * 1000 + 1000)
    assert count_parameters(ResNetEncoder(2, 3, blocks=(3, 4, 6, 3))) == 25_557_032 - 2_049_000


# ---- any decoder on any encoder --------------------------------------------------------------
TINY_ENCODERS = {
    "plain": {"features": (4, 8, 16)},
    "mobilenet": {"width_mult": 0.25, "depth": 3},
    "resnet": {"blocks": (1, 1), "width": 4},
    "vit": {"cnn_blocks": (1, 1), "cnn_width": 4, "hidden": 16, "depth": 1, "heads": 2, "mlp_dim": 16,
            "img_size": 32, "readout_channels": 16},
    "swin": {"features": (8, 16, 32), "depths": (1, 1, 1), "heads": (1, 1, 1), "window": 3, "patch_size": 2},
    "nnformer": {"features": (8, 16, 32), "depths": (1, 1, 1), "heads": (1, 1, 1), "window": 2, "patch_size": 2},
}
TINY_DECODERS = {"unet": {}, "unet++": {}, "attention": {}, "unet3+": {"cat_channels": 4},
                 "swin": {"depths": 1, "heads": 1, "window": 3}, "nnformer": {"depths": 1, "heads": 1, "window": 2}, "cup": {}}
COMBOS = [(e, d) for e in TINY_ENCODERS for d in TINY_DECODERS if d != "nnformer"] + [
    ("swin", "nnformer"), ("nnformer", "nnformer")]  # skip attention needs matching widths


def test_hybrid_registries_list_every_part() -> None:
    assert set(ENCODERS.list()) == set(TINY_ENCODERS) and set(DECODERS.list()) == set(TINY_DECODERS)


@pytest.mark.parametrize("encoder,decoder", COMBOS)
def test_any_decoder_on_any_encoder(encoder: str, decoder: str) -> None:
    model = create_model("hybrid", in_channels=2, num_classes=3, encoder=encoder, decoder=decoder,
                         deep_supervision=True, encoder_kwargs=TINY_ENCODERS[encoder],
                         decoder_kwargs=TINY_DECODERS[decoder])
    outs = model(torch.randn(1, 2, *ODD_2D))
    assert outs[0].shape == (1, 3, *ODD_2D) and len(outs) >= 2
    outs[0].mean().backward()


def test_unetpp_decoder_on_mobilenet_saves_and_loads(tmp_path) -> None:
    model = create_model("hybrid", spatial_dims=3, encoder="mobilenet", decoder="unet++", features=(8, 8),
                         encoder_kwargs={"width_mult": 0.25, "depth": 3}).eval()
    loaded = unetkit.load_model(unetkit.save_model(model, tmp_path / "m.safetensors"))
    x = torch.randn(1, 1, 17, 20, 15)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert loaded.unetkit_config["decoder"] == "unet++" and loaded.unetkit_config["features"] == [8, 8]


def test_hybrid_unknown_part_is_named() -> None:
    with pytest.raises(KeyError, match="unknown encoder 'vgg'"):
        create_model("hybrid", encoder="vgg")


# ---- paper configurations --------------------------------------------------------------------
PAPER = [n for n in list_models() if model_info(n).info.get("paper_params")]


def test_paper_counts_are_registered() -> None:
    assert {"unet++", "unet3+", "transunet", "swin-unet", "nnformer"} <= set(PAPER)


@pytest.mark.parametrize("name", PAPER)
def test_paper_parameter_counts_equal_the_official_code(name: str) -> None:
    """unetkit's paper configuration has exactly the official code's parameter count, less the
    documented deliberate differences (`paper_difference`)."""
    info = model_info(name).info
    with torch.device("meta"):
        model = create_model(name, **info.get("paper_config", {}))
    assert count_parameters(model) + info.get("paper_difference", 0) == info["paper_params"]


# ---- transformer pieces ----------------------------------------------------------------------
@pytest.mark.parametrize("size,window", [((6, 9), (3, 3)), ((4, 6, 2), (2, 3, 2))])
def test_window_partition_round_trip(size, window) -> None:
    x = torch.randn(2, *size, 5)
    windows = window_partition(x, window)
    assert windows.shape == (2 * (torch.tensor(size) // torch.tensor(window)).prod().item(),
                             torch.tensor(window).prod().item(), 5)
    assert torch.equal(windows[0].reshape(*window, 5), x[(0, *(slice(0, w) for w in window))])
    assert torch.equal(window_reverse(windows, window, size), x)


def test_shifted_window_mask_separates_regions() -> None:
    mask = shifted_window_mask((6, 6), (3, 3), (1, 1))
    assert mask.shape == (4, 9, 9)
    assert (mask[0] == 0).all()  # the first window is one region
    assert (mask[-1] != 0).any() and torch.equal(mask, mask.transpose(1, 2))
    assert (mask.diagonal(dim1=1, dim2=2) == 0).all()


def test_window_attention_stays_inside_windows() -> None:
    block = WindowBlock(2, 8, 2, window=4).eval()
    x = torch.randn(1, 8, 8, 8)
    y = x.clone()
    y[0, 0, 0] += 1.0  # a token of the top-left window
    with torch.no_grad():
        dx, dy = block(x), block(y)
    changed = (dx - dy).abs().sum(-1)[0] > 0
    assert changed[:4, :4].any() and not changed[4:].any() and not changed[:, 4:].any()


def test_window_block_any_size_3d() -> None:
    block = WindowBlock(3, 8, 2, window=3, shift=True)
    assert block(torch.randn(1, 5, 7, 2, 8)).shape == (1, 5, 7, 2, 8)


def test_patch_merging_and_expanding_3d() -> None:
    x = torch.randn(2, 4, 6, 8, 8)
    merged = PatchMerging(3, 8)(x)
    assert merged.shape == (2, 2, 3, 4, 16)
    assert PatchExpand(3, 16, 8)(merged).shape == (2, 4, 6, 8, 8)
    assert PatchExpand(2, 8, 8, scale=4)(torch.randn(1, 3, 5, 8)).shape == (1, 12, 20, 8)
