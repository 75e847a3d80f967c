"""Published pretrained weights (issue 13): small files in each official key layout (same names,
reduced widths, random values) go through the explicit mappings; no download."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import unetkit
from unetkit.errors import ConfigError
from unetkit.models import create_model
from unetkit.models import pretrained as pt
from unetkit.models.encoders.mobilenet import MOBILENET_V2, make_divisible

g = torch.Generator().manual_seed(0)


def rnd(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=g)


def bn(state: dict, name: str, c: int) -> None:
    state.update({f"{name}.weight": rnd(c), f"{name}.bias": rnd(c), f"{name}.running_mean": rnd(c),
                  f"{name}.running_var": rnd(c).abs() + 0.5, f"{name}.num_batches_tracked": torch.tensor(7)})


# ---- torchvision ResNet -------------------------------------------------------------------------
def torchvision_resnet(width: int, blocks: tuple[int, ...]) -> dict:
    """torchvision's resnet50 key layout (Bottleneck, expansion 4) at a reduced width."""
    s: dict = {"conv1.weight": rnd(width, 3, 7, 7)}
    bn(s, "bn1", width)
    cin = width
    for i, n in enumerate(blocks):
        mid, out = width * 2**i, 4 * width * 2**i
        for j in range(n):
            p = f"layer{i + 1}.{j}"
            s[f"{p}.conv1.weight"] = rnd(mid, cin, 1, 1)
            s[f"{p}.conv2.weight"] = rnd(mid, mid, 3, 3)
            s[f"{p}.conv3.weight"] = rnd(out, mid, 1, 1)
            for k, c in ((1, mid), (2, mid), (3, out)):
                bn(s, f"{p}.bn{k}", c)
            if j == 0:
                s[f"{p}.downsample.0.weight"] = rnd(out, cin, 1, 1)
                bn(s, f"{p}.downsample.1", out)
            cin = out
    s["fc.weight"], s["fc.bias"] = rnd(10, cin), rnd(10)
    return s


def _bn_eval(x: torch.Tensor, s: dict, name: str) -> torch.Tensor:
    return F.batch_norm(x, s[f"{name}.running_mean"], s[f"{name}.running_var"], s[f"{name}.weight"],
                        s[f"{name}.bias"], training=False)


def test_torchvision_resnet_state_dict_maps_onto_the_resnet_encoder(tmp_path) -> None:
    state = torchvision_resnet(8, (2, 2, 1, 1))  # the file has 4 stages; the encoder keeps 2
    path = tmp_path / "resnet50.pth"
    torch.save(state, path)
    model = create_model("hybrid", in_channels=3, encoder="resnet", decoder="unet",
                         encoder_kwargs={"blocks": (2, 2), "width": 8}).eval()
    report = unetkit.load_pretrained(model, path)
    assert report.format == "torchvision-resnet"
    enc_keys = [k for k in model.state_dict() if k.startswith("encoder.")]
    assert sorted(report.loaded) == sorted(enc_keys)  # every encoder tensor came from the file
    assert all(not k.startswith("encoder.") for k in report.missing) and report.missing
    assert sorted(report.unexpected) == sorted(k for k in state if k.startswith(("fc.", "layer3.", "layer4.")))
    assert torch.equal(model.encoder.stages[1][0].conv2.weight, state["layer2.0.conv2.weight"])
    # one stride-2 bottleneck computed from the torchvision tensors by hand (v1.5: stride on the 3x3)
    x = torch.randn(1, 32, 10, 10)
    p = "layer2.0"
    y = F.relu(_bn_eval(F.conv2d(x, state[f"{p}.conv1.weight"]), state, f"{p}.bn1"))
    y = F.relu(_bn_eval(F.conv2d(y, state[f"{p}.conv2.weight"], stride=2, padding=1), state, f"{p}.bn2"))
    y = _bn_eval(F.conv2d(y, state[f"{p}.conv3.weight"]), state, f"{p}.bn3")
    short = _bn_eval(F.conv2d(x, state[f"{p}.downsample.0.weight"], stride=2), state, f"{p}.downsample.1")
    with torch.no_grad():
        assert torch.allclose(model.encoder.stages[1][0](x), F.relu(y + short), atol=1e-4)


