"""Speed paths that must not change results: InstanceNorm on the GroupNorm kernel, the cached
channels-last probe, compile/layout options of the training step. No timing is asserted."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

import unetkit
from unetkit.export import optimize
from unetkit.models.layers import InstanceNorm, make_norm


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_instance_norm_matches_torch_instance_norm(dims: int) -> None:
    torch.manual_seed(0)
    ref = {1: nn.InstanceNorm1d, 2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}[dims](6, affine=True)
    ours = make_norm("instance", dims, 6)
    assert isinstance(ours, InstanceNorm)
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5)
        ref.bias.uniform_(-1, 1)
    ours.load_state_dict(ref.state_dict())  # same parameter names, no running statistics
    assert set(ours.state_dict()) == {"weight", "bias"}
    x = (3 * torch.randn(2, 6, *([7] * dims)) + 2).requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    g = torch.randn(2, 6, *([7] * dims))
    a, b = ref(x), ours(x2)
    a.backward(g)
    b.backward(g)
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(x.grad, x2.grad, atol=1e-5)
    assert torch.allclose(ref.weight.grad, ours.weight.grad, atol=1e-4)


def _fake_timer(times: dict[bool, float], calls: list):
    """A `_time_once` stand-in: runs the step, reports a fixed time per layout."""

    def time_once(fn) -> float:
        fn()
        layout = fn.__defaults__[1].is_contiguous(memory_format=torch.channels_last)  # (m, xi) defaults
        calls.append(layout)
        return times[layout]

    return time_once


@pytest.mark.parametrize("cl_time,expected", [(0.5, True), (0.99, False)])
def test_probe_decides_by_measurement_and_caches(cl_time: float, expected: bool, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("UNETKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(optimize, "_LAYOUT_CACHE", {})
    calls: list = []
    monkeypatch.setattr(optimize, "_time_once", _fake_timer({False: 1.0, True: cl_time}, calls))
    model = unetkit.create_model("unet", in_channels=2, features=(4, 8), norm="instance")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = torch.get_rng_state()
    assert optimize.probe_channels_last(model, (1, 2, 16, 16), repeats=2, min_gflops=0) is expected
    assert sorted(calls) == [False, False, True, True]  # interleaved rounds, both layouts
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # so is the model
    stored = json.loads((tmp_path / "layout_probe.json").read_text())
    assert list(stored.values()) == [expected]
    # a fresh process (empty memory cache) reads the file and measures nothing
    monkeypatch.setattr(optimize, "_LAYOUT_CACHE", {})
    calls.clear()
    assert optimize.probe_channels_last(model, (1, 2, 16, 16), repeats=2, min_gflops=0) is expected
    assert calls == []


def test_a_probe_measured_while_the_timings_swing_is_not_cached_on_disk(tmp_path, monkeypatch) -> None:
    """Another job on the cores makes one variant's repeats differ by far more than a quiet machine's
    few percent: that decision serves this process only; the next process measures again, and a
    steady measurement is cached for good. (A bf16 probe taken while data were generated on the
    same cores cached 'no' for a model that trains 1.7x faster in bf16.)"""
    monkeypatch.setenv("UNETKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(optimize, "_LAYOUT_CACHE", {})
    model = unetkit.create_model("unet", in_channels=2, features=(4, 8), norm="instance")
    swings = iter([1.0, 0.5, 1.6, 0.5])  # default layout: 1.0 then 1.6 s (busy); channels-last 0.5 s
    calls: list = []
    monkeypatch.setattr(optimize, "_time_once", lambda fn: calls.append(1) or next(swings))
    assert optimize.probe_channels_last(model, (1, 2, 16, 16), repeats=2, min_gflops=0) is True
    assert not (tmp_path / "layout_probe.json").exists()
    assert optimize.probe_channels_last(model, (1, 2, 16, 16), repeats=2, min_gflops=0) is True  # same process
    assert len(calls) == 4
    monkeypatch.setattr(optimize, "_LAYOUT_CACHE", {})  # a new process measures again, now steadily
    monkeypatch.setattr(optimize, "_time_once", _fake_timer({False: 1.0, True: 0.5}, calls))
    assert optimize.probe_channels_last(model, (1, 2, 16, 16), repeats=2, min_gflops=0) is True
    assert len(calls) == 8
    assert list(json.loads((tmp_path / "layout_probe.json").read_text()).values()) == [True]


def test_probe_skips_tiny_work_and_prepare_for_training_auto(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("UNETKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(optimize, "_time_once", lambda fn: pytest.fail("tiny work must not be timed"))
    model3d = unetkit.create_model("unet", spatial_dims=3, features=(4, 8))
    assert optimize.probe_channels_last(model3d, (1, 1, 8, 8, 8)) is False
    call = optimize.prepare_for_training(model3d, channels_last="auto", example=(1, 1, 8, 8, 8))
    assert call.unetkit_layout == "default layout"
    with pytest.raises(ValueError, match="example"):
        optimize.prepare_for_training(model3d, channels_last="auto")


def test_channels_last_3d_training_step_equals_default_layout() -> None:
    torch.manual_seed(0)
    a = unetkit.create_model("unet", spatial_dims=3, features=(4, 8, 16), norm="instance", act="leakyrelu",
                             down_mode="stride")
    b = unetkit.create_model("unet", spatial_dims=3, features=(4, 8, 16), norm="instance", act="leakyrelu",
                             down_mode="stride")
    b.load_state_dict(a.state_dict())
    optimize.prepare_for_training(b, channels_last=True)
    assert b.head[0].weight.is_contiguous(memory_format=torch.channels_last_3d)
    x = torch.randn(2, 1, 16, 16, 16)
    losses = []
    for m, xi in ((a, x), (b, optimize.channels_last_input(x))):
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        loss = m(xi).square().mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert abs(losses[0] - losses[1]) < 1e-5
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=1e-5), n


def _fake_precision_timer(times: dict[bool, float], calls: list):
    """A `_time_once` stand-in: runs the step, reports a fixed time per precision (bf16 or not)."""

    def time_once(fn) -> float:
        fn()
        bf16 = fn.__defaults__[2] is torch.bfloat16  # (m, xi, dtype) defaults
        calls.append(bf16)
        return times[bf16]

    return time_once


@pytest.mark.parametrize("bf16_time,expected", [(0.5, True), (0.85, False)])
def test_cpu_autocast_probe_decides_by_measurement_and_caches(bf16_time, expected, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("UNETKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(optimize, "_LAYOUT_CACHE", {})
    monkeypatch.setattr(optimize, "cpu_bf16_supported", lambda: True)
    calls: list = []
    monkeypatch.setattr(optimize, "_time_once", _fake_precision_timer({False: 1.0, True: bf16_time}, calls))
    model = unetkit.create_model("unet", in_channels=2, features=(4, 8), norm="instance")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # 0.85 s against 1.0 s is faster, but not by the 1.25x that mixed precision must earn
    assert optimize.probe_cpu_autocast(model, (1, 2, 16, 16), repeats=2, min_gflops=0) is expected
    assert sorted(calls) == [False, False, True, True]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(p.grad is not None for p in model.parameters())
    stored = json.loads((tmp_path / "layout_probe.json").read_text())
    assert [v for k, v in stored.items() if "bf16-autocast" in k] == [expected]
    monkeypatch.setattr(optimize, "_LAYOUT_CACHE", {})  # a fresh process reads the file
    calls.clear()
    assert optimize.probe_cpu_autocast(model, (1, 2, 16, 16), repeats=2, min_gflops=0) is expected
    assert calls == []


def test_cpu_autocast_probe_never_runs_where_bf16_cannot_pay(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("UNETKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(optimize, "_LAYOUT_CACHE", {})
    monkeypatch.setattr(optimize, "_time_once", lambda fn: pytest.fail("must not be timed"))
    model = unetkit.create_model("unet", in_channels=1, features=(4, 8))
    monkeypatch.setattr(optimize, "cpu_bf16_supported", lambda: False)  # e.g. an AVX2-only CPU
    assert optimize.probe_cpu_autocast(model, (1, 1, 64, 64), min_gflops=0) is False
    monkeypatch.setattr(optimize, "cpu_bf16_supported", lambda: True)
    assert optimize.probe_cpu_autocast(model, (1, 1, 16, 16)) is False  # under min_gflops: not worth it


def test_trainer_amp_auto_on_cpu_follows_the_probe_and_resume_keeps_it(tmp_path, monkeypatch) -> None:
    """amp 'auto' on the CPU trains in bf16 autocast where the probe says so (the loss still goes
    down on real images), records it, and a resume stays in the precision it started in."""
    import unetkit.training.trainer as trainer_mod
    from test_training import CrashAt, tiny_config

    from unetkit.errors import Interrupted
    from unetkit.training import train

    seen: list = []

    def probe(model, example, train=True, channels_last=False):
        seen.append(tuple(example))
        return True

    monkeypatch.setattr(trainer_mod, "probe_cpu_autocast", probe)
    cfg = tiny_config(tmp_path, name="bf16", epochs=4, device="cpu")
    with pytest.raises(Interrupted):
        train(cfg, callbacks=[CrashAt(epoch=3, step=5)])  # mid-epoch 3 (2 steps per epoch)
    assert seen == [(2, 1, 48, 48)]
    monkeypatch.setattr(trainer_mod, "probe_cpu_autocast", lambda *a, **k: pytest.fail("a resume must not re-probe"))
    result = train(None, resume=tmp_path / "bf16")
    report = json.loads((result.run_dir / "report.json").read_text())
    assert report["precision"] == "bf16"
    losses = [row["train_loss"] for row in result.history]
    assert losses[-1] < losses[0]
    off = train(tiny_config(tmp_path, name="fp32", epochs=1, device="cpu", amp="off"))
    assert json.loads((off.run_dir / "report.json").read_text())["precision"] == "fp32"


def test_bf16_autocast_training_computes_the_loss_in_fp32(tmp_path, monkeypatch) -> None:
    """Under CPU autocast the network runs in bf16, but the loss (a sum over every pixel) gets fp32
    logits; before, Dice + CE were summed in bf16."""
    import unetkit.training.trainer as trainer_mod
    from test_training import tiny_config

    from unetkit.training import train

    dtypes: list = []
    build = trainer_mod.build_loss

    def recording(config, model):
        loss = build(config, model)

        def call(outputs, masks, *rest):
            dtypes.append(outputs.dtype)
            return loss(outputs, masks, *rest)
        return call

    monkeypatch.setattr(trainer_mod, "build_loss", recording)
    result = train(tiny_config(tmp_path, name="on", epochs=1, device="cpu", amp="on"))
    assert json.loads((result.run_dir / "report.json").read_text())["precision"] == "bf16"
    assert dtypes and set(dtypes) == {torch.float32}
