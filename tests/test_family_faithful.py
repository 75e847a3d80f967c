"""The family against its authors' code (issue 13): each finding of the audit has a test here
that fails on the code before the fix."""
from __future__ import annotations

import pytest
import torch

import unetkit
from unetkit.models import count_parameters, create_model


# ---- 1. UNet 3+ classification-guided module ------------------------------------------------
def _cgm_saying_absent(model) -> None:
    with torch.no_grad():
        model.cgm.conv.weight.zero_()
        model.cgm.conv.bias.copy_(torch.tensor([5.0, -5.0]))  # "no foreground" for every image


def test_untrained_cgm_never_blanks_the_output() -> None:
    torch.manual_seed(0)
    model = create_model("unet3+", num_classes=1, features=(4, 8, 16), classification_guided=True).eval()
    _cgm_saying_absent(model)  # an untrained CGM that happens to say "absent"
    x = torch.randn(2, 1, 24, 24)
    with torch.no_grad():
        seg, _ = model.forward_with_classification(x)
        assert torch.equal(model(x), seg)  # not gated: the CGM never had a loss
        model.cgm.trained_steps.fill_(1)  # once trained, its verdict is applied
        assert (model(x) < -50).all()


def test_cgm_gets_a_classification_loss_from_the_trainer(tmp_path) -> None:
    from unetkit.training import TrainConfig, Trainer

    images = torch.rand(4, 1, 16, 16)
    masks = torch.zeros(4, 1, 16, 16)
    masks[:2, :, 4:9, 4:9] = 1  # two images with foreground, two without

    class Data(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 4

        def __getitem__(self, i):
            return {"image": images[i], "mask": masks[i], "name": f"s{i}"}

    cfg = TrainConfig().with_overrides([
        "model.name=unet3+", "model.num_classes=1", "model.kwargs.features=[4,8]",
        "model.kwargs.classification_guided=true", "data.batch_size=4", "data.num_workers=0", "epochs=1",
        "progress=quiet", "tensorboard=false", "overlays=0", f"out_dir={tmp_path}", "name=cgm", "device=cpu",
    ])
    trainer = Trainer(cfg, Data())
    before = trainer.model.cgm.conv.weight.detach().clone()
    trainer.train_epoch(1)
    assert int(trainer.model.cgm.trained_steps) >= 1
    assert not torch.equal(trainer.model.cgm.conv.weight, before)  # the CGM received a gradient


def test_cgm_auxiliary_loss_targets_are_class_presence() -> None:
    model = create_model("unet3+", num_classes=3, features=(4, 8), classification_guided=True).train()
    x = torch.randn(3, 1, 12, 12)
    target = torch.zeros(3, 12, 12, dtype=torch.long)
    target[0, 2, 2] = 2
    target[2, 5, 5] = 255  # ignored pixels do not count as foreground
    model(x)
    logits = model._cgm_logits.detach().clone()
    loss = model.auxiliary_loss(target, ignore_index=255)
    expected = torch.nn.functional.cross_entropy(logits, torch.tensor([1, 0, 0]))
    assert torch.allclose(loss, expected)
    assert model.auxiliary_loss(target) is None  # consumed: one loss per forward
    model.eval()
    model(x)
    assert model.auxiliary_loss(target) is None


def test_cgm_checkpoint_without_counter_loads_as_untrained(tmp_path) -> None:
    model = create_model("unet3+", num_classes=1, features=(4, 8), classification_guided=True)
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("trained_steps")}
    model.load_state_dict(state)
    assert int(model.cgm.trained_steps) == 0


# ---- 2. sizes: valid padding checks every size, same padding takes tiny inputs ----------------
@pytest.mark.parametrize("size", [570, 571, 64, 100, 140])
def test_valid_padding_rejects_every_invalid_size_with_the_nearest_valid_ones(size: int) -> None:
    model = create_model("unet-original", features=(1, 1, 1, 1, 1)).eval()  # the paper's depth, tiny widths
    with pytest.raises(ValueError, match=r"nearest valid sizes: \[.*\]"):
        with torch.no_grad():
            model(torch.zeros(1, 1, size, 572))
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 572, 188)).shape[2:] == (388, 4)


@pytest.mark.parametrize("name,dims", [("unet", 2), ("unet", 3), ("unet3+", 2), ("unet++", 2),
                                       ("attention-unet", 2), ("swin-unet", 2), ("mobile-unet", 2)])
def test_tiny_inputs_to_same_padding_models_are_padded(name: str, dims: int) -> None:
    from unetkit.models import model_info

    kwargs = dict(model_info(name).tiny)
    if name == "unet":
        kwargs["features"] = (2, 2, 2, 2, 2)  # depth 5: 4 poolings, more than a 5 px input takes
    model = create_model(name, spatial_dims=dims, **kwargs).eval()
    size = (5,) * dims
    with torch.no_grad():
        assert model(torch.randn(1, 1, *size)).shape == (1, 2, *size)


