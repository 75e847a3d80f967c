"""Published pretrained weights into unetkit's modules: `load_pretrained(model, source)`, or
`create_model(name, ..., pretrained=source)`.

Checkpoint families, each with an explicit key mapping (tested on small files in the same key
layout, so no download is needed to check it):

    'transunet-npz'     TransUNet's R50+ViT-B_16.npz (ImageNet-21k; BiT R50 + ViT-B/16, JAX names)
                        -> the ViT encoder of `transunet` (or a hybrid's 'vit' encoder);
    'swin-pth'          Swin-T ImageNet .pth (`{"model": state_dict}`, official Swin names)
                        -> the Swin encoder, and its stages mirrored into the Swin-UNet decoder
                        (as the Swin-UNet authors' `load_from`);
    'torchvision-resnet'      torchvision ResNet state dict -> the first `ResNetEncoder` found;
    'torchvision-mobilenet'   torchvision MobileNetV2 state dict -> the first `MobileNetEncoder`;
    'nnunet-v2'         nnU-Net v2 checkpoints: dispatched to `register_format` (see below).

`source` is a file path, an http(s) URL or a known name (`KNOWN`): URLs are downloaded once to
the cache folder (`$UNETKIT_CACHE`, default ~/.cache/unetkit); offline, the error says where to put
the file. Every tensor is accounted for in the returned `LoadReport`: loaded (model key <- file
key), missing (model tensors the file does not provide, e.g. the decoder), unexpected (file
tensors with no place here, e.g. classifier heads and recomputed buffers), adapted (loaded after a
documented transformation: RGB stem to other channel counts, a resized position embedding).
A shape that cannot be adapted is an error naming both keys, and nothing is loaded.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from unetkit.errors import ConfigError

KNOWN = {
    "R50+ViT-B_16": "https://storage.googleapis.com/vit_models/imagenet21k/R50%2BViT-B_16.npz",
    "swin_tiny_patch4_window7_224": "https://github.com/SwinTransformer/storage/releases/download/v1.0.0/"
                                    "swin_tiny_patch4_window7_224.pth",
    "resnet50": "https://download.pytorch.org/models/resnet50-19c8e357.pth",
    "mobilenet_v2": "https://download.pytorch.org/models/mobilenet_v2-b0353104.pth",
}


@dataclasses.dataclass
class LoadReport:
    """What happened to every tensor: `loaded` maps model keys to file keys."""

    format: str
    source: str
    loaded: dict[str, str] = dataclasses.field(default_factory=dict)
    missing: list[str] = dataclasses.field(default_factory=list)
    unexpected: list[str] = dataclasses.field(default_factory=list)
    adapted: dict[str, str] = dataclasses.field(default_factory=dict)

    def summary(self) -> str:
        lines = [f"{self.source} ({self.format}): {len(self.loaded)} tensors loaded, {len(self.missing)} model "
                 f"tensors not in the file, {len(self.unexpected)} file tensors unused"]
        lines += [f"  adapted {k}: {why}" for k, why in self.adapted.items()]
        return "\n".join(lines)


# ---- sources ---------------------------------------------------------------------------------
def cache_dir() -> Path:
    return Path(os.environ.get("UNETKIT_CACHE", Path.home() / ".cache" / "unetkit"))


def resolve_source(source: str | os.PathLike) -> Path:
    """A local file for `source` (path, URL or known name), downloading URLs to the cache once."""
    text = str(source)
    url = KNOWN.get(text, text if re.match(r"^https?://", text) else None)
    if url is None:
        path = Path(text).expanduser()
        if not path.is_file():
            raise ConfigError(f"pretrained weights '{text}': no such file (known names: {', '.join(KNOWN)}; "
                              "or give an http(s) URL)")
        return path
    target = cache_dir() / urllib.request.url2pathname(url.rsplit("/", 1)[-1]).replace("%2B", "+")
    if target.is_file():
        return target
    from unetkit.io.atomic import atomic_path

    try:
        with urllib.request.urlopen(url, timeout=60) as response, atomic_path(target) as tmp:
            with open(tmp, "wb") as out:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise ConfigError(f"cannot download pretrained weights from {url} ({exc}). Offline: download the file "
                          f"elsewhere and put it at {target} (or pass its path)") from None
    return target


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The tensors (or nested checkpoint dict) of a .npz, .safetensors or PyTorch file; no pickle code runs."""
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                return {k: torch.from_numpy(np.array(data[k])) for k in data.files}
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return dict(load_file(str(path)))
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise ConfigError(f"{path}: cannot read pretrained weights ({type(exc).__name__}: {exc})") from None
    # PyTorch files: weights_only (no code runs); numpy scalars as nnU-Net checkpoints log them are allowed
    from unetkit.models.nnunet_import import read_nnunet_checkpoint

    return read_nnunet_checkpoint(path)