def test_rgb_stem_into_one_channel_is_adapted_and_reported(tmp_path) -> None:
    state = torchvision_resnet(8, (1, 1))
    torch.save(state, tmp_path / "r.pth")
    model = create_model("hybrid", in_channels=1, encoder="resnet", decoder="unet",
                         encoder_kwargs={"blocks": (1, 1), "width": 8})
    report = unetkit.load_pretrained(model, tmp_path / "r.pth")
    assert "encoder.stem_conv.weight" in report.adapted
    # a grey image repeated to RGB gives the same response as the summed kernel
    assert torch.allclose(model.encoder.stem_conv.weight, state["conv1.weight"].sum(1, keepdim=True), atol=1e-5)


def test_bit_style_resnet_refuses_torchvision_weights(tmp_path) -> None:
    torch.save(torchvision_resnet(8, (1, 1)), tmp_path / "r.pth")
    model = create_model("hybrid", in_channels=3, encoder="resnet", decoder="unet",
                         encoder_kwargs={"blocks": (1, 1), "width": 8, "style": "bit"})
    with pytest.raises(ConfigError, match="style='torchvision'"):
        unetkit.load_pretrained(model, tmp_path / "r.pth")


# ---- torchvision MobileNetV2 --------------------------------------------------------------------
def torchvision_mobilenet_v2(width_mult: float) -> dict:
    s: dict = {}
    cin = make_divisible(32 * width_mult)
    s["features.0.0.weight"] = rnd(cin, 3, 3, 3)
    bn(s, "features.0.1", cin)
    index = 1
    for t, c, n, _ in MOBILENET_V2:
        out = make_divisible(c * width_mult)
        for _ in range(n):
            p, hidden = f"features.{index}.conv", cin * t
            layers = []
            if t != 1:
                layers.append((hidden, cin, 1))
            layers.append((hidden, 1, 3))  # depthwise
            for k, (o, i, ks) in enumerate(layers):
                s[f"{p}.{k}.0.weight"] = rnd(o, i, ks, ks)
                bn(s, f"{p}.{k}.1", o)
            k = len(layers)
            s[f"{p}.{k}.weight"] = rnd(out, hidden, 1, 1)
            bn(s, f"{p}.{k + 1}", out)
            cin, index = out, index + 1
    s[f"features.{index}.0.weight"] = rnd(1280, cin, 1, 1)
    bn(s, f"features.{index}.1", 1280)
    s["classifier.1.weight"], s["classifier.1.bias"] = rnd(10, 1280), rnd(10)
    return s


def test_torchvision_mobilenet_v2_state_dict_maps_onto_the_mobilenet_encoder(tmp_path) -> None:
    state = torchvision_mobilenet_v2(0.5)
    torch.save(state, tmp_path / "mobilenet_v2.pth")
    model = create_model("mobile-unet", in_channels=3, width_mult=0.5).eval()
    report = unetkit.load_pretrained(model, tmp_path / "mobilenet_v2.pth")
    assert report.format == "torchvision-mobilenet"
    assert sorted(report.loaded) == sorted(k for k in model.state_dict() if k.startswith("encoder."))
    assert sorted(report.unexpected) == sorted(k for k in state if k.startswith(("features.18.", "classifier.")))
    # features.5 = second block of the stride-8 group (t = 6, residual): computed by hand
    block = model.encoder.levels[2][1]
    x = torch.randn(1, make_divisible(32 * 0.5), 9, 9)
    p, s = "features.5.conv", state
    y = F.relu6(_bn_eval(F.conv2d(x, s[f"{p}.0.0.weight"]), s, f"{p}.0.1"))
    y = F.relu6(_bn_eval(F.conv2d(y, s[f"{p}.1.0.weight"], padding=1, groups=y.shape[1]), s, f"{p}.1.1"))
    y = _bn_eval(F.conv2d(y, s[f"{p}.2.weight"]), s, f"{p}.3")
    with torch.no_grad():
        assert torch.allclose(block(x), x + y, atol=1e-4)


