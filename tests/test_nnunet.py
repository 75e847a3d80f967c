"""nnU-Net-style stages: down_mode='stride', resenc-unet, and importing nnU-Net v2 weights."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

import unetkit
from unetkit.io.checkpoint import CheckpointError
from unetkit.models import count_parameters
from unetkit.models.nnunet_import import load_nnunet, nnunet_to_unetkit

try:
    from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
except ImportError:  # the peer is optional: `pip install --no-deps dynamic-network-architectures`
    PlainConvUNet = ResidualEncoderUNet = None
needs_dna = pytest.mark.skipif(PlainConvUNet is None, reason="dynamic-network-architectures not installed")

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_INORM = {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}


def _dna_kwargs(dims: int, bias: bool, ds: bool = False) -> dict:
    return dict(conv_bias=bias, norm_op=_INORM[dims], norm_op_kwargs={"eps": 1e-5, "affine": True},
                nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=ds)


def _perturb(model: nn.Module) -> nn.Module:
    """Random non-trivial norm affines and biases, so a swapped tensor shows in the output."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


def test_stride_parameter_count_by_hand() -> None:
    # 2D, features (4, 8), 1 -> 2 classes, batch norm, conv_bias=None (no bias before a norm)
    level0 = 1 * 4 * 9 + 8 + 4 * 4 * 9 + 8            # conv 1->4, BN, conv 4->4, BN
    level1 = 4 * 8 * 9 + 16 + 8 * 8 * 9 + 16           # strided conv 4->8, BN, conv 8->8, BN
    up = 8 * 4 * 4 + 4                                 # 2x2 transposed conv 8->4 with bias
    dec = 8 * 4 * 9 + 8 + 4 * 4 * 9 + 8                # conv (4+4)->4, BN, conv 4->4, BN
    head = 4 * 2 + 2
    model = unetkit.create_model("unet", features=(4, 8), down_mode="stride")
    assert count_parameters(model) == level0 + level1 + up + dec + head
    # a separate strided 2x2 conv (down_mode='conv') adds its conv + BN; max-pool adds nothing
    assert count_parameters(unetkit.create_model("unet", features=(4, 8), down_mode="maxpool")) == \
        count_parameters(model)
    assert count_parameters(unetkit.create_model("unet", features=(4, 8), down_mode="conv")) == \
        count_parameters(model) + 4 * 4 * 4 + 8
    # conv_bias=True adds one bias per conv output channel (4 + 4 + 8 + 8 + 4 + 4)
    assert count_parameters(unetkit.create_model("unet", features=(4, 8), down_mode="stride", conv_bias=True)) == \
        count_parameters(model) + 32


def test_stride_halves_in_the_first_conv_and_pads_odd_inputs() -> None:
    model = unetkit.create_model("unet", spatial_dims=3, features=(4, 8, 16), down_mode="stride").eval()
    assert model.encoder.levels[1][0][0].stride == (2, 2, 2) and len(model.encoder.downs) == 0
    assert model.size_divisor == 4
    with torch.no_grad():
        assert model(torch.randn(1, 1, 9, 10, 11)).shape == (1, 2, 9, 10, 11)
    with pytest.raises(ValueError, match="padding='same'"):
        unetkit.create_model("unet", features=(4, 8), down_mode="stride", padding="valid")


@needs_dna
@pytest.mark.parametrize("dims,bias", [(2, False), (3, True), (3, False)])
def test_stride_parameter_count_equals_plainconvunet(dims: int, bias: bool) -> None:
    features = (32, 64, 128, 256, 320)
    theirs = PlainConvUNet(1, 5, features, _CONV[dims], 3, (1, 2, 2, 2, 2), 2, 3, 2, **_dna_kwargs(dims, bias, True))
    with torch.device("meta"):
        ours = unetkit.create_model("unet", spatial_dims=dims, num_classes=3, features=features, norm="instance",
                                    act="leakyrelu", down_mode="stride", conv_bias=bias, deep_supervision=True)
    assert count_parameters(ours) == count_parameters(theirs)


ANISO_STRIDES = [[1, 1, 1], [1, 2, 2], [1, 2, 2], [2, 2, 2]]  # nnU-Net's form (top stage first)
ANISO_KERNELS = [[1, 3, 3], [1, 3, 3], [3, 3, 3], [3, 3, 3]]


