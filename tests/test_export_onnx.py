"""ONNX export + ONNX Runtime, and int8 quantisation, on tiny U-Nets; the benchmark harness and
the CLI verbs on tiny configurations. No timing assertions."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from unetkit.export import OnnxPredictor, export_onnx, image_tiles, quantize_int8  # noqa: E402
from unetkit.models import UNet  # noqa: E402


def _trained_like(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


@pytest.mark.parametrize("dims", [2, 3])
def test_onnx_export_matches_torch(tmp_path, dims: int) -> None:
    model = _trained_like(UNet(dims, 1, 2, features=(4, 8, 16)))
    size = 32 if dims == 2 else 16
    path = export_onnx(model, tmp_path / "m.onnx", (1, 1, *([size] * dims)))
    pred = OnnxPredictor(path)
    for shape in [(2, 1, *([size] * dims)), (1, 1, *([size + 8] * (dims - 1)), size * 2)]:  # dynamic batch + sizes
        x = torch.randn(shape)
        with torch.no_grad():
            want = model(x)
        got = pred(x)
        assert isinstance(got, torch.Tensor) and got.shape == want.shape
        assert (got - want).abs().max() <= 1e-4
    # numpy in, tensor out; module-like no-ops
    assert (pred.eval().to("cpu")(x.numpy()) - want).abs().max() <= 1e-4


def test_onnx_export_deep_supervision_outputs(tmp_path) -> None:
    model = _trained_like(UNet(2, 1, 3, features=(4, 8, 16), deep_supervision=True))
    path = export_onnx(model, tmp_path / "ds.onnx", (1, 1, 32, 32))
    x = torch.randn(1, 1, 32, 32)
    got = OnnxPredictor(path)(x)
    with torch.no_grad():
        want = model(x)
    assert isinstance(got, list) and len(got) == len(want)
    assert max(float((a - b).abs().max()) for a, b in zip(got, want)) <= 1e-4


def test_onnx_export_refuses_to_overwrite(tmp_path) -> None:
    model = UNet(2, 1, 2, features=(4, 8)).eval()
    path = export_onnx(model, tmp_path / "m.onnx", (1, 1, 16, 16))
    with pytest.raises(FileExistsError):
        export_onnx(model, path, (1, 1, 16, 16), overwrite=False)


def _blobs(n: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images of bright discs on a noisy background, and their masks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    imgs, masks = [], []
    for _ in range(n):
        m = np.zeros((size, size), bool)
        for _ in range(4):
            cy, cx, r = rng.integers(4, size - 4, 2).tolist() + [rng.integers(3, 6)]
            m |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        imgs.append(np.clip(0.8 * m + rng.normal(0.1, 0.05, m.shape), 0, 1))
        masks.append(m)
    return (torch.tensor(np.stack(imgs)[:, None], dtype=torch.float32),
            torch.tensor(np.stack(masks)[:, None], dtype=torch.long))


def test_int8_quantised_model_close_to_fp32(tmp_path) -> None:
    torch.manual_seed(0)
    x, y = _blobs(8, 32, seed=0)
    model = UNet(2, 1, 2, features=(8, 16, 32))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(25):  # a quick fit so the logits carry a real segmentation
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y[:, 0])
        loss.backward()
        opt.step()
    model.eval()
    calib = [x[i:i + 4] for i in range(0, 8, 4)]
    pred = quantize_int8(model, calib, tmp_path / "q.onnx")
    held, _ = _blobs(4, 32, seed=1)
    with torch.no_grad():
        fp = model(held)
    q = pred(held)
    assert q.shape == fp.shape
    corr = np.corrcoef(q.flatten().numpy(), fp.flatten().numpy())[0, 1]
    assert corr > 0.99
    a, b = q.argmax(1).bool(), fp.argmax(1).bool()
    agreement_dice = 2 * (a & b).sum().item() / max(a.sum().item() + b.sum().item(), 1)
    assert agreement_dice > 0.95
    # the file really holds integer weights
    import onnx

    graph = onnx.load(str(tmp_path / "q.onnx")).graph
    assert any(n.op_type in ("QuantizeLinear", "QLinearConv") for n in graph.node)
    assert any(t.data_type == onnx.TensorProto.INT8 for t in graph.initializer)


def test_image_tiles_grid() -> None:
    img = np.arange(10 * 12, dtype=np.float32).reshape(10, 12)
    tiles = image_tiles(img, 4)
    assert tiles.shape == (2 * 3, 1, 4, 4)
    assert np.array_equal(tiles[1, 0], img[0:4, 4:8])
    with pytest.raises(ValueError):
        image_tiles(img, 16)


def test_benchmark_harness_tiny(tmp_path) -> None:
    from unetkit.export.benchmark import benchmark_model, format_report

    report = benchmark_model("unet", size=32, batch=2, repeats=2, backends=("eager", "optimized", "onnx"),
                             compile=False, model_kwargs={"features": (4, 8)}, matmul_n=256)
    rows = {r["name"]: r for r in report["rows"] if r["kind"] != "matmul"}
    assert {"eager", "optimized", "onnx", "train-eager", "train-channels-last"} <= set(rows)
    assert report["rows"][0]["kind"] == "matmul" and report["rows"][0]["images_per_s"] is None
    for r in rows.values():
        assert r["repeats"] == 2 and r["median_s"] > 0 and r["images_per_s"] > 0
        assert r["max_abs_diff"] is not None and r["max_abs_diff"] <= 1e-4
    assert rows["eager"]["speedup_vs_reference"] == 1.0
    assert report["machine"]["matmul_gflops"] > 0
    assert "| optimized |" in format_report(report)
    json.dumps(report)  # JSON-able


def test_cli_benchmark_and_export(tmp_path) -> None:
    from typer.testing import CliRunner

    from unetkit import save_model
    from unetkit.cli.main import app

    runner = CliRunner()
    res = runner.invoke(app, ["benchmark", "unet", "--size", "32", "--batch", "1", "--repeats", "1",
                              "--no-train", "--backends", "eager,optimized", "--no-compile", "--tiny", "--json",
                              "--matmul-size", "256"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert [r["name"] for r in data["rows"] if r["kind"] != "matmul"] == ["eager", "optimized"]

    model = UNet(2, 1, 2, features=(4, 8)).eval()
    ckpt = save_model(model, tmp_path / "m.safetensors")
    out = tmp_path / "m.onnx"
    res = runner.invoke(app, ["export", str(ckpt), "--format", "onnx", "--out", str(out), "--size", "32"])
    assert res.exit_code == 0, res.output
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        assert (OnnxPredictor(out)(x) - model(x)).abs().max() <= 1e-4
    res = runner.invoke(app, ["export", str(ckpt), "--format", "onnx", "--out", str(out), "--size", "32"])
    assert res.exit_code == 1 and "exists" in res.output  # no silent overwrite
    calib = tmp_path / "calib"
    calib.mkdir()
    from PIL import Image

    for i in range(2):
        Image.fromarray((np.random.default_rng(i).random((40, 40)) * 255).astype(np.uint8)).save(calib / f"{i}.png")
    q = tmp_path / "q.onnx"
    res = runner.invoke(app, ["export", str(ckpt), "--format", "int8", "--out", str(q), "--size", "32",
                              "--calibration", str(calib)])
    assert res.exit_code == 0, res.output
    xc = torch.rand(1, 1, 32, 32)  # inside the calibration images' range
    ref = model(xc).detach()
    assert (OnnxPredictor(q)(xc) - ref).abs().max() < 0.1 * ref.abs().max()  # int8: close, not equal
    res = runner.invoke(app, ["export", str(ckpt), "--format", "int8", "--out", str(tmp_path / "q2.onnx")])
    assert res.exit_code == 1 and "--calibration" in res.output
    res = runner.invoke(app, ["export", str(tmp_path / "missing.safetensors"), "--format", "onnx",
                              "--out", str(tmp_path / "x.onnx")])
    assert res.exit_code == 1


def test_fast_paths_drive_sliding_window_inference(tmp_path) -> None:
    sw = pytest.importorskip("unetkit.inference.sliding_window")
    from unetkit.export import optimize_for_inference

    model = _trained_like(UNet(2, 1, 2, features=(4, 8, 16)))
    image = torch.rand(1, 1, 40, 56)
    kw = dict(roi_size=32, overlap=0.25, batch_size=4)
    want = sw.sliding_window_inference(image, model, **kw)
    fast = sw.sliding_window_inference(image, optimize_for_inference(model, compile=False), **kw)
    onnx_pred = OnnxPredictor(export_onnx(model, tmp_path / "m.onnx", (1, 1, 32, 32)))
    ort = sw.sliding_window_inference(image, onnx_pred, **kw)
    assert (fast - want).abs().max() <= 1e-5
    assert (ort - want).abs().max() <= 1e-4
