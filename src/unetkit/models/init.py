"""Weight initialisation for every model of the family, in one place (`init_weights`), applied
by the registry when a model is built:

- convolutions and transposed convolutions: He-normal (Kaiming, fan-in, ReLU gain), zero bias,
  as the CNN U-Nets' code (U-Net, U-Net++, Attention U-Net, UNet 3+, nnU-Net);
- linear layers: truncated normal with std 0.02, zero bias, as the transformer U-Nets' code
  (Swin-UNet, nnFormer, TransUNet's ViT);
- normalisation layers with an affine part: weight 1, bias 0.

Position embeddings and relative-position bias tables keep the truncated normal (0.02) their
modules give them. Without it, PyTorch's default (Kaiming-uniform with a = sqrt(5), gain 1/sqrt(3)
per layer) shrinks the signal through deep norm-free stacks: at initialisation the logits of the
2015 `unet-original` hardly depend on the input.
"""
from __future__ import annotations

import torch.nn as nn

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm1d,
          nn.InstanceNorm2d, nn.InstanceNorm3d)


def init_weights(model: nn.Module) -> nn.Module:
    """Initialise every conv, linear and norm layer of `model` in place (see the module); returns it."""
    for m in model.modules():
        if isinstance(m, _CONVS):
            # ConvTranspose weights are (in, out, *k): fan-in of the equivalent conv is the output side
            mode = "fan_out" if isinstance(m, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)) \
                else "fan_in"
            nn.init.kaiming_normal_(m.weight, mode=mode, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, _NORMS) and getattr(m, "weight", None) is not None:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    from unetkit.models.encoders.resnet import StdConv  # weight-standardised convs: the same rule

    for m in model.modules():
        if isinstance(m, StdConv):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
    return model