# ---- TransUNet R50+ViT-B_16.npz ----------------------------------------------------------------
def transunet_npz(width: int, blocks: tuple[int, ...], hidden: int, heads: int, mlp: int, depth: int,
                  grid: int) -> dict:
    """The R50+ViT-B_16.npz key layout (JAX names, HWIO kernels) at reduced sizes."""
    a = lambda *shape: rnd(*shape).numpy()  # noqa: E731
    s = {"conv_root/kernel": a(7, 7, 3, width), "gn_root/scale": a(width), "gn_root/bias": a(width)}
    cin = width
    for i, n in enumerate(blocks):
        mid, out = width * 2**i, 4 * width * 2**i
        for j in range(n):
            p = f"block{i + 1}/unit{j + 1}"
            s[f"{p}/conv1/kernel"], s[f"{p}/conv2/kernel"] = a(1, 1, cin, mid), a(3, 3, mid, mid)
            s[f"{p}/conv3/kernel"] = a(1, 1, mid, out)
            for k, c in ((1, mid), (2, mid), (3, out)):
                s[f"{p}/gn{k}/scale"], s[f"{p}/gn{k}/bias"] = a(c), a(c)
            if j == 0:
                s[f"{p}/conv_proj/kernel"] = a(1, 1, cin, out)
                s[f"{p}/gn_proj/scale"], s[f"{p}/gn_proj/bias"] = a(out), a(out)
            cin = out
    d = hidden // heads
    s.update({"embedding/kernel": a(1, 1, cin, hidden), "embedding/bias": a(hidden), "cls": a(1, 1, hidden),
              "Transformer/posembed_input/pos_embedding": a(1, 1 + grid * grid, hidden),
              "Transformer/encoder_norm/scale": a(hidden), "Transformer/encoder_norm/bias": a(hidden),
              "head/kernel": a(hidden, 5), "head/bias": a(5)})
    for b in range(depth):
        p = f"Transformer/encoderblock_{b}"
        for ln in ("LayerNorm_0", "LayerNorm_2"):
            s[f"{p}/{ln}/scale"], s[f"{p}/{ln}/bias"] = a(hidden), a(hidden)
        for qkv in ("query", "key", "value"):
            s[f"{p}/MultiHeadDotProductAttention_1/{qkv}/kernel"] = a(hidden, heads, d)
            s[f"{p}/MultiHeadDotProductAttention_1/{qkv}/bias"] = a(heads, d)
        s[f"{p}/MultiHeadDotProductAttention_1/out/kernel"] = a(heads, d, hidden)
        s[f"{p}/MultiHeadDotProductAttention_1/out/bias"] = a(hidden)
        s[f"{p}/MlpBlock_3/Dense_0/kernel"], s[f"{p}/MlpBlock_3/Dense_0/bias"] = a(hidden, mlp), a(mlp)
        s[f"{p}/MlpBlock_3/Dense_1/kernel"], s[f"{p}/MlpBlock_3/Dense_1/bias"] = a(mlp, hidden), a(hidden)
    return s


def test_transunet_npz_maps_onto_the_vit_encoder(tmp_path) -> None:
    npz = transunet_npz(width=8, blocks=(1, 2), hidden=16, heads=2, mlp=32, depth=2, grid=3)
    path = tmp_path / "R50+ViT-B_16.npz"
    np.savez(path, **npz)
    model = create_model("transunet", in_channels=1, features=(4, 8, 8), cnn_blocks=(1, 2), cnn_width=8,
                         hidden=16, depth=2, heads=2, mlp_dim=32, img_size=32).eval()  # grid 4: pos resized
    report = unetkit.load_pretrained(model, path)
    assert report.format == "transunet-npz"
    enc = [k for k in model.state_dict() if k.startswith("encoder.") and not k.startswith("encoder.readout")]
    assert sorted(report.loaded) == sorted(enc)
    assert sorted(report.unexpected) == ["cls", "head/bias", "head/kernel"]
    assert "encoder.pos" in report.adapted and all(not k.startswith("encoder.cnn") for k in report.missing)
    vit = model.encoder
    kernel = torch.from_numpy(npz["conv_root/kernel"])  # (H, W, I, O)
    assert torch.equal(vit.cnn.stem_conv.weight[5, 2, 1, 4], kernel[1, 4, 2, 5])
    x = torch.randn(3, 16)
    att = "Transformer/encoderblock_1/MultiHeadDotProductAttention_1"
    t = {k: torch.from_numpy(v) for k, v in npz.items()}
    with torch.no_grad():
        block = vit.blocks[1].attn
        assert torch.allclose(block.q(x), x @ t[f"{att}/query/kernel"].reshape(16, 16)
                              + t[f"{att}/query/bias"].reshape(-1), atol=1e-5)
        k, v = block.kv(x).chunk(2, dim=-1)
        assert torch.allclose(v, x @ t[f"{att}/value/kernel"].reshape(16, 16) + t[f"{att}/value/bias"].reshape(-1),
                              atol=1e-5)
        heads_out = torch.randn(3, 2, 8)  # the output projection sums over (heads, head dim)
        assert torch.allclose(block.proj(heads_out.reshape(3, 16)),
                              torch.einsum("nhd,hdo->no", heads_out, t[f"{att}/out/kernel"]) + t[f"{att}/out/bias"],
                              atol=1e-5)
        out = model(torch.randn(1, 1, 32, 32))
    assert out.shape == (1, 2, 32, 32) and torch.isfinite(out).all()