# ---- formats ---------------------------------------------------------------------------------
Mapping_ = dict[str, tuple[str, Callable[[torch.Tensor], torch.Tensor]]]


@dataclasses.dataclass
class Format:
    """`detect(state) -> bool`; `mapping(model, state) -> {model key: (file key, transform)}`.
    A format may instead give `load(model, state, source) -> LoadReport` (whole-model importers)."""

    name: str
    detect: Callable[[Mapping[str, Any]], bool]
    mapping: Callable[[nn.Module, Mapping[str, Any]], Mapping_] | None = None
    load: Callable[[nn.Module, Mapping[str, Any], str], LoadReport] | None = None


FORMATS: dict[str, Format] = {}


def register_format(fmt: Format) -> Format:
    """Add a checkpoint family (e.g. the nnU-Net v2 importer) to `load_pretrained`'s dispatch."""
    FORMATS[fmt.name] = fmt
    return fmt


def _find(model: nn.Module, cls_name: str) -> tuple[str, nn.Module]:
    for name, module in model.named_modules():
        if type(module).__name__ == cls_name:
            return (name + "." if name else ""), module
    raise ConfigError(f"these weights need a model with a {cls_name}; {type(model).__name__} has none")


def _same(t: torch.Tensor) -> torch.Tensor:
    return t


def _hwio(t: torch.Tensor) -> torch.Tensor:  # JAX conv kernel (H, W, I, O) -> (O, I, H, W)
    return t.permute(3, 2, 0, 1)


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1)


def _check_2d(module: nn.Module, what: str) -> None:
    if getattr(module, "spatial_dims", 2) != 2:
        raise ConfigError(f"{what} are 2D weights; this model is {module.spatial_dims}D (build it with spatial_dims=2)")


# -- torchvision ResNet
def _detect_resnet(state: Mapping[str, Any]) -> bool:
    return "conv1.weight" in state and "layer1.0.conv1.weight" in state


def _map_resnet(model: nn.Module, state: Mapping[str, Any]) -> Mapping_:
    prefix, enc = _find(model, "ResNetEncoder")
    _check_2d(enc, "torchvision ResNet weights")
    if enc.style != "torchvision":
        raise ConfigError("torchvision ResNet weights need a ResNetEncoder with style='torchvision' (batch norm); "
                          "this one uses style 'bit'")
    out: Mapping_ = {}

    def bn(ours: str, theirs: str) -> None:
        for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            out[f"{prefix}{ours}.{p}"] = (f"{theirs}.{p}", _same)

    out[f"{prefix}stem_conv.weight"] = ("conv1.weight", _same)
    bn("stem_norm", "bn1")
    for i, stage in enumerate(enc.stages):
        for j, block in enumerate(stage):
            ours, theirs = f"stages.{i}.{j}", f"layer{i + 1}.{j}"
            for k in (1, 2, 3):
                out[f"{prefix}{ours}.conv{k}.weight"] = (f"{theirs}.conv{k}.weight", _same)
                bn(f"{ours}.norm{k}", f"{theirs}.bn{k}")
            if block.projected:
                out[f"{prefix}{ours}.proj_conv.weight"] = (f"{theirs}.downsample.0.weight", _same)
                bn(f"{ours}.proj_norm", f"{theirs}.downsample.1")
    return out


# -- torchvision MobileNetV2
def _detect_mobilenet(state: Mapping[str, Any]) -> bool:
    return "features.0.0.weight" in state and "features.1.conv.0.0.weight" in state