def test_valid_padding_deep_supervision_outputs_are_aligned_with_the_output() -> None:
    # depth 3, input 44: the bottom gives 4 px, decoder level 1 gives 4 coarse px (stride 2) that
    # cover input pixels 18..25, the output 4 px covering input 20..23. The auxiliary output must be
    # level 1's logits on the input grid (2x) cropped to input 20..23: fine pixels 2..5.
    model = create_model("unet-original", features=(2, 4, 8), deep_supervision=True, dropout=0.0).eval()
    x = torch.randn(1, 1, 44, 44)
    with torch.no_grad():
        out, aux = model(x)
        coarse = model.aux_heads[0](model.decoder(model.encoder(x))[1])
    assert out.shape[2:] == aux.shape[2:] == (4, 4) and coarse.shape[2:] == (4, 4)
    fine = torch.nn.functional.interpolate(coarse, scale_factor=2.0, mode="bilinear", align_corners=False)
    assert torch.allclose(aux, fine[..., 2:6, 2:6])


# ---- 6. U-Net++ deep supervision ---------------------------------------------------------------
def test_unetpp_heads_weigh_equally_in_the_trainer_loss() -> None:
    from unetkit.training import TrainConfig
    from unetkit.training.trainer import build_loss

    cfg = TrainConfig().with_overrides(["model.name=unet++", "model.num_classes=1", "loss.name=ce",
                                        "model.kwargs.features=[4,8,16,32]", "model.kwargs.deep_supervision=true"])
    model = create_model("unet++", num_classes=1, features=(4, 8, 16, 32), deep_supervision=True)
    loss = build_loss(cfg, model)
    assert loss.level_weights(3) == pytest.approx([1 / 3] * 3)  # the paper: all heads equal
    outs = [torch.randn(2, 1, 8, 8) for _ in range(3)]
    target = (torch.rand(2, 1, 8, 8) > 0.5).float()
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    assert torch.allclose(loss(outs, target), sum(bce(o, target) for o in outs) / 3, atol=1e-6)
    own = build_loss(cfg.with_overrides(["loss.deep_supervision_weights=[1,0,0]"]), model)
    assert own.level_weights(3) == [1.0, 0.0, 0.0]  # the config still wins


def test_unetpp_accurate_mode_averages_the_heads() -> None:
    for k in (1, 3):
        model = create_model("unet++", num_classes=k, features=(4, 8, 16), deep_supervision=True,
                             accurate=True).eval()
        x = torch.randn(2, 1, 17, 19)
        with torch.no_grad():
            model.accurate = False
            heads = model(x)
            model.accurate = True
            out = model(x)
        act = torch.sigmoid if k == 1 else (lambda t: torch.softmax(t, dim=1))
        assert torch.allclose(act(out[0]), (act(heads[0]) + act(heads[1])) / 2, atol=1e-5)
        assert torch.equal(out[1], heads[1])
        assert not torch.allclose(out[0], heads[0])
    with pytest.raises(ValueError, match="deep_supervision=True"):
        create_model("unet++", features=(4, 8), accurate=True)