# ---- Swin-T .pth --------------------------------------------------------------------------------
def swin_pth(embed: int, depths: tuple[int, ...], heads: tuple[int, ...], window: int) -> dict:
    """Official Swin's key layout (`{"model": state_dict}`, buffers included) at reduced sizes."""
    s: dict = {"patch_embed.proj.weight": rnd(embed, 3, 4, 4), "patch_embed.proj.bias": rnd(embed),
               "patch_embed.norm.weight": rnd(embed), "patch_embed.norm.bias": rnd(embed)}
    for i, (n, h) in enumerate(zip(depths, heads)):
        c = embed * 2**i
        for j in range(n):
            p = f"layers.{i}.blocks.{j}"
            s.update({f"{p}.norm1.weight": rnd(c), f"{p}.norm1.bias": rnd(c),
                      f"{p}.attn.relative_position_bias_table": rnd((2 * window - 1) ** 2, h),
                      f"{p}.attn.relative_position_index": torch.zeros(window**2, window**2, dtype=torch.long),
                      f"{p}.attn.qkv.weight": rnd(3 * c, c), f"{p}.attn.qkv.bias": rnd(3 * c),
                      f"{p}.attn.proj.weight": rnd(c, c), f"{p}.attn.proj.bias": rnd(c),
                      f"{p}.norm2.weight": rnd(c), f"{p}.norm2.bias": rnd(c),
                      f"{p}.mlp.fc1.weight": rnd(4 * c, c), f"{p}.mlp.fc1.bias": rnd(4 * c),
                      f"{p}.mlp.fc2.weight": rnd(c, 4 * c), f"{p}.mlp.fc2.bias": rnd(c)})
            if j % 2:
                s[f"{p}.attn_mask"] = torch.zeros(4, window**2, window**2)
        if i < len(depths) - 1:
            s[f"layers.{i}.downsample.reduction.weight"] = rnd(2 * c, 4 * c)
            s[f"layers.{i}.downsample.norm.weight"], s[f"layers.{i}.downsample.norm.bias"] = rnd(4 * c), rnd(4 * c)
    last = embed * 2 ** (len(depths) - 1)
    s.update({"norm.weight": rnd(last), "norm.bias": rnd(last), "head.weight": rnd(10, last), "head.bias": rnd(10)})
    return {"model": s}


