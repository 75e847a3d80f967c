"""Registry-wide model tests: every registered model x {2D, 3D where it applies}."""
from __future__ import annotations

import pytest
import torch

import unetkit
from unetkit.models import count_parameters, list_models, model_info

MODELS = list_models()
CASES = [(name, dims) for name in MODELS for dims in model_info(name).info["dims"]]


def build(name: str, dims: int, **overrides) -> torch.nn.Module:
    kwargs = {"spatial_dims": dims, "in_channels": 2, "num_classes": 3, **model_info(name).tiny, **overrides}
    return unetkit.create_model(name, **kwargs)


def input_size(name: str, dims: int) -> list[int]:
    """An awkward input size: odd and not a power of two (valid-mode models get a valid size)."""
    if model_info(name).info.get("any_size", True):
        return [37, 42, 29][:dims] if dims == 3 else [45, 38]
    model = build(name, dims)
    return [model.valid_input_sizes(60, 1)[-1]] * dims


@pytest.mark.parametrize("name,dims", CASES)
def test_forward_shape_any_size(name: str, dims: int) -> None:
    model = build(name, dims).eval()
    size = input_size(name, dims)
    with torch.no_grad():
        out = model(torch.randn(2, 2, *size))
    expected = list(model.output_size(size)) if hasattr(model, "output_size") else size
    assert tuple(out.shape) == (2, 3, *expected)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name,dims", CASES)
def test_backward_reaches_every_parameter(name: str, dims: int) -> None:
    model = build(name, dims).train()
    size = input_size(name, dims)
    out = model(torch.randn(2, 2, *size))
    out.square().mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"


@pytest.mark.parametrize("name,dims", [c for c in CASES if model_info(c[0]).info["deep_supervision"]])
def test_deep_supervision_list_highest_resolution_first(name: str, dims: int) -> None:
    model = build(name, dims, deep_supervision=True).eval()
    size = input_size(name, dims)
    with torch.no_grad():
        outs = model(torch.randn(1, 2, *size))
    assert isinstance(outs, list) and len(outs) >= 2
    areas = [o.shape[2:].numel() for o in outs]
    assert areas == sorted(areas, reverse=True)  # U-Net++'s heads all sit at full resolution
    assert list(outs[0].shape[2:]) == list(model.output_size(size) if hasattr(model, "output_size") else size)
    assert all(o.shape[:2] == (1, 3) for o in outs)


@pytest.mark.parametrize("name,dims", CASES)
def test_save_load_round_trip_bit_exact(name: str, dims: int, tmp_path) -> None:
    model = build(name, dims).eval()
    path = unetkit.save_model(model, tmp_path / "m.safetensors")
    loaded = unetkit.load_model(path)
    x = torch.randn(1, 2, *input_size(name, dims))
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert loaded.unetkit_arch == name
    with pytest.raises(FileExistsError):
        unetkit.save_model(model, path)


@pytest.mark.parametrize("name", MODELS)
def test_models_listed_by_pattern(name: str) -> None:
    assert name in list_models(name[:3] + "*")