def test_unetpp_prune_keeps_the_dtype() -> None:
    model = create_model("unet++", features=(4, 8, 16), deep_supervision=True).to(torch.bfloat16).eval()
    pruned = model.prune(1)
    assert next(pruned.parameters()).dtype == torch.bfloat16
    x = torch.randn(1, 1, 16, 16, dtype=torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(pruned(x), model(x)[1])


# ---- 7. Swin-UNet ------------------------------------------------------------------------------
def test_patch_merging_orders_neighbours_as_official_swin() -> None:
    from unetkit.models.transformer import PatchMerging

    merge = PatchMerging(2, 3)
    x = torch.randn(1, 4, 6, 3)
    # official: x0 = x[0::2, 0::2], x1 = x[1::2, 0::2], x2 = x[0::2, 1::2], x3 = x[1::2, 1::2]
    cat = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
    with torch.no_grad():
        assert torch.allclose(merge(x), merge.reduction(merge.norm(cat)), atol=1e-6)


def test_swin_skips_are_stage_inputs_and_drop_path_follows_the_rule() -> None:
    from unetkit.models.transformer import to_channels_first

    model = create_model("swin-unet", features=(8, 16, 32), depths=(2, 2, 2), heads=(1, 1, 2), window=3,
                         patch_size=2, drop_path=0.3).eval()
    x = torch.randn(1, 1, 24, 24)
    with torch.no_grad():
        feats = model.encoder(x)
        embedded = model.encoder.embed(x)
        assert torch.equal(feats[0], to_channels_first(embedded))  # before stage 0's blocks
        assert torch.equal(feats[1], to_channels_first(model.encoder.merges[0](model.encoder.stages[0](embedded))))
    rates = [b.drop_path.p for stage in model.encoder.stages for b in stage]
    assert rates == pytest.approx([0.3 * i / 5 for i in range(6)])
    assert [b.drop_path.p for b in model.decoder.stages[-1]] == pytest.approx(rates[:2])  # mirrored level 0
    model.train()
    torch.manual_seed(0)
    a = model(x)
    torch.manual_seed(1)
    assert not torch.allclose(a, model(x))  # stochastic depth in training


# ---- 8. smaller faults -------------------------------------------------------------------------
def test_weight_initialisation_follows_the_papers() -> None:
    torch.manual_seed(0)
    model = create_model("unet", features=(16, 32, 64))
    conv = model.encoder.levels[1][0][0]  # 3x3 conv, 16 -> 32: He-normal std sqrt(2 / fan_in)
    fan_in = conv.weight[0].numel()
    assert conv.weight.std().item() == pytest.approx((2 / fan_in) ** 0.5, rel=0.1)
    swin = create_model("swin-unet", features=(32, 64), depths=(2, 2), heads=(2, 4), window=3, patch_size=2)
    linear = swin.encoder.stages[0][0].mlp[0]
    assert linear.weight.std().item() == pytest.approx(0.02, rel=0.15)
    assert torch.count_nonzero(linear.bias) == 0


def test_norm_free_original_unet_depends_on_its_input_at_initialisation() -> None:
    torch.manual_seed(0)
    model = create_model("unet-original", features=(16, 32, 64, 128, 256), dropout=0.0).eval()
    with torch.no_grad():
        a, b = model(torch.randn(1, 1, 188, 188)), model(torch.randn(1, 1, 188, 188))
    assert (a - b).std() > 0.2  # PyTorch's default initialisation gives ~0.01 here


def test_transposed_up_sampling_refuses_stride_jumps() -> None:
    vit = {"cnn_blocks": (1, 1), "cnn_width": 4, "hidden": 16, "depth": 1, "heads": 2, "mlp_dim": 16,
           "img_size": 32, "readout_channels": 16, "patch_size": 2}  # strides 2, 4, 16: a 4x jump
    for decoder in ("unet", "unet++", "attention"):
        with pytest.raises(ValueError, match=r"jump by \[2, 4\]"):
            create_model("hybrid", encoder="vit", decoder=decoder, encoder_kwargs=vit,
                         decoder_kwargs={"up_mode": "transpose"})
    for decoder, up in (("unet", "linear"), ("attention", "interp")):  # interpolate to the skip's size
        model = create_model("hybrid", encoder="vit", decoder=decoder, encoder_kwargs=vit,
                             decoder_kwargs={"up_mode": up}).eval()
        with torch.no_grad():
            feats = model.encoder(torch.randn(1, 1, 48, 32))
            deepest = model.decoder.blocks[0](feats[-1], feats[-2])
        assert deepest.shape[2:] == feats[-2].shape[2:]


@pytest.mark.parametrize("depth", [0, 1, 6])
def test_mobile_unet_depth_outside_2_to_5_is_a_clear_error(depth: int) -> None:
    with pytest.raises(ValueError, match=r"depth must be 2\.\.5"):
        create_model("mobile-unet", width_mult=0.25, depth=depth)


# ---- 3. nnFormer ---------------------------------------------------------------------------------
def test_nnformer_skip_attention_keeps_the_skip_on_its_residual_path() -> None:
    model = create_model("nnformer", features=(8, 16, 32), depths=(1, 1, 1), heads=(1, 1, 2), window=(2, 2, 2),
                         patch_size=2).eval()
    block = model.decoder.stages[-1][0]  # level 0's skip-attention block
    assert isinstance(block.attn.q, torch.nn.Identity)  # no query projection (official WindowAttention_kv)
    with torch.no_grad():
        block.attn.proj.weight.zero_()
        block.attn.proj.bias.zero_()
        block.mlp[3].weight.zero_()
        block.mlp[3].bias.zero_()
        feats = model.encoder(torch.randn(1, 1, 16, 16, 16))
        from unetkit.models.transformer import to_channels_first, to_channels_last
        x = to_channels_last(feats[-1])  # level 1 by hand, then level 0
        x = to_channels_last(model.decoder.ups[0](x))
        x = model.decoder.stages[0][0](x, context=to_channels_last(feats[1]), residual=x + to_channels_last(feats[1]))
        x_up = to_channels_last(model.decoder.ups[1](x))
        skip = to_channels_last(feats[0])
        out = block(x_up, context=skip, residual=x_up + skip)
        assert torch.allclose(out, x_up + skip, atol=1e-6)  # attention and MLP silenced: up-sampled map + skip
        assert torch.allclose(to_channels_first(out), model.decoder(feats)[0], atol=1e-5)
    enc = model.encoder
    assert len([m for m in enc.embed.modules() if isinstance(m, torch.nn.Conv3d)]) == 4
    assert hasattr(enc.stages[-1][0], "bias_table") and len(enc.norms) == 3
