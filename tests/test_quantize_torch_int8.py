"""Torch-native static int8 (oneDNN): accuracy against an independent float64 computation, file
round trip, clear errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import unetkit
from unetkit.errors import ConfigError, UnsupportedError
from unetkit.export import onednn_int8
from unetkit.export.onednn_int8 import Int8Conv, quantize_torch_int8, save_model_int8

# torch 2.13 marks quantize_per_tensor deprecated; the module silences it outside pytest
pytestmark = pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")
needs_onednn = pytest.mark.skipif(onednn_int8.onednn_int8_available() is not None,
                                  reason=f"oneDNN int8 unavailable: {onednn_int8.onednn_int8_available()}")


def _fake_quant_conv(x: torch.Tensor, layer: Int8Conv) -> torch.Tensor:
    """float64 reference of an Int8Conv: uint8 affine input (round half to even, clip 0..255) and
    int8 weights times their scales, conv in float64."""
    s, zp = float(layer.input_scale), int(layer.input_zero_point)
    xq = (torch.clamp(torch.round(x.double() / s) + zp, 0, 255) - zp) * s
    w = layer.weight_int8.double() * layer.weight_scale.double().view(-1, *([1] * layer.spatial_dims + [1]))
    conv = F.conv3d if layer.spatial_dims == 3 else F.conv2d
    b = None if layer.bias is None else layer.bias.double()
    return conv(xq, w, b, layer.stride, layer.padding, layer.dilation, layer.groups)


@needs_onednn
@pytest.mark.parametrize("dims,stride,cin,cout,k", [(2, 1, 3, 8, 3), (2, 2, 8, 4, 3), (3, 1, 1, 6, 3),
                                                     (3, 2, 6, 5, 3), (3, 1, 8, 2, 1)])
def test_int8_conv_error_within_quantisation_bound(dims, stride, cin, cout, k) -> None:
    torch.manual_seed(0)
    conv = (nn.Conv3d if dims == 3 else nn.Conv2d)(cin, cout, k, stride=stride, padding=k // 2)
    x = torch.randn(2, cin, *([10] * dims)) * 2 + 0.5
    layer = Int8Conv(conv)
    layer.set_weight(conv.weight, conv.bias)
    layer.set_input_range(float(x.min()), float(x.max()))
    with torch.no_grad():
        y = layer(x).double()
        # the kernel computes exactly the fake-quantised conv (up to fp32 rounding)
        ref = _fake_quant_conv(x, layer)
        np.testing.assert_allclose(y.numpy(), ref.numpy(), rtol=0, atol=1e-5 * float(ref.abs().max()) + 1e-6)
        # and its error to the fp32 conv is within the bound the two quantisation steps give:
        # |conv(xq, wq) - conv(x, w)| <= conv(1, |wq|) * s_x / 2 + conv(|x|, 1) * s_w / 2
        fn = F.conv3d if dims == 3 else F.conv2d
        exact = fn(x.double(), conv.weight.double(), conv.bias.double(), conv.stride, conv.padding)
        wq = layer.dequantized_weight().double()
        s_x = float(layer.input_scale)
        s_w = layer.weight_scale.double().view(1, -1, *([1] * dims))
        bound = (fn(torch.ones_like(x, dtype=torch.float64), wq.abs(), None, conv.stride, conv.padding) * s_x / 2
                 + fn(x.double().abs(), torch.ones_like(wq), None, conv.stride, conv.padding) * s_w / 2)
    err = (y - exact).abs()
    assert bool((err <= bound * 1.0001 + 1e-5).all()), float((err - bound).max())
    assert float(err.max()) > 0  # it really is quantised


def _tiny_unet(dims: int, norm: str) -> nn.Module:
    torch.manual_seed(1)
    return unetkit.create_model("unet", spatial_dims=dims, in_channels=1, num_classes=3, features=(4, 8, 16),
                                norm=norm).eval()


def _reference_model(qmodel: nn.Module) -> nn.Module:
    """A float64 copy of the int8 model whose Int8Convs are replaced by the fake-quantised conv."""
    import copy

    ref = copy.deepcopy(qmodel).double()
    ref._forward_hooks.clear()

    class _Fake(nn.Module):
        def __init__(self, layer: Int8Conv) -> None:
            super().__init__()
            self.layer = layer

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return _fake_quant_conv(x, self.layer)

    for name in qmodel.int8_layers:
        parent, _, child = name.rpartition(".")
        owner = ref.get_submodule(parent) if parent else ref
        setattr(owner, child, _Fake(copy.deepcopy(qmodel.get_submodule(name))))
    return ref


@needs_onednn
@pytest.mark.parametrize("dims,norm,shape", [(2, "batch", (32, 32)), (3, "instance", (8, 16, 16))])
@pytest.mark.parametrize("calibration", ["minmax", "percentile"])
def test_int8_unet_matches_fake_quantised_reference_and_fp32(dims, norm, shape, calibration) -> None:
    model = _tiny_unet(dims, norm)
    if norm == "batch":  # non-trivial running statistics, so BN folding matters
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    gen = torch.Generator().manual_seed(2)
    calib = [torch.rand(2, 1, *shape, generator=gen) for _ in range(3)]
    x = torch.rand(1, 1, *shape, generator=gen)
    q = quantize_torch_int8(model, calib, calibration=calibration)
    convs = [n for n, m in model.named_modules() if type(m) in (nn.Conv2d, nn.Conv3d)]
    assert q.int8_layers == convs and all(isinstance(q.get_submodule(n), Int8Conv) for n in convs)
    assert any(type(m).__name__.startswith("ConvTranspose") for m in q.modules())  # left in fp32
    with torch.no_grad():
        fp32, out = model(x), q(x)
        ref = _reference_model(q)(x.double())
    assert out.shape == fp32.shape and out.dtype == torch.float32 and out.is_contiguous()
    scale = float(fp32.abs().max())
    # the int8 network computes the fake-quantised network, up to fp32 rounding (seen: < 1e-7)
    assert float((out.double() - ref).abs().max()) < 1e-5 * scale
    # and is close to fp32 (a sanity bound: seen 3-8 % of the logit range on these random
    # networks; the per-layer test holds each conv to its quantisation bound)
    diff = float((out - fp32).abs().max())
    assert 0 < diff < 0.15 * scale
    with torch.no_grad():
        assert float((model(x) - fp32).abs().max()) == 0  # the original model is untouched


@needs_onednn
def test_int8_file_round_trip_is_bit_exact(tmp_path) -> None:
    model = _tiny_unet(3, "batch")
    q = quantize_torch_int8(model, [torch.rand(2, 1, 8, 16, 16)])
    path = save_model_int8(q, tmp_path / "q.safetensors", extra={"preprocess": {"mode": "none"}})
    back = unetkit.load_model(path)
    assert back.unetkit_meta["extra"]["preprocess"] == {"mode": "none"}
    assert back.int8_layers == q.int8_layers
    for name in q.int8_layers:
        a, b = q.get_submodule(name), back.get_submodule(name)
        assert b.weight_int8.dtype == torch.int8 and torch.equal(a.weight_int8, b.weight_int8)
        assert torch.equal(a.weight_scale, b.weight_scale) and torch.equal(a.input_scale, b.input_scale)
        assert torch.equal(a.input_zero_point, b.input_zero_point)
    x = torch.rand(1, 1, 8, 16, 16)
    with torch.no_grad():
        assert torch.equal(q(x), back(x))
    # int8 weights: the file is much smaller than fp32
    fp32 = unetkit.save_model(model, tmp_path / "fp32.safetensors")
    assert path.stat().st_size < 0.5 * fp32.stat().st_size
    # a damaged record is a clear error naming the file
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    state = load_file(str(path))
    state.pop(f"{q.int8_layers[0]}.weight_int8")
    save_file(state, str(tmp_path / "bad.safetensors"), metadata=meta)
    from unetkit.io.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="bad.safetensors.*int8"):
        unetkit.load_model(tmp_path / "bad.safetensors")


def test_clear_errors(monkeypatch) -> None:
    with pytest.raises(ConfigError, match="calibration must be one of"):
        quantize_torch_int8(_tiny_unet(2, "batch"), [torch.rand(1, 1, 16, 16)], calibration="entropy")
    if onednn_int8.onednn_int8_available() is None:
        with pytest.raises(ConfigError, match="no zero-padded Conv2d / Conv3d"):
            quantize_torch_int8(nn.Sequential(nn.ReLU(), nn.MaxPool2d(2)), [torch.rand(1, 1, 8, 8)])
        with pytest.raises(ConfigError, match="at least one calibration batch"):
            quantize_torch_int8(_tiny_unet(2, "batch"), [])

    class _NoOnednn:
        def __getattr__(self, name):
            raise AttributeError(name)

    monkeypatch.setattr(torch.ops, "onednn", _NoOnednn())
    assert "qconv_pointwise" in onednn_int8.onednn_int8_available()
    with pytest.raises(UnsupportedError, match="ONNX Runtime int8 path.*quantize_int8"):
        quantize_torch_int8(_tiny_unet(2, "batch"), [torch.rand(1, 1, 16, 16)])


@needs_onednn
def test_cli_export_int8_torch_then_predict(tmp_path) -> None:
    from PIL import Image
    from typer.testing import CliRunner

    from unetkit.cli.main import app

    model = _tiny_unet(2, "batch")
    ckpt = unetkit.save_model(model, tmp_path / "m.safetensors", extra={"threshold": 0.4})
    calib = tmp_path / "calib"
    calib.mkdir()
    for i in range(2):
        Image.fromarray((np.random.default_rng(i).random((40, 40)) * 255).astype(np.uint8)).save(calib / f"{i}.png")
    out = tmp_path / "q.safetensors"
    runner = CliRunner()
    res = runner.invoke(app, ["export", str(ckpt), "--format", "int8-torch", "--out", str(out), "--size", "32"])
    assert res.exit_code == 1 and "--calibration" in res.output
    res = runner.invoke(app, ["export", str(ckpt), "--format", "int8-torch", "--out", str(out), "--size", "32",
                              "--calibration", str(calib)])
    assert res.exit_code == 0, res.output
    q = unetkit.load_model(out)
    assert q.int8_layers and q.unetkit_meta["extra"] == {"threshold": 0.4}
    x = torch.rand(1, 1, 32, 32)  # inside the calibration range (images normalised to 0..1)
    with torch.no_grad():
        ref = model(x)
        assert 0 < float((q(x) - ref).abs().max()) < 0.15 * float(ref.abs().max())
    res = runner.invoke(app, ["predict", str(out), str(calib / "0.png"), "-o", str(tmp_path / "pred"),
                              "--roi", "32", "--no-overlay"])
    assert res.exit_code == 0, res.output
    assert list((tmp_path / "pred" / "masks").iterdir())


@needs_onednn
def test_cpu_without_vnni_gets_7bit_weights(monkeypatch, tmp_path) -> None:
    """Without VNNI / AMX, u8 x s8 pair sums saturate at 16 bits for 8-bit weights: use -63..63."""
    model = _tiny_unet(2, "batch")
    calib = [torch.rand(2, 1, 32, 32)]
    monkeypatch.setattr(onednn_int8, "cpu_has_int8_dot_product", lambda: False)
    q = quantize_torch_int8(model, calib)
    codes = torch.cat([q.get_submodule(n).weight_int8.flatten() for n in q.int8_layers]).int()
    assert int(codes.abs().max()) == 63 and q.int8_record["weight_levels"] == 63
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        out, ref = q(x), _reference_model(q)(x.double())
    assert float((out.double() - ref).abs().max()) < 1e-5 * float(ref.abs().max())
    monkeypatch.setattr(onednn_int8, "cpu_has_int8_dot_product", lambda: True)
    q8 = quantize_torch_int8(model, calib)
    assert int(torch.cat([q8.get_submodule(n).weight_int8.flatten() for n in q8.int8_layers]).abs().max()) == 127
    path = save_model_int8(q8, tmp_path / "q8.safetensors")
    monkeypatch.setattr(onednn_int8, "cpu_has_int8_dot_product", lambda: False)
    with pytest.warns(RuntimeWarning, match="saturate"):  # an 8-bit file loaded on such a CPU
        unetkit.load_model(path)
