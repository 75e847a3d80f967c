"""Encoders: feature pyramids highest resolution first (see unetkit.models.base)."""
from unetkit.models.encoders.plain import PlainEncoder

__all__ = ["PlainEncoder"]
