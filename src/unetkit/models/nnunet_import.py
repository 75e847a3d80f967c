"""Load nnU-Net v2 networks (PlainConvUNet, ResidualEncoderUNet) into unetkit models.

nnU-Net's `checkpoint_final.pth` / `checkpoint_best.pth` is a dict with `network_weights` (the
state dict of dynamic-network-architectures' network) and `init_args` (plans, configuration,
dataset.json). A bare state dict works too. The architecture is read from the tensors'
shapes (widths, blocks, convs per level, biases, per-axis strides and kernels) and checked
against the plans when they are there (the nonlinearity comes from the plans; without them
nnU-Net's default, leaky ReLU 0.01, is assumed); it becomes

    PlainConvUNet        -> create_model("unet", down_mode="stride", norm=..., act=..., conv_bias=...)
    ResidualEncoderUNet  -> create_model("resenc-unet", ...)

Every source tensor is accounted for, by an explicit key map:

    encoder.stages.S.0.convs.M.{conv,norm}.*            -> encoder.levels.S.M.{0,1}.*           (plain)
    encoder.stem.convs.0.{conv,norm}.*                  -> encoder.stem.{0,1}.*                 (resenc)
    encoder.stages.S.blocks.B.{conv1,conv2}.{conv,norm}.* -> encoder.stages.S.B.{conv1,conv2}.{0,1}.*
    encoder.stages.S.blocks.B.skip.I.{conv,norm}.*      -> encoder.stages.S.B.skip.I.{0,1}.*
    decoder.transpconvs.S.*                             -> decoder.blocks.S.up.op.*
    decoder.stages.S.convs.M.{conv,norm}.*              -> decoder.blocks.S.conv.M.{0,1}.*
        (first conv: nnU-Net concatenates (upsampled, skip), unetkit (skip, upsampled): the
        weight's input channels are swapped to match)
    decoder.seg_layers.K.*                              -> head.0.* (K = last), aux_heads.L-1.0.*
        (deep-supervision heads, level L = last - K; dropped, and listed, without deep supervision)
    *.all_modules.I.*, decoder.encoder.*                -> aliases of the keys above: checked equal

nnU-Net's preprocessing (resampling, normalisation) is not imported; the model expects inputs
preprocessed as nnU-Net did. PlainConvUNets with per-axis strides 1/2 and kernels 1/3 (anisotropic
plans) map to `unet` with `strides` / `kernel_sizes`; for the residual encoder, strides other than 2
and kernels other than 3 are not supported and are rejected with a message.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from unetkit.io.checkpoint import CheckpointError

_PREFIXES = ("_orig_mod.", "module.")
_NONLINS = {"LeakyReLU": "leakyrelu", "ReLU": "relu", "GELU": "gelu", "SiLU": "silu"}
_NORMS = {"InstanceNorm": "instance", "BatchNorm": "batch"}


@dataclass
class ImportReport:
    """What happened to every source tensor: `mapped` (ours <- theirs), `aliases` (duplicate keys
    checked equal to the tensor they alias), `dropped` (key -> reason)."""

    kind: str
    mapped: dict[str, str] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        return (f"nnU-Net {self.kind}: {len(self.mapped)} tensors mapped, {len(self.aliases)} aliases checked, "
                f"{len(self.dropped)} dropped" + (f" ({next(iter(self.dropped.values()))})" if self.dropped else ""))


# ---- reading the file -------------------------------------------------------------------------
def read_nnunet_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint dict (`network_weights`, `init_args`, ...) or a bare state dict, read with
    `torch.load(weights_only=True)`; numpy scalars/dtypes (nnU-Net logs them) are allowed, nothing else."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such nnU-Net checkpoint")
    import numpy as np

    allowed: list[Any] = [np.dtype]
    try:
        allowed.append(np._core.multiarray.scalar)  # numpy >= 2
    except AttributeError:  # pragma: no cover - numpy 1.x
        allowed.append(np.core.multiarray.scalar)
    allowed += [type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool")]
    try:
        with torch.serialization.safe_globals(allowed):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - report any unpickling failure the same way
        raise CheckpointError(
            f"{path}: cannot be read with torch.load(weights_only=True) ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:300]}). unetkit never unpickles arbitrary objects; re-save the "
            "network weights alone: torch.save(torch.load(p, weights_only=False)['network_weights'], 'w.pth') "
            "in a trusted environment") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict (nnU-Net checkpoint or state dict), got {type(obj).__name__}")
    return obj


def _split_checkpoint(obj: dict[str, Any], where: str) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    if "network_weights" in obj:
        state, arch = obj["network_weights"], _plans_architecture(obj.get("init_args") or {})
    else:
        state, arch = obj, None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{where}: 'network_weights' is not a state dict of tensors")
    clean = {}
    for k, v in state.items():
        for p in _PREFIXES:
            if k.startswith(p):
                k = k[len(p):]
        clean[k] = v
    return clean, arch


def _plans_architecture(init_args: dict[str, Any]) -> dict[str, Any] | None:
    """`{'network_class_name', 'arch_kwargs'}` of the trained configuration (nnU-Net >= 2.4 plans),
    following `inherits_from`; None when the plans do not say."""
    plans, name = init_args.get("plans"), init_args.get("configuration")
    if not isinstance(plans, dict) or name is None:
        return None
    configs = plans.get("configurations", {})
    merged: dict[str, Any] = {}
    seen = set()
    while name in configs and name not in seen:
        seen.add(name)
        merged = {**configs[name], **merged}
        name = configs[name].get("inherits_from")
    arch = merged.get("architecture")
    return arch if isinstance(arch, dict) else None


# ---- architecture from the tensors ------------------------------------------------------------
def _count(state: dict[str, torch.Tensor], pattern: str) -> int:
    rx = re.compile(pattern)
    found = {int(m.group(1)) for k in state if (m := rx.match(k))}
    if found and found != set(range(len(found))):
        raise CheckpointError(f"gaps in the indices of '{pattern}': {sorted(found)}")
    return len(found)


def infer_architecture(state: dict[str, torch.Tensor], plans_arch: dict[str, Any] | None = None,
                       deep_supervision: bool = False) -> tuple[str, dict[str, Any]]:
    """(unetkit registry name, create_model kwargs) for an nnU-Net state dict."""
    residual = any(k.startswith("encoder.stem.") for k in state)
    n_dec = _count(state, r"decoder\.transpconvs\.(\d+)\.weight$")
    n_stages = n_dec + 1
    if n_dec < 1 or "decoder.seg_layers.0.weight" not in state:
        raise CheckpointError("not an nnU-Net PlainConvUNet/ResidualEncoderUNet state dict "
                              "(no decoder.transpconvs / decoder.seg_layers)")
    seg = state[f"decoder.seg_layers.{n_dec - 1}.weight"]
    spatial_dims = seg.dim() - 2
    num_classes = int(seg.shape[0])
    # transpconvs.0 up-samples from the deepest stage: reversed, the per-axis factors top-down
    up = [tuple(int(k) for k in state[f"decoder.transpconvs.{s}.weight"].shape[2:]) for s in range(n_dec)]
    stage_strides = up[::-1]
    for s, factor in enumerate(up):
        if any(k not in (1, 2) for k in factor) or (residual and any(k != 2 for k in factor)):
            raise CheckpointError(f"decoder.transpconvs.{s} has stride {factor}: unetkit's U-Nets support "
                                  "strides 1 or 2 per axis (the residual encoder 2 in every axis only)")
    stage_kernels: list[tuple[int, ...]] = []
    for k, w in state.items():
        if k.endswith("conv.weight") and "seg_layers" not in k and ".skip." not in k and w.dim() == spatial_dims + 2:
            kernel = tuple(int(x) for x in w.shape[2:])
            if any(x != 3 for x in kernel) and (residual or any(x not in (1, 3) for x in kernel)):
                raise CheckpointError(f"{k} has kernel {kernel}: only 3x3(x3) kernels (plain U-Nets: 1 or 3 "
                                      "per axis) are supported")
    if not residual:
        for s in range(n_stages):
            key = f"encoder.stages.{s}.0.convs.0.conv.weight"
            if key in state:
                stage_kernels.append(tuple(int(x) for x in state[key].shape[2:]))
    norm = "batch" if any(k.endswith("norm.running_mean") for k in state) else "instance"
    if not any(k.endswith("norm.weight") for k in state):
        norm = "none"
    dec_convs = _count(state, r"decoder\.stages\.0\.convs\.(\d+)\.conv\.weight$")
    first = "encoder.stem.convs.0.conv" if residual else "encoder.stages.0.0.convs.0.conv"
    conv_bias = f"{first}.bias" in state
    in_channels = int(state[f"{first}.weight"].shape[1])
    features = []
    for s in range(n_stages):
        key = (f"encoder.stages.{s}.blocks.0.conv1.conv.weight" if residual
               else f"encoder.stages.{s}.0.convs.0.conv.weight")
        if key not in state:
            raise CheckpointError(f"missing {key}: the encoder has fewer stages than the decoder expects")
        features.append(int(state[key].shape[0]))
    act = "leakyrelu"
    if plans_arch:
        kw = plans_arch.get("arch_kwargs", {})
        cls = str(plans_arch.get("network_class_name", ""))
        want = "ResidualEncoderUNet" if residual else "PlainConvUNet"
        if not cls.endswith(want):
            raise CheckpointError(f"plans name network '{cls}', the weights are a {want}")
        nonlin = str(kw.get("nonlin") or "").rsplit(".", 1)[-1]
        if nonlin and nonlin not in _NONLINS:
            raise CheckpointError(f"nonlinearity '{nonlin}' is not supported (supported: {sorted(_NONLINS)})")
        act = _NONLINS.get(nonlin, act)
        slope = (kw.get("nonlin_kwargs") or {}).get("negative_slope", 0.01)
        if act == "leakyrelu" and abs(float(slope) - 0.01) > 1e-12:
            raise CheckpointError(f"LeakyReLU negative_slope {slope} is not supported (unetkit uses 0.01)")
        eps = (kw.get("norm_op_kwargs") or {}).get("eps", 1e-5)
        if abs(float(eps) - 1e-5) > 1e-12:
            raise CheckpointError(f"norm eps {eps} is not supported (unetkit uses 1e-5)")
        norm_name = str(kw.get("norm_op") or "").rsplit(".", 1)[-1]
        for prefix, ours in _NORMS.items():
            if norm_name.startswith(prefix) and ours != norm:
                raise CheckpointError(f"plans name norm '{norm_name}', the weights say '{norm}'")
        if kw.get("dropout_op"):
            raise CheckpointError("nnU-Net networks with dropout are not supported")
    common = {"spatial_dims": spatial_dims, "in_channels": in_channels, "num_classes": num_classes,
              "features": tuple(features), "norm": norm, "act": act, "deep_supervision": deep_supervision,
              "conv_bias": conv_bias}
    if residual:
        blocks = tuple(_count(state, rf"encoder\.stages\.{s}\.blocks\.(\d+)\.conv1\.conv\.weight$")
                       for s in range(n_stages))
        return "resenc-unet", {**common, "blocks": blocks, "decoder_convs": dec_convs}
    enc_convs = {_count(state, rf"encoder\.stages\.{s}\.0\.convs\.(\d+)\.conv\.weight$") for s in range(n_stages)}
    if enc_convs != {2} or dec_convs != 2:
        raise CheckpointError(f"PlainConvUNet with {sorted(enc_convs)} encoder / {dec_convs} decoder convs per "
                              "stage: unetkit's unet has 2 and 2")
    geometry: dict[str, Any] = {}
    if any(f != (2,) * spatial_dims for f in stage_strides) or any(k != (3,) * spatial_dims for k in stage_kernels):
        # an anisotropic plan (nnU-Net's pool_op_kernel_sizes / conv_kernel_sizes)
        geometry = {"strides": [list(f) for f in stage_strides], "kernel_sizes": [list(k) for k in stage_kernels]}
    return "unet", {**common, "down_mode": "stride", "up_mode": "transpose", "padding": "same", **geometry}


# ---- the key map ------------------------------------------------------------------------------
_CNA = {"conv": "0", "norm": "1"}


def _map_key(key: str, residual: bool, n_dec: int, deep_supervision: bool) -> tuple[str | None, str]:
    """(our key or None, why it is dropped) for one canonical nnU-Net key."""
    m = re.match(r"encoder\.stem\.convs\.0\.(conv|norm)\.(.+)$", key)
    if m and residual:
        return f"encoder.stem.{_CNA[m[1]]}.{m[2]}", ""
    m = re.match(r"encoder\.stages\.(\d+)\.0\.convs\.(\d+)\.(conv|norm)\.(.+)$", key)
    if m and not residual:
        return f"encoder.levels.{m[1]}.{m[2]}.{_CNA[m[3]]}.{m[4]}", ""
    m = re.match(r"encoder\.stages\.(\d+)\.blocks\.(\d+)\.(conv1|conv2)\.(conv|norm)\.(.+)$", key)
    if m and residual:
        return f"encoder.stages.{m[1]}.{m[2]}.{m[3]}.{_CNA[m[4]]}.{m[5]}", ""
    m = re.match(r"encoder\.stages\.(\d+)\.blocks\.(\d+)\.skip\.(\d+)\.(conv|norm)\.(.+)$", key)
    if m and residual:
        return f"encoder.stages.{m[1]}.{m[2]}.skip.{m[3]}.{_CNA[m[4]]}.{m[5]}", ""
    m = re.match(r"decoder\.transpconvs\.(\d+)\.(.+)$", key)
    if m:
        return f"decoder.blocks.{m[1]}.up.op.{m[2]}", ""
    m = re.match(r"decoder\.stages\.(\d+)\.convs\.(\d+)\.(conv|norm)\.(.+)$", key)
    if m:
        return f"decoder.blocks.{m[1]}.conv.{m[2]}.{_CNA[m[3]]}.{m[4]}", ""
    m = re.match(r"decoder\.seg_layers\.(\d+)\.(.+)$", key)
    if m:
        level = n_dec - 1 - int(m[1])
        if level == 0:
            return f"head.0.{m[2]}", ""
        if deep_supervision:
            return f"aux_heads.{level - 1}.0.{m[2]}", ""
        return None, "deep-supervision head (load with deep_supervision=True to keep it)"
    return None, ""


def _alias_target(key: str, state: dict[str, torch.Tensor]) -> str | None:
    """The canonical key a duplicate key (`decoder.encoder.*`, `*.all_modules.I.*`) stands for."""
    if key.startswith("decoder.encoder."):
        return _alias_target(key[len("decoder."):], state) or key[len("decoder."):]
    m = re.match(r"(.+)\.all_modules\.(\d+)\.(.+)$", key)
    if m:
        for part in ("conv", "norm"):
            cand = f"{m[1]}.{part}.{m[3]}"
            if cand in state and state[cand].shape == state[key].shape and torch.equal(state[cand], state[key]):
                return cand
        return f"{m[1]}.?.{m[3]}"
    return None


def convert_nnunet_state_dict(state: dict[str, torch.Tensor], model: nn.Module,
                              deep_supervision: bool = False) -> tuple[dict[str, torch.Tensor], ImportReport]:
    """nnU-Net state dict -> a state dict for `model` (built by `infer_architecture`), with the report.
    Raises CheckpointError when a tensor is left over, missing, or of the wrong shape."""
    residual = any(k.startswith("encoder.stem.") for k in state)
    n_dec = _count(state, r"decoder\.transpconvs\.(\d+)\.weight$")
    report = ImportReport("ResidualEncoderUNet" if residual else "PlainConvUNet")
    ours = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    problems = []
    for key, value in state.items():
        target = _alias_target(key, state)
        if target is not None:
            if target not in state or not torch.equal(state[target], value):
                problems.append(f"{key}: duplicate of '{target}' but not equal to it")
            report.aliases[key] = target
            continue
        new, why = _map_key(key, residual, n_dec, deep_supervision)
        if new is None:
            if why:
                report.dropped[key] = why
            else:
                problems.append(f"{key}: no counterpart in unetkit's {model.unetkit_arch}")
            continue
        if new not in ours:
            problems.append(f"{key} -> {new}: not a tensor of the unetkit model")
            continue
        m = re.match(r"decoder\.stages\.(\d+)\.convs\.0\.conv\.weight$", key)
        if m:  # (upsampled, skip) -> (skip, upsampled) input channels
            up = state[f"decoder.transpconvs.{m[1]}.weight"].shape[1]
            value = torch.cat([value[:, up:], value[:, :up]], dim=1)
        if tuple(value.shape) != tuple(ours[new].shape):
            problems.append(f"{key} {tuple(value.shape)} -> {new} {tuple(ours[new].shape)}: shapes differ")
            continue
        out[new] = value.detach().clone()
        report.mapped[new] = key
    missing = [k for k in ours if k not in out]
    if missing:
        problems.append(f"unetkit tensors with no nnU-Net source: {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    if problems:
        raise CheckpointError("nnU-Net import failed:\n  " + "\n  ".join(problems[:20]))
    return out, report


def nnunet_to_unetkit(obj: dict[str, Any], deep_supervision: bool = False,
                      where: str = "nnU-Net checkpoint") -> tuple[nn.Module, ImportReport]:
    """Build the unetkit model for an nnU-Net checkpoint dict (or state dict) and load its weights."""
    from unetkit.models.registry import create_model

    state, plans_arch = _split_checkpoint(obj, where)
    canonical = {k: v for k, v in state.items() if _alias_target(k, state) is None}
    arch, config = infer_architecture(canonical, plans_arch, deep_supervision)
    model = create_model(arch, **config)
    converted, report = convert_nnunet_state_dict(state, model, deep_supervision)
    model.load_state_dict(converted, strict=True)
    model.nnunet_import_report = report
    return model, report


def load_nnunet(path: str | os.PathLike, deep_supervision: bool = False) -> nn.Module:
    """Load an nnU-Net v2 `checkpoint_final.pth` (or a saved state dict) of a PlainConvUNet or
    ResidualEncoderUNet as a unetkit model (`unet` with down_mode='stride', or `resenc-unet`).
    The model is in eval mode; `model.nnunet_import_report` lists what became of every tensor."""
    model, _ = nnunet_to_unetkit(read_nnunet_checkpoint(path), deep_supervision, where=str(path))
    return model.eval()


def is_nnunet_checkpoint(path: str | os.PathLike) -> bool:
    """True for a `.pth`/`.pt` file (the nnU-Net formats); the loader checks the content. For
    `load_pretrained` to dispatch on."""
    return Path(path).suffix.lower() in (".pth", ".pt")


def looks_like_nnunet(state: Any) -> bool:
    """An nnU-Net v2 checkpoint dict, or a bare PlainConvUNet / ResidualEncoderUNet state dict."""
    if not isinstance(state, dict):
        return False
    if "network_weights" in state:
        return True
    keys = [k.split("module.", 1)[-1].split("_orig_mod.", 1)[-1] for k in state]
    return any(k.startswith("encoder.stages.") for k in keys) and any(k.startswith("decoder.seg_layers.") for k in keys)


def load_pretrained_into(model: nn.Module, state: dict[str, Any], source: str):
    """`unetkit.load_pretrained`'s nnU-Net v2 format: the checkpoint's weights into `model` (a
    `unet` with down_mode='stride' or a `resenc-unet` of the same shape; build one that fits with
    `load_nnunet`). Every tensor is accounted for, or CheckpointError names the ones that are not."""
    from unetkit.models.pretrained import LoadReport

    weights, _ = _split_checkpoint(dict(state), source)
    converted, report = convert_nnunet_state_dict(weights, model, bool(getattr(model, "deep_supervision", False)))
    model.load_state_dict(converted, strict=True)
    return LoadReport("nnunet-v2", source, loaded=dict(report.mapped),
                      unexpected=[f"{k} ({why})" for k, why in report.dropped.items()],
                      adapted={k: f"duplicate of {t}, checked equal" for k, t in report.aliases.items()})