@needs_dna
@pytest.mark.parametrize("bias", [True, False])
def test_anisotropic_unet_equals_plainconvunet(bias: bool) -> None:
    """Per-axis strides and kernels (a thick-slice plan): the same parameters as nnU-Net's
    PlainConvUNet, and after importing its weights the same outputs, deep supervision included."""
    features = (4, 8, 16, 32)
    theirs = _perturb(PlainConvUNet(1, 4, features, nn.Conv3d, ANISO_KERNELS, ANISO_STRIDES, 2, 2, 2,
                                    **_dna_kwargs(3, bias, True)))
    ours = unetkit.create_model("unet", spatial_dims=3, num_classes=2, features=features, norm="instance",
                                act="leakyrelu", down_mode="stride", conv_bias=bias, deep_supervision=True,
                                strides=ANISO_STRIDES[1:], kernel_sizes=ANISO_KERNELS)
    assert count_parameters(ours) == count_parameters(theirs)
    model, report = nnunet_to_unetkit(theirs.state_dict(), deep_supervision=True)
    assert model.unetkit_config["strides"] == ANISO_STRIDES[1:]
    assert model.unetkit_config["kernel_sizes"] == ANISO_KERNELS
    x = torch.randn(1, 1, 4, 16, 24)  # depth pooled once (x2), in-plane three times (x8)
    with torch.no_grad():
        outs, refs = model.eval()(x), theirs(x)
    assert [tuple(o.shape[2:]) for o in outs] == [(4, 16, 24), (4, 8, 12), (4, 4, 6)]
    for a, b in zip(outs, refs):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)


@needs_dna
def test_resenc_parameter_count_equals_residualencoderunet() -> None:
    with torch.device("meta"):
        theirs = ResidualEncoderUNet(1, 6, (32, 64, 128, 256, 320, 320), nn.Conv3d, 3, (1, 2, 2, 2, 2, 2),
                                     (1, 3, 4, 6, 6, 6), 2, (1, 1, 1, 1, 1), **_dna_kwargs(3, True, True))
        ours = unetkit.create_model("resenc-unet-m", spatial_dims=3, num_classes=2, deep_supervision=True)
    assert count_parameters(ours) == count_parameters(theirs)


def test_resenc_presets_follow_nnunet_rule() -> None:
    with torch.device("meta"):
        m3 = unetkit.create_model("resenc-unet-m", spatial_dims=3)
        l2 = unetkit.create_model("resenc-unet-l", spatial_dims=2)
    assert m3.encoder.out_channels == [32, 64, 128, 256, 320, 320]
    assert [len(s) for s in m3.encoder.stages] == [1, 3, 4, 6, 6, 6]
    assert l2.encoder.out_channels == [32, 64, 128, 256, 512, 512, 512] and l2.memory_target_gb == 24
    assert all(len(b.conv) == 1 for b in m3.decoder.blocks)  # one conv per decoder level
    # a residual block: strided first block pools and projects its shortcut
    blk = m3.encoder.stages[1][0]
    assert isinstance(blk.skip[0], nn.AvgPool3d) and blk.skip[1][0].kernel_size == (1, 1, 1)


# ---- import ------------------------------------------------------------------------------------
class _CNA(nn.Module):
    """Hand-written stand-in for nnU-Net's ConvDropoutNormReLU (same key names, incl. all_modules)."""

    def __init__(self, dims, cin, cout, stride=1, act=True):
        super().__init__()
        self.conv = _CONV[dims](cin, cout, 3, stride, 1, bias=True)
        self.norm = _INORM[dims](cout, affine=True)
        self.nonlin = nn.LeakyReLU(0.01) if act else nn.Identity()
        self.all_modules = nn.Sequential(self.conv, self.norm, self.nonlin)

    def forward(self, x):
        return self.all_modules(x)


class _Stack(nn.Module):
    def __init__(self, dims, cin, cout, stride):
        super().__init__()
        self.convs = nn.Sequential(_CNA(dims, cin, cout, stride), _CNA(dims, cout, cout))

    def forward(self, x):
        return self.convs(x)


class _HandPlainConvUNet(nn.Module):
    """PlainConvUNet's key layout and computation written out by hand (used when
    dynamic-network-architectures is absent): decoder concatenates (upsampled, skip)."""

    def __init__(self, dims, cin, features, classes):
        super().__init__()
        self.encoder = nn.Module()
        self.encoder.stages = nn.Sequential(*(nn.Sequential(_Stack(dims, ([cin] + list(features))[i], f, 1 if i == 0 else 2))
                                              for i, f in enumerate(features)))
        self.decoder = nn.Module()
        tconv = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[dims]
        rev = list(features)[::-1]
        self.decoder.transpconvs = nn.ModuleList(tconv(rev[i], rev[i + 1], 2, 2) for i in range(len(rev) - 1))
        self.decoder.stages = nn.ModuleList(_Stack(dims, 2 * rev[i + 1], rev[i + 1], 1) for i in range(len(rev) - 1))
        self.decoder.seg_layers = nn.ModuleList(_CONV[dims](rev[i + 1], classes, 1) for i in range(len(rev) - 1))

    def forward(self, x):
        skips = []
        for s in self.encoder.stages:
            x = s(x)
            skips.append(x)
        for i, (t, st) in enumerate(zip(self.decoder.transpconvs, self.decoder.stages)):
            x = st(torch.cat([t(x), skips[-(i + 2)]], 1))
        return self.decoder.seg_layers[-1](x)


