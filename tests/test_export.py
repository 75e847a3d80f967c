"""Fast paths give the same outputs: BN folding, channels-last, optimize_for_inference, pruning,
distillation. (ONNX and int8: test_export_onnx.py.) No timing assertions here."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from unetkit.export import (
    channel_sparsity, distill, distillation_loss, fold_batchnorm, optimize_for_inference, prune_channels,
    prune_global_unstructured, remove_pruning, sparsity, to_channels_last,
)
from unetkit.export.prune import is_pruned
from unetkit.models import UNet


def _with_stats(model: nn.Module) -> nn.Module:
    """Non-trivial BN statistics and affine parameters, so folding is really exercised."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 2 + 0.2)
                m.weight.copy_(torch.randn(m.num_features, generator=g))
                m.bias.copy_(torch.randn(m.num_features, generator=g))
    return model.eval()


@pytest.mark.parametrize("dims,size", [(2, 32), (3, 16)])
def test_fold_batchnorm_same_outputs(dims: int, size: int) -> None:
    model = _with_stats(UNet(dims, 1, 3, features=(4, 8, 16)))
    x = torch.randn(2, 1, *([size] * dims))
    folded = fold_batchnorm(model)
    bns = [m for m in folded.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert bns == [] and folded.folded_batchnorms == 10  # (3 encoder + 2 decoder levels) x 2 convs
    with torch.no_grad():
        assert (folded(x) - model(x)).abs().max() <= 1e-5
    # the original keeps its BNs and is not modified
    assert any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def test_fold_batchnorm_counts_and_transpose_pairs() -> None:
    conv_t = nn.ConvTranspose2d(3, 5, 2, stride=2, bias=False)
    model = _with_stats(nn.Sequential(conv_t, nn.BatchNorm2d(5), nn.ReLU(), nn.Conv2d(5, 2, 1)))
    folded = fold_batchnorm(model)
    assert folded.folded_batchnorms == 1 and isinstance(folded[1], nn.Identity)
    x = torch.randn(2, 3, 7, 9)
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), atol=1e-5)
    # hand check of the folded weights: w' = w * gamma / sqrt(var + eps) along output channels (dim 1)
    bn = model[1]
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    assert torch.allclose(folded[0].weight, conv_t.weight * scale.view(1, -1, 1, 1), atol=1e-6)
    assert torch.allclose(folded[0].bias, bn.bias - bn.running_mean * scale, atol=1e-6)


def test_channels_last_same_outputs() -> None:
    model = _with_stats(UNet(2, 1, 2, features=(4, 8, 16)))
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        want = model(x)
        cl = to_channels_last(fold_batchnorm(model))
        assert cl.encoder.levels[0][0][0].weight.is_contiguous(memory_format=torch.channels_last)
        got = cl(x.contiguous(memory_format=torch.channels_last))
    assert (got - want).abs().max() <= 1e-5


def test_channels_last_3d_layout() -> None:
    model = to_channels_last(UNet(3, 1, 2, features=(4, 8)).eval())
    assert model.encoder.levels[0][0][0].weight.is_contiguous(memory_format=torch.channels_last_3d)


def test_optimize_for_inference_eager_path() -> None:
    model = _with_stats(UNet(2, 1, 2, features=(4, 8, 16)))
    x = torch.randn(3, 1, 32, 48)
    fast = optimize_for_inference(model, x, compile=False)
    with torch.no_grad():
        want = model(x)
    got = fast(x)
    assert not got.requires_grad and got.is_contiguous() and got.dtype == torch.float32
    assert (got - want).abs().max() <= 1e-5
    assert fast.info["folded_batchnorms"] == 10 and not fast.info["compiled"]
    assert (fast(x.numpy()) - want).abs().max() <= 1e-5  # numpy in, tensor out
    assert fast.spatial_dims == 2 and fast.num_classes == 2
    with pytest.raises(RuntimeError):
        fast.train()


def test_optimize_for_inference_deep_supervision_list() -> None:
    model = _with_stats(UNet(2, 1, 2, features=(4, 8, 16), deep_supervision=True))
    x = torch.randn(1, 1, 32, 32)
    out = optimize_for_inference(model, x, compile=False)(x)
    with torch.no_grad():
        want = model(x)
    assert isinstance(out, list) and len(out) == len(want)
    assert max(float((a - b).abs().max()) for a, b in zip(out, want)) <= 1e-5


