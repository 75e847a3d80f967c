"""The classic U-Net and the 2015 network: sizes, padding modes, parameter counts."""
from __future__ import annotations

import pytest
import torch

import unetkit
from unetkit.io.checkpoint import CheckpointError
from unetkit.models import count_parameters
from unetkit.models.unet import nearest_valid_sizes, valid_output_size


def test_issue_example_3d_odd_volume() -> None:
    model = unetkit.create_model("unet", spatial_dims=3, in_channels=1, num_classes=3, features=(8, 16, 32))
    with torch.no_grad():
        assert model(torch.randn(1, 1, 37, 41, 29)).shape == (1, 3, 37, 41, 29)


@pytest.mark.parametrize("up_mode", ["transpose", "nearest", "linear"])
@pytest.mark.parametrize("down_mode", ["maxpool", "conv"])
def test_same_mode_keeps_odd_sizes(up_mode: str, down_mode: str) -> None:
    model = unetkit.create_model("unet", features=(4, 8, 16, 32), up_mode=up_mode, down_mode=down_mode)
    for size in [(33, 47), (64, 65), (17, 16)]:
        with torch.no_grad():
            assert model(torch.randn(1, 1, *size)).shape[2:] == size


@pytest.mark.parametrize("norm", ["batch", "instance", "group", "layer", "none"])
@pytest.mark.parametrize("act", ["relu", "leakyrelu", "gelu", "silu"])
def test_norm_and_act_choices(norm: str, act: str) -> None:
    model = unetkit.create_model("unet", features=(4, 8), norm=norm, act=act, dropout=0.2)
    out = model(torch.randn(2, 1, 16, 16))
    assert out.shape == (2, 2, 16, 16)
    assert any(isinstance(m, torch.nn.Dropout2d) for m in model.modules())


def test_unknown_choices_are_named() -> None:
    with pytest.raises(ValueError, match="norm 'batchy'"):
        unetkit.create_model("unet", norm="batchy")
    with pytest.raises(ValueError, match="up_mode"):
        unetkit.create_model("unet", features=(4, 8), up_mode="pixelshuffle")
    with pytest.raises(KeyError, match="unknown model 'unetz'"):
        unetkit.create_model("unetz")


def paper_level_sizes(size: int, depth: int) -> list[int]:
    """Every feature-map size along the paper's figure 1, computed by hand from its rules."""
    sizes, s = [size], size
    for level in range(depth):
        s -= 2; sizes.append(s)
        s -= 2; sizes.append(s)
        if level < depth - 1:
            s //= 2; sizes.append(s)
    for _ in range(depth - 1):
        s *= 2; sizes.append(s)
        s -= 2; sizes.append(s)
        s -= 2; sizes.append(s)
    return sizes


def test_original_network_matches_figure_1() -> None:
    expected = paper_level_sizes(572, 5)
    assert expected[:7] == [572, 570, 568, 284, 282, 280, 140]
    assert expected[-3:] == [392, 390, 388]
    # widths do not change sizes: record every conv / pool / up-conv output of a narrow copy
    model = unetkit.create_model("unet-original", features=(2, 2, 2, 2, 2)).eval()
    seen: list[int] = []
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.MaxPool2d, torch.nn.ConvTranspose2d)) and m is not model.head[-1]:
            m.register_forward_hook(lambda mod, inp, out: seen.append(out.shape[-1]))
    with torch.no_grad():
        out = model(torch.randn(1, 1, 572, 572))
    assert out.shape == (1, 2, 388, 388)
    assert [572] + seen == expected


def test_original_network_full_width_maps_572_to_388() -> None:
    model = unetkit.create_model("unet-original").eval()
    assert model.output_size(572) == (388, 388)
    with torch.no_grad():
        assert model(torch.randn(1, 1, 572, 572)).shape == (1, 2, 388, 388)


def test_original_parameter_count_independent() -> None:
    def conv(cin: int, cout: int, k: int) -> int:
        return cin * cout * k * k + cout

    f = [64, 128, 256, 512, 1024]
    total = conv(1, 64, 3) + conv(64, 64, 3)
    for a, b in zip(f, f[1:]):
        total += conv(a, b, 3) + conv(b, b, 3)
    for a, b in zip(f[::-1], f[::-1][1:]):
        total += conv(a, b, 2) + conv(2 * b, b, 3) + conv(b, b, 3)  # up-conv 2x2, two 3x3
    total += conv(64, 2, 1)
    assert count_parameters(unetkit.create_model("unet-original")) == total


def test_classic_unet_parameter_count_with_batchnorm() -> None:
    def block(cin: int, cout: int) -> int:  # conv without bias + BN (weight, bias)
        return cin * cout * 9 + 2 * cout

    f = [8, 16, 32]
    total = block(3, 8) + block(8, 8) + sum(block(a, b) + block(b, b) for a, b in zip(f, f[1:]))
    total += sum(a * b * 4 + b + block(2 * b, b) + block(b, b) for a, b in zip(f[::-1], f[::-1][1:]))
    total += 8 * 4 + 4
    assert count_parameters(unetkit.create_model("unet", in_channels=3, num_classes=4, features=f)) == total


def test_valid_sizes_arithmetic() -> None:
    assert valid_output_size(572, 5) == 388
    with pytest.raises(ValueError, match="nearest valid sizes"):
        valid_output_size(570, 5)
    near = nearest_valid_sizes(500, 5, 2)
    assert len(near) == 4 and near[1] <= 500 < near[2]
    for s in near:
        out = valid_output_size(s, 5)
        assert out > 0
    model = unetkit.create_model("unet", features=(2, 4, 8), padding="valid")
    for s in model.valid_input_sizes(50):
        with torch.no_grad():
            assert model(torch.randn(1, 1, s, s)).shape[-1] == model.output_size(s)[0]


def test_load_rejects_corrupted_and_foreign_files(tmp_path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        unetkit.load_model(bad)
    model = unetkit.create_model("unet", features=(2, 4))
    path = unetkit.save_model(model, tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError, match="holds a 'unet' model"):
        unetkit.load_model(path, expected_arch="unet-original")
    with pytest.raises(CheckpointError, match="not built from the unetkit registry"):
        unetkit.save_model(torch.nn.Conv2d(1, 1, 1), tmp_path / "x.safetensors")


def test_cli_models_and_version() -> None:
    from typer.testing import CliRunner

    from unetkit.cli.main import app

    runner = CliRunner()
    result = runner.invoke(app, ["models", "unet*"])
    assert result.exit_code == 0, result.output
    params = count_parameters(unetkit.create_model("unet-original"))
    assert "unet-original" in result.output and f"{params:,}" in result.output
    assert runner.invoke(app, ["--version"]).output.startswith("unetkit ")
    assert runner.invoke(app, ["models", "nothing-like-this"]).exit_code == 1
