"""Models: the U-Net family behind one registry (`create_model`, `list_models`)."""
from unetkit.models.registry import MODELS, create_model, list_models, model_info, register_model
from unetkit.models.base import Decoder, Encoder, SegmentationModel
from unetkit.models.unet import UNet, unet_original
from unetkit.models.summary import count_flops, count_parameters, model_flops

__all__ = [
    "MODELS", "create_model", "list_models", "model_info", "register_model",
    "Encoder", "Decoder", "SegmentationModel", "UNet", "unet_original",
    "count_flops", "count_parameters", "model_flops",
]