@pytest.mark.slow
def test_optimize_for_inference_compiled_path_same_outputs() -> None:
    pytest.importorskip("torch._inductor")
    model = _with_stats(UNet(2, 1, 2, features=(4, 8)))
    x = torch.randn(1, 1, 16, 16)
    fast = optimize_for_inference(model, x, compile=True)
    with torch.no_grad():
        want = model(x)
    # compiled when the toolchain works; the eager fallback must be correct either way
    assert (fast(x) - want).abs().max() <= 1e-4, fast.info


def test_optimize_for_inference_rejects_bad_compile_value() -> None:
    with pytest.raises(ValueError):
        optimize_for_inference(UNet(2, 1, 2, features=(4, 8)), compile="yes")


def test_retain_cpu_memory_toggles_and_training_still_matches() -> None:
    from unetkit.export import prepare_for_training, retain_cpu_memory

    model = UNet(2, 1, 2, features=(4, 8))
    twin = UNet(2, 1, 2, features=(4, 8))
    twin.load_state_dict(model.state_dict())
    x, y = torch.randn(2, 1, 16, 16), torch.randint(0, 2, (2, 16, 16))
    call = prepare_for_training(twin, channels_last=True, retain_memory=True)
    try:
        assert twin.encoder.levels[0][0][0].weight.is_contiguous(memory_format=torch.channels_last)
        a = F.cross_entropy(model(x), y)
        b = F.cross_entropy(call(x.contiguous(memory_format=torch.channels_last)), y)
        a.backward()
        b.backward()
    finally:
        assert isinstance(retain_cpu_memory(False), bool)
    assert abs(a.item() - b.item()) <= 1e-5
    ga = model.encoder.levels[0][0][0].weight.grad
    gb = twin.encoder.levels[0][0][0].weight.grad
    assert (ga - gb).abs().max() <= 1e-5


# ---- pruning ------------------------------------------------------------------------------------
def test_global_unstructured_pruning_reaches_sparsity_and_runs() -> None:
    model = UNet(2, 1, 2, features=(4, 8, 16))
    prune_global_unstructured(model, amount=0.6)
    assert is_pruned(model)
    report = sparsity(model)
    # all prunable weights except the head: 60% of those are zero
    head = model.head[-1].weight.numel()
    assert report["zeros"] == pytest.approx(0.6 * (report["weights"] - head), abs=1)
    remove_pruning(model)
    assert not is_pruned(model)
    assert not any(n.endswith("_orig") for n, _ in model.named_parameters())
    assert sparsity(model)["zeros"] == report["zeros"]  # permanent
    out = model(torch.randn(1, 1, 32, 32))
    assert out.shape == (1, 2, 32, 32) and torch.isfinite(out).all()


def test_channel_pruning_zeroes_whole_filters() -> None:
    model = UNet(2, 1, 2, features=(8, 16))
    prune_channels(model, amount=0.25)
    remove_pruning(model)
    conv = model.encoder.levels[0][0][0]
    dead = (conv.weight.abs().sum(dim=(1, 2, 3)) == 0).sum().item()
    assert dead == 2  # 25% of 8 output channels
    up = model.decoder.blocks[0].up.op  # transposed conv: output channels on dim 1
    assert (up.weight.abs().sum(dim=(0, 2, 3)) == 0).sum().item() == round(0.25 * up.out_channels)
    assert 0.2 < channel_sparsity(model, include_head=False) <= 0.25
    model.eval()
    assert model(torch.randn(1, 1, 16, 16)).shape == (1, 2, 16, 16)


def test_pruning_rejects_bad_amount() -> None:
    with pytest.raises(ValueError):
        prune_global_unstructured(UNet(2, 1, 2, features=(4, 8)), amount=1.5)


# ---- distillation -------------------------------------------------------------------------------
def test_distillation_loss_multiclass_matches_hand_computation() -> None:
    s = torch.randn(2, 3, 4, 5)
    t = torch.randn(2, 3, 4, 5)
    y = torch.randint(0, 3, (2, 1, 4, 5))
    T, alpha = 3.0, 0.7
    # hand computation with explicit loops over pixels
    total = 0.0
    ps, pt = torch.softmax(s / T, 1), torch.softmax(t / T, 1)
    for n in range(2):
        for i in range(4):
            for j in range(5):
                total += sum(float(pt[n, k, i, j] * math.log(pt[n, k, i, j] / ps[n, k, i, j])) for k in range(3))
    soft = total / (2 * 4 * 5)
    hard = float(F.cross_entropy(s, y[:, 0]))
    want = alpha * T * T * soft + (1 - alpha) * hard
    got = float(distillation_loss(s, t, y, temperature=T, alpha=alpha))
    assert got == pytest.approx(want, rel=1e-5)


