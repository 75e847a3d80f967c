"""Decoders: turn an encoder's feature pyramid into maps highest resolution first."""
from unetkit.models.decoders.unet import UNetDecoder

__all__ = ["UNetDecoder"]