def _map_mobilenet(model: nn.Module, state: Mapping[str, Any]) -> Mapping_:
    prefix, enc = _find(model, "MobileNetEncoder")
    _check_2d(enc, "torchvision MobileNetV2 weights")
    out: Mapping_ = {}

    def bn(ours: str, theirs: str) -> None:
        for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            out[f"{prefix}{ours}.{p}"] = (f"{theirs}.{p}", _same)

    index = 0  # torchvision's features.<index>: the stem, then the inverted residuals in order
    for li, level in enumerate(enc.levels):
        for bi, block in enumerate(level):
            ours, theirs = f"levels.{li}.{bi}", f"features.{index}"
            if index == 0:
                out[f"{prefix}{ours}.0.weight"] = (f"{theirs}.0.weight", _same)
                bn(f"{ours}.1", f"{theirs}.1")
            else:
                steps = len(block.block)  # 2 without expansion, 3 with
                for s in range(steps - 1):  # ConvBNReLU steps: conv.<s>.0 / conv.<s>.1
                    out[f"{prefix}{ours}.block.{s}.0.weight"] = (f"{theirs}.conv.{s}.0.weight", _same)
                    bn(f"{ours}.block.{s}.1", f"{theirs}.conv.{s}.1")
                last = steps - 1  # the linear projection: conv.<last> (weight) + conv.<last + 1> (BN)
                out[f"{prefix}{ours}.block.{last}.0.weight"] = (f"{theirs}.conv.{last}.weight", _same)
                bn(f"{ours}.block.{last}.1", f"{theirs}.conv.{last + 1}")
            index += 1
    return out


# -- TransUNet / BiT R50 + ViT-B/16 (.npz)
def _detect_transunet(state: Mapping[str, Any]) -> bool:
    return "embedding/kernel" in state and any(k.startswith("Transformer/encoderblock_") for k in state)


def _map_transunet(model: nn.Module, state: Mapping[str, Any]) -> Mapping_:
    prefix, vit = _find(model, "ViTEncoder")
    _check_2d(vit, "R50+ViT-B_16 weights")
    if vit.cnn.style != "bit":
        raise ConfigError("R50+ViT-B_16 weights need the ViT encoder's R50 with cnn_style='bit' (GroupNorm + "
                          "weight-standardised convs, the TransUNet default)")
    out: Mapping_ = {}
    cnn = prefix + "cnn."

    def gn(ours: str, theirs: str) -> None:
        out[f"{ours}.weight"] = (f"{theirs}/scale", _flat)
        out[f"{ours}.bias"] = (f"{theirs}/bias", _flat)

    out[cnn + "stem_conv.weight"] = ("conv_root/kernel", _hwio)
    gn(cnn + "stem_norm", "gn_root")
    for i, stage in enumerate(vit.cnn.stages):
        for j, block in enumerate(stage):
            ours, theirs = f"{cnn}stages.{i}.{j}", f"block{i + 1}/unit{j + 1}"
            for k in (1, 2, 3):
                out[f"{ours}.conv{k}.weight"] = (f"{theirs}/conv{k}/kernel", _hwio)
                gn(f"{ours}.norm{k}", f"{theirs}/gn{k}")
            if block.projected:
                out[f"{ours}.proj_conv.weight"] = (f"{theirs}/conv_proj/kernel", _hwio)
                gn(f"{ours}.proj_norm", f"{theirs}/gn_proj")
    out[prefix + "embed.proj.weight"] = ("embedding/kernel", _hwio)
    out[prefix + "embed.proj.bias"] = ("embedding/bias", _same)
    out[prefix + "pos"] = ("Transformer/posembed_input/pos_embedding", _same)  # resized in _adapt
    gn(prefix + "norm", "Transformer/encoder_norm")
    hidden = vit.pos.shape[-1]

    for b in range(len(vit.blocks)):
        ours, theirs = f"{prefix}blocks.{b}", f"Transformer/encoderblock_{b}"
        att = f"{theirs}/MultiHeadDotProductAttention_1"
        gn(f"{ours}.norm1", f"{theirs}/LayerNorm_0")
        gn(f"{ours}.norm2", f"{theirs}/LayerNorm_2")
        out[f"{ours}.attn.q.weight"] = (f"{att}/query/kernel", lambda t: t.reshape(hidden, hidden).t())
        out[f"{ours}.attn.q.bias"] = (f"{att}/query/bias", _flat)
        out[f"{ours}.attn.kv.weight"] = ((f"{att}/key/kernel", f"{att}/value/kernel"),
                                         lambda k, v: torch.cat([k.reshape(hidden, hidden).t(),
                                                                 v.reshape(hidden, hidden).t()]))
        out[f"{ours}.attn.kv.bias"] = ((f"{att}/key/bias", f"{att}/value/bias"),
                                       lambda k, v: torch.cat([k.reshape(-1), v.reshape(-1)]))
        out[f"{ours}.attn.proj.weight"] = (f"{att}/out/kernel", lambda t: t.reshape(hidden, hidden).t())
        out[f"{ours}.attn.proj.bias"] = (f"{att}/out/bias", _same)
        out[f"{ours}.mlp.0.weight"] = (f"{theirs}/MlpBlock_3/Dense_0/kernel", lambda t: t.t())
        out[f"{ours}.mlp.0.bias"] = (f"{theirs}/MlpBlock_3/Dense_0/bias", _same)
        out[f"{ours}.mlp.3.weight"] = (f"{theirs}/MlpBlock_3/Dense_1/kernel", lambda t: t.t())
        out[f"{ours}.mlp.3.bias"] = (f"{theirs}/MlpBlock_3/Dense_1/bias", _same)
    return out


