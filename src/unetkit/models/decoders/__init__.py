"""Decoders: turn an encoder's feature pyramid into maps highest resolution first."""
from unetkit.models.decoders.unet import UNetDecoder
from unetkit.models.decoders.unetpp import UNetPlusPlusDecoder
from unetkit.models.decoders.attention import AttentionUNetDecoder
from unetkit.models.decoders.unet3p import UNet3PlusDecoder
from unetkit.models.decoders.swin import SwinDecoder
from unetkit.models.decoders.nnformer import NNFormerDecoder
from unetkit.models.decoders.transunet import CascadedUpsampler

__all__ = ["UNetDecoder", "UNetPlusPlusDecoder", "AttentionUNetDecoder", "UNet3PlusDecoder", "SwinDecoder",
           "NNFormerDecoder", "CascadedUpsampler"]
