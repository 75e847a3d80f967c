"""ONNX export of every model flagged onnx=True (tiny configuration): onnxruntime agrees with
torch to 1e-4."""
from __future__ import annotations

import io
import warnings

import pytest
import torch

import unetkit
from unetkit.models import list_models, model_info

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

CASES = [(n, model_info(n).info["dims"][-1]) for n in list_models() if model_info(n).info.get("onnx")]


@pytest.mark.parametrize("name,dims", CASES)
def test_onnx_export_matches_torch(name: str, dims: int) -> None:
    entry = model_info(name)
    model = unetkit.create_model(name, spatial_dims=dims, in_channels=2, num_classes=3, **entry.tiny).eval()
    if entry.info.get("any_size", True):
        size = [23, 26, 19][:dims] if dims == 3 else [45, 38]
    else:
        size = [model.valid_input_sizes(60, 1)[-1]] * dims
    x = torch.randn(1, 2, *size)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shape-dependent Python branches
        # the TorchScript exporter: fast and reliable for these graphs (static input shape)
        torch.onnx.export(model, (x,), buffer, dynamo=False, opset_version=17, input_names=["image"],
                          output_names=["logits"])
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        expected = model(x).numpy()
    assert out.shape == expected.shape
    assert abs(out - expected).max() < 1e-4
