"""Encoders: feature pyramids highest resolution first (see unetkit.models.base)."""
from unetkit.models.encoders.plain import PlainEncoder
from unetkit.models.encoders.mobilenet import MobileNetEncoder
from unetkit.models.encoders.resnet import ResNetEncoder
from unetkit.models.encoders.vit import ViTEncoder
from unetkit.models.encoders.swin import SwinEncoder
from unetkit.models.encoders.nnformer import NNFormerEncoder

__all__ = ["PlainEncoder", "MobileNetEncoder", "ResNetEncoder", "ViTEncoder", "SwinEncoder", "NNFormerEncoder"]
