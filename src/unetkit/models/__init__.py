"""Models: the U-Net family behind one registry (`create_model`, `list_models`)."""
from unetkit.models.registry import MODELS, create_model, list_models, model_info, register_model
from unetkit.models.base import Decoder, Encoder, SegmentationModel
from unetkit.models.unet import UNet, unet_original
from unetkit.models.summary import count_flops, count_parameters, model_flops
from unetkit.models.unetpp import UNetPlusPlus
from unetkit.models.attention_unet import AttentionUNet, attention_maps
from unetkit.models.unet3p import UNet3Plus
from unetkit.models.mobile_unet import MobileUNet
from unetkit.models.lite import unet_lite, unet_realtime
from unetkit.models.transunet import TransUNet
from unetkit.models.swin_unet import SwinUNet
from unetkit.models.nnformer import NNFormer
from unetkit.models.hybrid import DECODERS, ENCODERS, hybrid
from unetkit.models.multitask import MultiTaskLoss, MultiTaskUNet
from unetkit.models.temporal import TemporalUNet
from unetkit.models.multimodal import MultiModalUNet
from unetkit.models.pretrained import LoadReport, load_pretrained
from unetkit.models.resenc import RESENC_PRESETS, ResEncUNet

__all__ = [
    "MODELS", "create_model", "list_models", "model_info", "register_model",
    "Encoder", "Decoder", "SegmentationModel", "UNet", "unet_original",
    "count_flops", "count_parameters", "model_flops",
    "UNetPlusPlus", "AttentionUNet", "attention_maps", "UNet3Plus", "MobileUNet", "unet_lite", "unet_realtime",
    "TransUNet", "SwinUNet", "NNFormer", "ENCODERS", "DECODERS", "hybrid",
    "MultiTaskUNet", "MultiTaskLoss", "TemporalUNet", "MultiModalUNet", "load_pretrained", "LoadReport",
    "ResEncUNet", "RESENC_PRESETS",
]