def test_distillation_loss_binary_uses_tempered_sigmoid() -> None:
    s = torch.randn(2, 1, 3, 3)
    t = torch.randn(2, 1, 3, 3)
    y = (torch.rand(2, 1, 3, 3) > 0.5).long()
    T = 2.0
    q = torch.sigmoid(t / T)
    p = torch.sigmoid(s / T)
    soft = float((-(q * torch.log(p) + (1 - q) * torch.log(1 - p))).mean())
    assert float(distillation_loss(s, t, None, temperature=T, alpha=1.0)) == pytest.approx(T * T * soft, rel=1e-5)
    hard = float(F.binary_cross_entropy_with_logits(s, y.float()))
    assert float(distillation_loss(s, t, y, temperature=T, alpha=0.0)) == pytest.approx(hard, rel=1e-6)
    with pytest.raises(ValueError):
        distillation_loss(s, t, None, alpha=0.5)  # the hard term needs a target


def test_distill_step_decreases_loss() -> None:
    teacher = UNet(2, 1, 2, features=(8, 16)).eval()
    student = UNet(2, 1, 2, features=(4, 8))
    x = torch.randn(4, 1, 16, 16)
    y = torch.randint(0, 2, (4, 1, 16, 16))
    loader = [(x, y)]

    def loss_now() -> float:
        student.eval()
        with torch.no_grad():
            value = float(distillation_loss(student(x), teacher(x), y))
        student.train()
        return value

    before = loss_now()
    history = distill(student, teacher, loader, epochs=5, lr=1e-2)
    assert len(history) == 5 and history[-1] < history[0]
    assert loss_now() < before
    assert all(not p.requires_grad for p in teacher.parameters())


def _mmapped_bytes() -> int | None:
    """glibc's bytes in mmap'd blocks (mallinfo2().hblkhd), or None off glibc."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.mallinfo2
    except (OSError, AttributeError):
        return None

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                   "fsmblks", "uordblks", "fordblks", "keepcost")]

    fn.restype = MallInfo2
    return int(fn().hblkhd)


def test_retained_cpu_memory_keeps_large_blocks_off_mmap_only_inside_the_block() -> None:
    """Inside `retained_cpu_memory()` a large tensor comes from the heap (kept for reuse when freed);
    after the block glibc's defaults are back and the same allocation is mmap'd again (given back to
    the system when freed)."""
    from unetkit.export.optimize import retained_cpu_memory

    if _mmapped_bytes() is None:
        pytest.skip("not glibc with mallinfo2")
    size = 64 * 2**20
    with retained_cpu_memory() as on:
        assert on
        before = _mmapped_bytes()
        x = torch.empty(size, dtype=torch.uint8)
        assert _mmapped_bytes() - before < size
        del x
    before = _mmapped_bytes()
    y = torch.empty(size, dtype=torch.uint8)
    assert _mmapped_bytes() - before >= size
    del y
    with retained_cpu_memory(False) as on:
        assert not on


def test_the_trainer_loop_runs_with_freed_memory_retained(tmp_path, monkeypatch) -> None:
    import unetkit.training.trainer as trainer_mod
    from unetkit.datasets import write_dataset
    from unetkit.training import TrainConfig, train

    if _mmapped_bytes() is None:
        pytest.skip("not glibc with mallinfo2")
    seen = []

    class Probe(trainer_mod.Callback):
        def on_step_end(self, trainer, step, loss):  # a 64 MB block mid-step: mmap'd or not
            before = _mmapped_bytes()
            block = torch.empty(64 * 2**20, dtype=torch.uint8)
            seen.append(_mmapped_bytes() - before)
            del block

    write_dataset("synthetic-cells", tmp_path / "data", size=64, count=2, seed=0)
    cfg = TrainConfig()
    cfg.model.kwargs = {"features": [4, 8]}
    cfg.data.images, cfg.data.patch_size, cfg.data.batch_size, cfg.data.num_workers = \
        str(tmp_path / "data"), [32, 32], 2, 0
    cfg.epochs, cfg.max_steps, cfg.no_val, cfg.progress, cfg.tensorboard = 1, 2, True, "quiet", False
    cfg.out_dir = str(tmp_path / "runs")
    train(cfg, callbacks=[Probe()])
    assert seen and all(d < 64 * 2**20 for d in seen)  # retained while training
    after = _mmapped_bytes()
    block = torch.empty(64 * 2**20, dtype=torch.uint8)
    assert _mmapped_bytes() - after >= 64 * 2**20  # glibc's defaults once training is over
    del block
