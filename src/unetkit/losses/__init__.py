"""Losses: pure functions over tensors (`functional`), thin modules registered in `LOSSES`.

    loss = create_loss("dice_ce", include_background=False)   # or "ce", "dice", "focal", ...
    check_loss_fits(loss, num_classes=3)                       # ConfigError when it cannot fit
    value = loss(logits, target, weight=None)                  # logits (N, K, *S)
"""
from unetkit.losses.registry import LOSSES, check_loss_fits, create_loss, list_losses
from unetkit.losses.targets import MODES, dense_target, resolve_mode
from unetkit.losses.functional import combo_loss, cross_entropy, dice_loss, focal_loss, tversky_loss
from unetkit.losses.modules import ComboLoss, CrossEntropyLoss, DiceLoss, FocalLoss, SegLoss, TverskyLoss
from unetkit.losses.boundary import BoundaryLoss, signed_distance_map, signed_distance_maps
from unetkit.losses.deep_supervision import DeepSupervisionLoss, resize_to
from unetkit.losses.weight_maps import plot_weight_map, separate_touching, unet_weight_map

__all__ = [
    "LOSSES", "create_loss", "list_losses", "check_loss_fits", "MODES", "resolve_mode", "dense_target",
    "cross_entropy", "focal_loss", "dice_loss", "tversky_loss", "combo_loss",
    "SegLoss", "CrossEntropyLoss", "FocalLoss", "DiceLoss", "TverskyLoss", "ComboLoss", "BoundaryLoss",
    "signed_distance_map", "signed_distance_maps", "DeepSupervisionLoss", "resize_to",
    "unet_weight_map", "separate_touching", "plot_weight_map",
]