def test_swin_pth_maps_onto_encoder_and_mirrored_decoder(tmp_path) -> None:
    ckpt = swin_pth(8, (2, 2, 2), (1, 1, 2), 3)
    torch.save(ckpt, tmp_path / "swin_tiny_patch4_window7_224.pth")
    model = create_model("swin-unet", in_channels=1, features=(8, 16, 32), depths=(2, 2, 2), heads=(1, 1, 2),
                         window=3, patch_size=4).eval()
    report = unetkit.load_pretrained(model, tmp_path / "swin_tiny_patch4_window7_224.pth")
    s = ckpt["model"]
    assert report.format == "swin-pth"
    assert set(report.loaded) == {k for k in model.state_dict() if k.startswith(("encoder.", "decoder.stages."))}
    assert sorted(report.unexpected) == sorted(k for k in s if k.startswith("head.") or k.endswith(
        ("relative_position_index", "attn_mask")))
    assert "encoder.embed.proj.weight" in report.adapted  # RGB -> grey
    attn = model.encoder.stages[1][1].attn
    x = torch.randn(5, 16)
    with torch.no_grad():
        qkv = F.linear(x, s["layers.1.blocks.1.attn.qkv.weight"], s["layers.1.blocks.1.attn.qkv.bias"])
        assert torch.allclose(torch.cat([attn.q(x), attn.kv(x)], dim=-1), qkv, atol=1e-5)
    # the decoder stage of level 1 (decoder.stages[0] is the deepest, level 1) starts from encoder stage 1
    assert torch.equal(model.decoder.stages[0][1].mlp[0].weight, s["layers.1.blocks.1.mlp.fc1.weight"])
    assert torch.equal(model.decoder.stages[1][0].bias_table, s["layers.0.blocks.0.attn.relative_position_bias_table"])
    assert torch.equal(model.encoder.merges[0].reduction.weight, s["layers.0.downsample.reduction.weight"])


# ---- sources, errors, dispatch -------------------------------------------------------------------
def test_shape_mismatch_names_the_tensor_and_loads_nothing(tmp_path) -> None:
    torch.save(swin_pth(8, (2, 2, 2), (1, 1, 2), 7), tmp_path / "swin.pth")  # window 7 tables
    model = create_model("swin-unet", in_channels=3, features=(8, 16, 32), depths=(2, 2, 2), heads=(1, 1, 2),
                         window=3, patch_size=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match=r"encoder\.stages\.0\.0\.bias_table has shape \(169, 1\)"):
        unetkit.load_pretrained(model, tmp_path / "swin.pth")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_create_model_pretrained_and_config(tmp_path) -> None:
    torch.save(torchvision_mobilenet_v2(0.25), tmp_path / "m.pth")
    model = create_model("mobile-unet", in_channels=3, width_mult=0.25, pretrained=str(tmp_path / "m.pth"))
    assert model.pretrained_report.format == "torchvision-mobilenet" and model.pretrained_report.loaded
    assert "pretrained" not in model.unetkit_config  # the weights live in checkpoints, not the config
    with pytest.raises(ConfigError, match="no such file"):
        create_model("mobile-unet", pretrained=str(tmp_path / "nothing.pth"))


def test_offline_download_says_where_to_put_the_file(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("UNETKIT_CACHE", str(tmp_path / "cache"))
    url = "http://127.0.0.1:9/weights/resnet50-test.pth"  # nothing listens on the discard port
    with pytest.raises(ConfigError, match=r"put it at .*cache/resnet50-test\.pth"):
        pt.resolve_source(url)
    assert not (tmp_path / "cache" / "resnet50-test.pth").exists()  # no half-written file
    (tmp_path / "cache").mkdir(exist_ok=True)
    torch.save(torchvision_resnet(8, (1, 1)), tmp_path / "cache" / "resnet50-test.pth")
    assert pt.resolve_source(url) == tmp_path / "cache" / "resnet50-test.pth"  # the cached copy, no network
    (tmp_path / "cache" / "resnet50-19c8e357.pth").write_bytes(b"x")  # a known name maps to its cached file
    assert pt.resolve_source("resnet50") == tmp_path / "cache" / "resnet50-19c8e357.pth"


def test_unknown_layout_and_format_dispatch(tmp_path) -> None:
    torch.save({"foo.weight": torch.zeros(2)}, tmp_path / "x.pth")
    with pytest.raises(ConfigError, match="unknown checkpoint layout"):
        unetkit.load_pretrained(create_model("unet", features=(4, 8)), tmp_path / "x.pth")
    seen = {}

    def load(model, state, source):
        seen["keys"] = sorted(state)
        return pt.LoadReport("fake", source)

    pt.register_format(pt.Format("fake", lambda s: "foo.weight" in s, load=load))
    try:
        report = unetkit.load_pretrained(create_model("unet", features=(4, 8)), tmp_path / "x.pth")
    finally:
        pt.FORMATS.pop("fake")
    assert report.format == "fake" and seen["keys"] == ["foo.weight"]