# -- Swin-T (.pth)
def _swin_state(state: Mapping[str, Any]) -> Mapping[str, Any]:
    return state["model"] if "model" in state and isinstance(state["model"], Mapping) else state


def _detect_swin(state: Mapping[str, Any]) -> bool:
    inner = _swin_state(state)
    return "patch_embed.proj.weight" in inner and any(k.startswith("layers.0.blocks.0.attn.qkv") for k in inner)


def _swin_block(out: Mapping_, ours: str, theirs: str, dim: int) -> None:
    out[f"{ours}.norm1.weight"] = (f"{theirs}.norm1.weight", _same)
    out[f"{ours}.norm1.bias"] = (f"{theirs}.norm1.bias", _same)
    out[f"{ours}.bias_table"] = (f"{theirs}.attn.relative_position_bias_table", _same)
    out[f"{ours}.attn.q.weight"] = (f"{theirs}.attn.qkv.weight", lambda t: t[:dim])
    out[f"{ours}.attn.q.bias"] = (f"{theirs}.attn.qkv.bias", lambda t: t[:dim])
    out[f"{ours}.attn.kv.weight"] = (f"{theirs}.attn.qkv.weight", lambda t: t[dim:])
    out[f"{ours}.attn.kv.bias"] = (f"{theirs}.attn.qkv.bias", lambda t: t[dim:])
    for p in ("weight", "bias"):
        out[f"{ours}.attn.proj.{p}"] = (f"{theirs}.attn.proj.{p}", _same)
        out[f"{ours}.norm2.{p}"] = (f"{theirs}.norm2.{p}", _same)
        out[f"{ours}.mlp.0.{p}"] = (f"{theirs}.mlp.fc1.{p}", _same)
        out[f"{ours}.mlp.3.{p}"] = (f"{theirs}.mlp.fc2.{p}", _same)


def _map_swin(model: nn.Module, state: Mapping[str, Any]) -> Mapping_:
    prefix, enc = _find(model, "SwinEncoder")
    _check_2d(enc, "Swin ImageNet weights")
    out: Mapping_ = {}
    for p in ("weight", "bias"):
        out[f"{prefix}embed.proj.{p}"] = (f"patch_embed.proj.{p}", _same)
        out[f"{prefix}embed.norm.{p}"] = (f"patch_embed.norm.{p}", _same)
        out[f"{prefix}norm.{p}"] = (f"norm.{p}", _same)
    for i, stage in enumerate(enc.stages):
        dim = enc.out_channels[i]
        for j in range(len(stage)):
            _swin_block(out, f"{prefix}stages.{i}.{j}", f"layers.{i}.blocks.{j}", dim)
    for i in range(len(enc.merges)):
        out[f"{prefix}merges.{i}.reduction.weight"] = (f"layers.{i}.downsample.reduction.weight", _same)
        for p in ("weight", "bias"):
            out[f"{prefix}merges.{i}.norm.{p}"] = (f"layers.{i}.downsample.norm.{p}", _same)
    # Swin-UNet: the decoder stage of level l starts from encoder stage l's blocks (authors' load_from)
    dec_prefix, dec = next(((n + "." if n else "", m) for n, m in model.named_modules()
                            if type(m).__name__ == "SwinDecoder"), ("", None))
    if dec is not None:
        levels = len(dec.stages)
        for k, stage in enumerate(dec.stages):  # deepest first
            level = levels - 1 - k
            for j in range(min(len(stage), len(enc.stages[level]))):
                _swin_block(out, f"{dec_prefix}stages.{k}.{j}", f"layers.{level}.blocks.{j}",
                            enc.out_channels[level])
    return out


def _nnunet_load(model: nn.Module, state: Mapping[str, Any], source: str) -> LoadReport:
    """Dispatch point for nnU-Net v2 checkpoints (`unetkit.models.nnunet_import`)."""
    try:
        from unetkit.models import nnunet_import  # type: ignore[attr-defined]
    except ImportError:
        raise ConfigError(f"{source} is an nnU-Net v2 checkpoint; this build has no nnU-Net importer "
                          "(unetkit.models.nnunet_import)") from None
    return nnunet_import.load_pretrained_into(model, state, source)


