"""optimize_for_inference(compile="auto") on the CPU: the probe keeps the compiled model only when
it equals eager and is faster, caches that decision, runs the compiled call only on its shape
(chunked + padded batches), falls back to eager without a compiler; Predictor(fast=True) gets it;
int8 models compile with the quantiser in the graph. No timing is asserted (timers are faked)."""
from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import torch

import unetkit
from unetkit.export import optimize
from unetkit.export.optimize import optimize_for_inference


def _unet3d(features=(4, 8)) -> torch.nn.Module:
    torch.manual_seed(0)
    return unetkit.create_model("unet", spatial_dims=3, in_channels=1, num_classes=2, features=features,
                                norm="instance", act="leakyrelu", down_mode="stride").eval()


@pytest.fixture()
def probe_env(tmp_path, monkeypatch):
    """Empty probe caches, no GFLOP floor (tiny models get probed)."""
    monkeypatch.setenv("UNETKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(optimize, "_LAYOUT_CACHE", {})
    monkeypatch.setattr(optimize, "CPU_COMPILE_MIN_GFLOPS", 0.0)
    return tmp_path


def _fake_compile(monkeypatch) -> list[tuple[int, ...]]:
    """torch.compile replaced by a pass-through that records the shapes it is called on."""
    calls: list[tuple[int, ...]] = []

    class Recorded(torch.nn.Module):  # torch.compile returns a module too
        def __init__(self, module: torch.nn.Module) -> None:
            super().__init__()
            self.module = module

        def forward(self, x: torch.Tensor) -> Any:
            calls.append(tuple(x.shape))
            return self.module(x)

    def fake(module, **_kw):
        return Recorded(module)

    monkeypatch.setattr(torch, "compile", fake)
    return calls


def _timer(monkeypatch, eager_s: float, compiled_s: float) -> list[int]:
    """`_time_once` stand-in: the probe times eager then compiled in each round."""
    count = [0]

    def fake(fn):
        fn()
        count[0] += 1
        return eager_s if count[0] % 2 == 1 else compiled_s

    monkeypatch.setattr(optimize, "_time_once", fake)
    return count


def _stored(cache_dir) -> dict[str, Any]:
    return {k: v for k, v in json.loads((cache_dir / "layout_probe.json").read_text()).items() if "|compile|" in k}


def test_probe_keeps_faster_compiled_caches_it_and_guards_shapes(probe_env, monkeypatch) -> None:
    calls = _fake_compile(monkeypatch)
    timed = _timer(monkeypatch, eager_s=1.0, compiled_s=0.5)
    model = _unet3d()
    x = torch.randn(2, 1, 16, 16, 16)
    fast = optimize_for_inference(model, x, compile="auto", channels_last=False)
    assert fast.info["compiled"] and fast.compiled_shape == (2, 1, 16, 16, 16), fast.info
    assert list(_stored(probe_env).values()) == [True]
    with torch.no_grad():
        want = model(torch.cat([x, x[:1]]))
    calls.clear()
    got = fast(torch.cat([x, x[:1]]))  # batch 3: a chunk of 2, then 1 padded to 2
    assert calls == [(2, 1, 16, 16, 16)] * 2
    assert (got - want).abs().max() <= 1e-5
    calls.clear()
    other = torch.randn(1, 1, 8, 8, 8)  # another window size: eager, never a silent recompile
    with torch.no_grad():
        assert (fast(other) - model(other)).abs().max() <= 1e-5
    assert calls == []
    # the cached decision is respected: compiled again, no timing
    before = timed[0]
    again = optimize_for_inference(model, x, compile="auto", channels_last=False)
    assert again.info["compiled"] and timed[0] == before


@pytest.mark.parametrize("compiled_s", [1.0, 0.51])  # slower; or faster by 2%, within timing noise
def test_probe_keeps_eager_when_compiled_is_slower_and_then_skips_compiling(probe_env, monkeypatch,
                                                                            compiled_s) -> None:
    calls = _fake_compile(monkeypatch)
    _timer(monkeypatch, eager_s=0.52, compiled_s=compiled_s)
    model = _unet3d()
    x = torch.randn(1, 1, 16, 16, 16)
    fast = optimize_for_inference(model, x, compile="auto", channels_last=False)
    assert not fast.info["compiled"] and "not faster" in fast.info["compile_note"]
    assert list(_stored(probe_env).values()) == [False]
    optimize._LAYOUT_CACHE.clear()  # a new process: the decision comes from the file

    def boom(*_a, **_k):
        raise AssertionError("compiled despite the cached 'eager' decision")

    monkeypatch.setattr(torch, "compile", boom)
    again = optimize_for_inference(model, x, compile="auto", channels_last=False)
    assert not again.info["compiled"] and "cached" in again.info["compile_note"]
    with torch.no_grad():
        assert (again(x) - model(x)).abs().max() <= 1e-5
    assert calls  # the first build did try the compiled model


def test_probe_rejects_a_compiled_model_that_differs(probe_env, monkeypatch) -> None:
    class Wrong(torch.nn.Module):
        def __init__(self, module: torch.nn.Module) -> None:
            super().__init__()
            self.module = module

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.module(x) + 1e-2

    monkeypatch.setattr(torch, "compile", lambda module, **_kw: Wrong(module))
    _timer(monkeypatch, eager_s=1.0, compiled_s=0.1)
    model = _unet3d()
    x = torch.randn(1, 1, 16, 16, 16)
    fast = optimize_for_inference(model, x, compile="auto", channels_last=False)
    assert not fast.info["compiled"] and "differs" in fast.info["compile_note"]
    assert list(_stored(probe_env).values()) == [False]


def test_no_compiler_keeps_eager(probe_env, monkeypatch) -> None:
    monkeypatch.setattr(optimize, "compile_available", lambda: (False, "no C++ compiler (mocked)"))
    calls = _fake_compile(monkeypatch)
    model = _unet3d()
    x = torch.randn(1, 1, 16, 16, 16)
    fast = optimize_for_inference(model, x, compile="auto", channels_last=False)
    assert not fast.info["compiled"] and fast.info["compile_note"] == "no C++ compiler (mocked)"
    assert calls == []
    with torch.no_grad():
        assert (fast(x) - model(x)).abs().max() <= 1e-5


def test_cpu_auto_does_not_compile_2d_or_tiny_models(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("UNETKIT_CACHE", str(tmp_path))
    calls = _fake_compile(monkeypatch)
    model2d = unetkit.create_model("unet", spatial_dims=2, in_channels=1, num_classes=2, features=(4, 8))
    assert not optimize_for_inference(model2d, (1, 1, 32, 32), compile="auto").info["compiled"]
    small = optimize_for_inference(_unet3d(), (1, 1, 16, 16, 16), compile="auto")  # default 1 GFLOP floor
    assert not small.info["compiled"] and "too small" in small.info["compile_note"]
    assert calls == []


def test_predictor_fast_uses_the_optimised_model_and_matches(probe_env, monkeypatch) -> None:
    from unetkit.inference.predictor import Predictor

    calls = _fake_compile(monkeypatch)
    _timer(monkeypatch, eager_s=1.0, compiled_s=0.5)
    model = _unet3d()
    image = np.random.default_rng(0).normal(size=(1, 20, 20, 40)).astype(np.float32)
    kw = dict(roi_size=16, overlap=0.25, batch_size=2, preprocess={"mode": "none"})
    plain = Predictor(model, **kw).predict_array(image)
    fast_predictor = Predictor(model, fast=True, **kw)
    fast = fast_predictor.predict_array(image)
    assert calls and set(calls) == {(2, 1, 16, 16, 16)}  # every window batch ran compiled, padded if short
    assert len(fast_predictor._fast_models) == 1
    np.testing.assert_allclose(fast.probabilities, plain.probabilities, atol=1e-5)
    assert np.array_equal(fast.labels, plain.labels)


@pytest.mark.slow
def test_real_compile_fp32_and_int8_match_eager(probe_env, monkeypatch) -> None:
    ok, why = optimize.compile_available()
    if not ok:
        pytest.skip(why)
    from unetkit.export.onednn_int8 import onednn_int8_available, quantize_torch_int8

    _timer(monkeypatch, eager_s=1.0, compiled_s=0.5)  # the decision is faked; the outputs are real
    model = _unet3d((4, 8))
    x = torch.randn(2, 1, 16, 16, 16)
    fast = optimize_for_inference(model, x, compile="auto", channels_last=False)
    assert fast.info["compiled"], fast.info
    with torch.no_grad():
        assert (fast(x) - model(x)).abs().max() <= 1e-4
    if onednn_int8_available() is not None:
        pytest.skip("no oneDNN int8 here")
    q = quantize_torch_int8(model, [torch.randn(2, 1, 16, 16, 16) for _ in range(2)])
    with torch.no_grad():
        want = q(x)
    fast8 = optimize_for_inference(q, x, compile="auto", channels_last=True)
    assert fast8.info["compiled"], fast8.info  # the quantiser traced into the graph (no graph break)
    got = fast8(x)
    # a rounding flip moves a value one step: equal to eager int8 within the quantisation noise
    assert (got - want).abs().max() <= 5e-2 * max(1.0, float(want.abs().max()))
    assert (got.argmax(1) == want.argmax(1)).float().mean() >= 0.98


def test_cli_predict_fast_matches_plain(probe_env, monkeypatch, tmp_path) -> None:
    from typer.testing import CliRunner

    from unetkit.cli.main import app
    from unetkit.data.io import VolumeMeta, read_volume, write_image

    calls = _fake_compile(monkeypatch)
    _timer(monkeypatch, eager_s=1.0, compiled_s=0.5)
    model_file = tmp_path / "m.safetensors"
    unetkit.save_model(_unet3d(), model_file, extra={"preprocess": {"mode": "zscore"}, "patch_size": [16, 16, 16]})
    image = np.random.default_rng(0).normal(size=(20, 18, 24)).astype(np.float32)
    write_image(tmp_path / "in" / "case.nii.gz", image[None], VolumeMeta(spacing=(1.0, 1.0, 1.0)))
    outs = {}
    for name, extra in (("plain", []), ("fast", ["--fast"])):
        result = CliRunner().invoke(app, ["predict", str(model_file), str(tmp_path / "in"), "--out",
                                          str(tmp_path / name), "--no-overlay", "--probabilities", "--device", "cpu",
                                          *extra])
        assert result.exit_code == 0, result.output
        outs[name] = {p.parent.name: read_volume(p)[0] for p in (tmp_path / name).rglob("*.nii.gz")}
    assert calls  # --fast ran the (fake-)compiled model
    assert set(outs["fast"]) == set(outs["plain"]) and outs["fast"]
    for kind, arr in outs["plain"].items():
        np.testing.assert_allclose(outs["fast"][kind], arr, atol=1e-5)


def test_int8_convs_are_packed_before_compiling(probe_env, monkeypatch) -> None:
    """Traced, a lazy pack reads its scales as Python numbers: a graph break at every int8 conv."""
    from unetkit.export.onednn_int8 import Int8Conv, onednn_int8_available, quantize_torch_int8

    if onednn_int8_available() is not None:
        pytest.skip("no oneDNN int8 here")
    seen: list[bool] = []

    def fake(module, **_kw):
        seen.extend(m._packed is not None for m in module.modules() if isinstance(m, Int8Conv))
        return module

    monkeypatch.setattr(torch, "compile", fake)
    q = quantize_torch_int8(_unet3d(), [torch.randn(1, 1, 16, 16, 16)])
    optimize_for_inference(q, compile=True)  # no example: nothing ran eagerly before the compile
    assert seen and all(seen)
