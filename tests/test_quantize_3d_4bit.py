"""int8 for 3D models (calibrated on volume patches) and 4-bit weight-only model files."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn as nn

import unetkit
from unetkit.export.quantize import (
    dequantize_tensor_4bit, quantize_tensor_4bit, save_model_4bit, volume_patches,
)
from unetkit.io.checkpoint import CheckpointError


def _reference_q4(w: np.ndarray, group: int | None) -> np.ndarray:
    """Independent numpy 4-bit fake-quantisation: per output channel / group, scale max|w|/7 in
    fp16, round half to even, clip to -8..7."""
    flat = w.reshape(w.shape[0], -1).astype(np.float64)
    g = flat.shape[1] if group is None else group
    out = np.empty_like(flat)
    for o in range(flat.shape[0]):
        for s in range(0, flat.shape[1], g):
            blk = flat[o, s:s + g]
            scale = float(np.float16(np.abs(blk).max() / 7.0))
            out[o, s:s + g] = np.clip(np.round(blk / scale), -8, 7) * scale if scale > 0 else 0.0
    return out.reshape(w.shape)


@pytest.mark.parametrize("shape,group", [((6, 5, 3, 3), 32), ((6, 5, 3, 3), None), ((4, 3, 3, 3, 3), 8),
                                         ((3, 7), 4)])
def test_4bit_tensor_matches_independent_quantiser(shape, group) -> None:
    w = torch.randn(shape)
    packed, scale = quantize_tensor_4bit(w, group)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-w.numel() // 2)  # two weights per byte
    back = dequantize_tensor_4bit(packed, scale, shape, group)
    np.testing.assert_allclose(back.numpy(), _reference_q4(w.numpy(), group), rtol=0, atol=1e-6)
    # error at most half a step of each weight's own scale
    step = scale.float().repeat_interleave(group or int(np.prod(shape[1:])), 1)[:, :int(np.prod(shape[1:]))]
    assert ((back - w).abs().reshape(shape[0], -1) <= step / 2 + 1e-6).all()


def test_4bit_model_file_round_trip(tmp_path) -> None:
    torch.manual_seed(0)
    model = unetkit.create_model("unet", features=(8, 16, 32, 64)).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    fp32 = unetkit.save_model(model, tmp_path / "fp32.safetensors", extra={"preprocess": {"mode": "minmax"}})
    model = unetkit.load_model(fp32)
    q4 = save_model_4bit(model, tmp_path / "q4.safetensors", group_size=32)
    assert os.path.getsize(q4) < os.path.getsize(fp32) / 5
    loaded = unetkit.load_model(q4)
    assert loaded.unetkit_meta["extra"] == {"preprocess": {"mode": "minmax"}}  # predictors read the same spec
    want, got = model.state_dict(), loaded.state_dict()
    for name, t in want.items():
        if t.is_floating_point() and t.dim() >= 2:
            packed, scale = quantize_tensor_4bit(t, 32)
            assert torch.equal(got[name], dequantize_tensor_4bit(packed, scale, t.shape, 32)), name
            assert not torch.equal(got[name], t)
        else:  # biases, norm parameters and statistics: unchanged, bit for bit
            assert torch.equal(got[name], t), name
    # the 4-bit model computes the fp32 model's function, not just any function of this shape: its
    # logits stay far closer to the fp32 logits than those of the same network with other weights
    # (a random He-initialised net amplifies 4-bit noise, so the argmax check is for trained models:
    # benchmarks/bench_quant_demo.py)
    torch.manual_seed(1)
    other = unetkit.create_model("unet", features=(8, 16, 32, 64)).eval()
    other.load_state_dict({k: (v if k.endswith(("running_mean", "running_var")) else other.state_dict()[k])
                           for k, v in model.state_dict().items()})
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        a, b, c = model(x), loaded(x), other(x)
    assert (a - b).norm() < 0.5 * (a - c).norm()
    with pytest.raises(FileExistsError):
        save_model_4bit(model, q4)


def test_4bit_damaged_file_is_a_clear_error(tmp_path) -> None:
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    model = unetkit.create_model("unet", features=(4, 8)).eval()
    q4 = save_model_4bit(model, tmp_path / "q4.safetensors", group_size=None)
    with safe_open(str(q4), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(q4))
    key = next(k for k in tensors if k.endswith(".q4scale"))
    tensors[key] = tensors[key][:, :0]
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match="4-bit"):
        unetkit.load_model(tmp_path / "bad.safetensors")


def test_volume_patches_grid() -> None:
    vol = np.arange(20 * 24 * 28, dtype=np.float32).reshape(20, 24, 28)
    p = volume_patches(vol, 8, stride=(8, 8, 10))
    assert p.shape == (2 * 3 * 3, 1, 8, 8, 8)
    np.testing.assert_array_equal(p[1, 0], vol[0:8, 0:8, 10:18])
    assert volume_patches(vol[None], (4, 8, 8), count=5).shape == (5, 1, 4, 8, 8)
    with pytest.raises(ValueError, match="smaller"):
        volume_patches(vol, 32)


def test_int8_3d_calibrated_on_patches_close_to_fp32(tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    from unetkit.export import quantize_int8

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    # blobs: bright balls on noise, and a quick fit so the logits carry a real segmentation
    zz, yy, xx = torch.meshgrid(*[torch.arange(16.0)] * 3, indexing="ij")

    def blobs(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for _ in range(n):
            c = torch.randint(4, 12, (3,), generator=g).float()
            m = ((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2) < 9
            xs.append(m.float() + 0.3 * torch.randn(16, 16, 16, generator=g))
            ys.append(m.long())
        return torch.stack(xs)[:, None], torch.stack(ys)

    x, y = blobs(6)
    model = unetkit.create_model("unet", spatial_dims=3, features=(4, 8, 16), norm="instance", act="leakyrelu",
                                 down_mode="stride")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(15):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    calib = volume_patches(torch.cat([x[i, 0] for i in range(4)], 0).numpy(), 16)  # real patches
    pred = quantize_int8(model, [calib[i:i + 2] for i in range(0, len(calib), 2)], tmp_path / "q3d.onnx")
    held, _ = blobs(2)
    with torch.no_grad():
        fp = model(held)
    q = pred(held)
    assert q.shape == fp.shape
    assert np.corrcoef(q.flatten().numpy(), fp.flatten().numpy())[0, 1] > 0.98
    assert (q.argmax(1) == fp.argmax(1)).float().mean() > 0.95
    import onnx

    kinds = {n.op_type for n in onnx.load(str(tmp_path / "q3d.onnx")).graph.node}
    assert "QuantizeLinear" in kinds and "DequantizeLinear" in kinds