register_format(Format("transunet-npz", _detect_transunet, _map_transunet))
register_format(Format("swin-pth", _detect_swin, _map_swin))
register_format(Format("torchvision-resnet", _detect_resnet, _map_resnet))
register_format(Format("torchvision-mobilenet", _detect_mobilenet, _map_mobilenet))
def _detect_nnunet(state: Mapping[str, Any]) -> bool:
    from unetkit.models.nnunet_import import looks_like_nnunet

    return looks_like_nnunet(dict(state))


register_format(Format("nnunet-v2", _detect_nnunet, load=_nnunet_load))


# ---- loading ---------------------------------------------------------------------------------
def _adapt(key: str, value: torch.Tensor, want: torch.Tensor, report: LoadReport) -> torch.Tensor:
    """Make `value` fit `want` where a documented rule exists; else raise."""
    if value.shape == want.shape:
        return value
    if value.dim() >= 3 and value.shape[0] == want.shape[0] and value.shape[2:] == want.shape[2:] \
            and value.shape[1] == 3:  # an RGB first conv into another channel count
        c = want.shape[1]
        report.adapted[key] = f"RGB kernel -> {c} channel(s): mean over RGB, times 3 / {c} (same response to grey)"
        return value.mean(dim=1, keepdim=True).expand(-1, c, *value.shape[2:]) * (3.0 / c)
    if key.endswith("pos") and value.dim() == 3 and value.shape[-1] == want.shape[-1]:
        tokens = value.shape[1]
        if tokens - 1 == want.shape[1] or (math.isqrt(tokens - 1) ** 2 == tokens - 1
                                           and math.isqrt(tokens) ** 2 != tokens):
            value = value[:, 1:]  # drop the class token
        old, new = math.isqrt(value.shape[1]), math.isqrt(want.shape[1])
        if old * old == value.shape[1] and new * new == want.shape[1]:
            if old != new:
                grid = value.reshape(1, old, old, -1).permute(0, 3, 1, 2)
                grid = F.interpolate(grid, size=(new, new), mode="bilinear", align_corners=False)
                value = grid.permute(0, 2, 3, 1).reshape(1, new * new, -1)
                report.adapted[key] = f"position embedding {old}x{old} -> {new}x{new} (bilinear), class token dropped"
            else:
                report.adapted[key] = "class token dropped"
            return value
    raise ConfigError(f"pretrained tensor for {key} has shape {tuple(value.shape)}, the model needs "
                      f"{tuple(want.shape)}: the checkpoint does not fit this configuration")


def load_pretrained(model: nn.Module, source: str | os.PathLike, format: str = "auto") -> LoadReport:
    """Load published weights (see the module docstring) into `model` in place; -> LoadReport.

    `format`: 'auto' (detected from the key names) or one of `FORMATS`.
    """
    path = resolve_source(source)
    state = read_checkpoint(path)
    if not isinstance(state, Mapping):
        raise ConfigError(f"{path}: not a checkpoint of named tensors")
    if format == "auto":
        found = [f for f in FORMATS.values() if f.detect(state)]
        if not found:
            raise ConfigError(f"{path}: unknown checkpoint layout (first keys: {', '.join(list(state)[:5])}); "
                              f"supported: {', '.join(FORMATS)}")
        fmt = found[0]
    elif format in FORMATS:
        fmt = FORMATS[format]
    else:
        raise ConfigError(f"unknown pretrained format '{format}'; choose one of {', '.join(FORMATS)} or 'auto'")
    if fmt.load is not None:
        return fmt.load(model, state, str(source))
    if fmt.name == "swin-pth":
        state = _swin_state(state)
    mapping = fmt.mapping(model, state)
    own = model.state_dict()
    report = LoadReport(fmt.name, str(source))
    new_state: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for key, (theirs, transform) in mapping.items():
        if key not in own:
            raise ConfigError(f"internal mapping error: {key} is not a tensor of this model")
        names = theirs if isinstance(theirs, tuple) else (theirs,)
        if not all(n in state for n in names):
            continue  # reported as missing below
        value = transform(*(torch.as_tensor(state[n]) for n in names))
        value = _adapt(key, value, own[key], report)
        new_state[key] = value.to(dtype=own[key].dtype)
        report.loaded[key] = " + ".join(names)
        used.update(names)
    with torch.no_grad():
        for key, value in new_state.items():
            own[key].copy_(value)  # state_dict tensors share storage with the parameters and buffers
    report.missing = [k for k in own if k not in new_state]
    report.unexpected = [k for k in state if k not in used]
    return report
