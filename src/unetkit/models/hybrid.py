"""Any decoder on any encoder: `create_model("hybrid", encoder="mobilenet", decoder="unet++")`.

Encoders and decoders have their own registries (`ENCODERS`, `DECODERS`); the hybrid model is a
plain `SegmentationModel` whose saved configuration records both names and their keyword
arguments, so it saves and loads like every other model.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Sequence

from unetkit.models.base import SegmentationModel
from unetkit.models.decoders import (AttentionUNetDecoder, CascadedUpsampler, NNFormerDecoder, SwinDecoder,
                                     UNet3PlusDecoder, UNetDecoder, UNetPlusPlusDecoder)
from unetkit.models.encoders import MobileNetEncoder, NNFormerEncoder, PlainEncoder, ResNetEncoder, SwinEncoder, ViTEncoder
from unetkit.models.layers import LayerSpec
from unetkit.models.registry import register_model
from unetkit.registry import Registry

ENCODERS = Registry("encoder")
DECODERS = Registry("decoder")


@ENCODERS.register("plain")
def plain_encoder(spatial_dims: int, in_channels: int, features: Sequence[int] = (32, 64, 128, 256, 512),
                  norm: LayerSpec = "batch", act: LayerSpec = "relu", dropout: float = 0.0) -> PlainEncoder:
    """The U-Net contracting path (DoubleConv + max-pool per level)."""
    return PlainEncoder(spatial_dims, in_channels, features, norm, act, dropout)


ENCODERS.register("mobilenet")(MobileNetEncoder)
ENCODERS.register("resnet")(ResNetEncoder)
ENCODERS.register("vit")(ViTEncoder)
ENCODERS.register("swin")(SwinEncoder)
ENCODERS.register("nnformer")(NNFormerEncoder)
DECODERS.register("unet")(UNetDecoder)
DECODERS.register("unet++")(UNetPlusPlusDecoder)
DECODERS.register("attention")(AttentionUNetDecoder)
DECODERS.register("unet3+")(UNet3PlusDecoder)
DECODERS.register("swin")(SwinDecoder)
DECODERS.register("nnformer")(NNFormerDecoder)
DECODERS.register("cup")(CascadedUpsampler)

HYBRID_TINY = {"encoder": "mobilenet", "decoder": "attention", "encoder_kwargs": {"width_mult": 0.25, "depth": 3}}


def _call(factory: Callable, shared: dict[str, Any], kwargs: dict[str, Any]) -> Any:
    """Call `factory` with `kwargs` plus those `shared` arguments its signature names."""
    params = inspect.signature(factory).parameters
    return factory(**{k: v for k, v in shared.items() if k in params and v is not None}, **kwargs)


@register_model("hybrid", tiny=HYBRID_TINY, any_size=True)
def hybrid(
    spatial_dims: int = 2,
    in_channels: int = 1,
    num_classes: int = 2,
    features: Sequence[int] | None = None,
    norm: LayerSpec = "batch",
    act: LayerSpec = "relu",
    dropout: float = 0.0,
    deep_supervision: bool = False,
    encoder: str = "mobilenet",
    decoder: str = "unet",
    encoder_kwargs: dict[str, Any] | None = None,
    decoder_kwargs: dict[str, Any] | None = None,
) -> SegmentationModel:
    """Any registered decoder on any registered encoder.

    Args:
        features: decoder widths per level above the deepest (default: the encoder's widths);
            only for decoders that take `decoder_channels` (unet, unet++, attention, swin).
        norm, act, dropout: passed to the decoder where it takes them; the encoder keeps its
            own defaults unless `encoder_kwargs` sets them.
        encoder, decoder: names in `ENCODERS` ({encoders}) and `DECODERS` ({decoders}).
        encoder_kwargs, decoder_kwargs: their own arguments (JSON-able, stored in checkpoints).
    Example: hybrid(encoder="mobilenet", decoder="unet++", encoder_kwargs={{"width_mult": 0.5}}).
    """
    enc = ENCODERS.entry(encoder).factory(spatial_dims=spatial_dims, in_channels=in_channels,
                                          **dict(encoder_kwargs or {}))
    dec_factory = DECODERS.entry(decoder).factory
    if features is not None and "decoder_channels" not in inspect.signature(dec_factory).parameters:
        raise ValueError(f"decoder '{decoder}' sets its own widths and takes no `features`; "
                         "pass its options in decoder_kwargs")
    dec = _call(dec_factory,
                {"spatial_dims": spatial_dims, "encoder_channels": enc.out_channels, "encoder_strides": enc.strides,
                 "decoder_channels": features, "norm": norm, "act": act, "dropout": dropout},
                dict(decoder_kwargs or {}))
    return SegmentationModel(enc, dec, num_classes, deep_supervision)


hybrid.__doc__ = hybrid.__doc__.format(encoders=", ".join(ENCODERS.list()), decoders=", ".join(DECODERS.list()))