def _reference_nets(dims: int) -> list[nn.Module]:
    if PlainConvUNet is None:
        return [_HandPlainConvUNet(dims, 2, (4, 8, 16), 3)]
    kw = _dna_kwargs(dims, True)
    return [PlainConvUNet(2, 3, (4, 8, 16), _CONV[dims], 3, (1, 2, 2), 2, 3, 2, **kw),
            ResidualEncoderUNet(2, 3, (4, 8, 16), _CONV[dims], 3, (1, 2, 2), (1, 2, 3), 3, (1, 1), **kw)]


@pytest.mark.parametrize("dims", [2, 3])
def test_import_gives_equal_outputs(dims: int, tmp_path) -> None:
    for net in _reference_nets(dims):
        _perturb(net)
        path = tmp_path / f"{type(net).__name__}.pth"
        # nnU-Net's checkpoint layout, with the numpy scalars its logging holds
        torch.save({"network_weights": net.state_dict(), "current_epoch": 3, "trainer_name": "nnUNetTrainer",
                    "logging": {"mean_fg_dice": [np.float64(0.5), np.float32(0.25)]},
                    "_best_ema": np.float64(0.4), "inference_allowed_mirroring_axes": (0, 1),
                    "init_args": {"configuration": "3d_fullres", "plans": {"configurations": {}}, "fold": 0,
                                  "device": torch.device("cpu")}}, path)
        model = load_nnunet(path)
        report = model.nnunet_import_report
        x = torch.randn(2, 2, *([16] * dims))
        with torch.no_grad():
            assert torch.allclose(model(x), net(x), atol=1e-5), type(net).__name__
        # every tensor accounted for: mapped + alias + dropped (the unused deep-supervision head)
        accounted = set(report.mapped.values()) | set(report.aliases) | set(report.dropped)
        assert accounted == set(net.state_dict())
        assert set(report.dropped) == {"decoder.seg_layers.0.weight", "decoder.seg_layers.0.bias"}
        assert model.unetkit_arch == ("resenc-unet" if "Residual" in type(net).__name__ else "unet")


@needs_dna
def test_import_deep_supervision_heads_match() -> None:
    net = _perturb(PlainConvUNet(1, 3, (4, 8, 16), nn.Conv3d, 3, (1, 2, 2), 2, 2, 2, **_dna_kwargs(3, True, True)))
    model, report = nnunet_to_unetkit(net.state_dict(), deep_supervision=True)
    assert not report.dropped
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        for a, b in zip(model.eval()(x), net(x)):
            assert torch.allclose(a, b, atol=1e-5)


def test_import_rejects_unknown_and_unsupported_tensors() -> None:
    net = _HandPlainConvUNet(2, 1, (4, 8), 2)
    state = dict(net.state_dict())
    state["decoder.extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="decoder.extra.weight"):
        nnunet_to_unetkit(state)
    state = dict(net.state_dict())
    state["decoder.transpconvs.0.weight"] = torch.zeros(8, 4, 3, 2)  # stride 3: not a U-Net's
    with pytest.raises(CheckpointError, match="strides 1 or 2"):
        nnunet_to_unetkit(state)


def test_import_nnunet_cli(tmp_path) -> None:
    from typer.testing import CliRunner

    from unetkit.cli.main import app

    net = _perturb(_HandPlainConvUNet(2, 1, (4, 8), 2))
    torch.save({"network_weights": net.state_dict()}, tmp_path / "checkpoint_final.pth")
    out = tmp_path / "m.safetensors"
    runner = CliRunner()
    res = runner.invoke(app, ["import-nnunet", str(tmp_path / "checkpoint_final.pth"), "--out", str(out)])
    assert res.exit_code == 0, res.output
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        assert torch.allclose(unetkit.load_model(out)(x), net(x), atol=1e-5)
    torch.save({"network_weights": {"x": torch.zeros(1)}}, tmp_path / "bad.pth")
    res = runner.invoke(app, ["import-nnunet", str(tmp_path / "bad.pth"), "--out", str(tmp_path / "b.safetensors")])
    assert res.exit_code == 1 and "nnU-Net" in res.output


def test_load_pretrained_dispatches_nnunet_checkpoints(tmp_path) -> None:
    """`unetkit.load_pretrained(model, 'checkpoint_final.pth')` reaches the nnU-Net importer: the
    weights land in a unetkit model of the same shape and its outputs equal the source network's."""
    net = _reference_nets(2)[0]
    _perturb(net)
    path = tmp_path / "checkpoint_final.pth"
    torch.save({"network_weights": net.state_dict(), "init_args": {"fold": 0}, "_best_ema": np.float64(0.4)}, path)
    model = load_nnunet(path)  # the shape, built from the file
    for p in model.parameters():  # forget the weights: load_pretrained must bring them back
        nn.init.zeros_(p)
    report = unetkit.load_pretrained(model, path)
    assert report.format == "nnunet-v2" and report.loaded and not report.missing
    x = torch.randn(1, 2, 16, 16)
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), net(x), atol=1e-5)
