"""U-Net++ (Zhou, Rahman Siddiquee, Tajbakhsh & Liang, "UNet++: A Nested U-Net Architecture for
Medical Image Segmentation", DLMIA 2018), 2D and 3D, with pruning for inference."""
from __future__ import annotations

from typing import Sequence

import torch

from unetkit.models.base import SegmentationModel
from unetkit.models.decoders.unetpp import UNetPlusPlusDecoder
from unetkit.models.encoders.plain import PlainEncoder
from unetkit.models.layers import LayerSpec
from unetkit.models.registry import register_model

# The paper's backbone widths: 32, 64, 128, 256, 512.
UNETPP_FEATURES = (32, 64, 128, 256, 512)
# The authors' Keras Nest_Net (one input channel, one class, no batch norm): "Total params: 9,041,601".
UNETPP_PAPER_PARAMS = 9_041_601


@register_model("unet++", tiny={"features": (4, 8, 16)}, any_size=True, paper_params=UNETPP_PAPER_PARAMS,
                paper_config={"num_classes": 1, "norm": "none"})
class UNetPlusPlus(SegmentationModel):
    """U-Net++: plain-conv encoder, nested dense skip pathways, heads on the top row.

    Args: as `UNet` (spatial_dims, in_channels, num_classes, features, norm, act, dropout,
        deep_supervision, up_mode).

    forward(x (N, C, *S)) -> logits (N, K, *S) of the full network (head on X[0][L-1]).
    With deep_supervision the paper's heads on X[0][L-1], X[0][L-2], ..., X[0][1] are returned,
    all at the input resolution, the full network first: the output of the level-l sub-network
    is `outs[depth - 1 - l]`.

    `prune(level)` returns the sub-network U-Net++ L^level: only the encoder levels and nodes
    that X[0][level] depends on, with that level's head, as a smaller `UNetPlusPlus`
    (the paper's "fast mode"), in this model's dtype and device.

    The paper configuration is `norm="none"` (the authors' DLMIA code has no batch norm, and
    dropout 0.5 after every conv); unetkit defaults to batch norm (as the authors' later TMI
    version) and dropout only at the bottleneck.

    Deep supervision as in the paper: `deep_supervision_weights` are equal (every head weighs
    1 / heads; the Trainer uses them unless the config sets its own), so every pruned
    sub-network is trained as much as the full one. `accurate=True` (with deep supervision) is
    the paper's "accurate mode": in eval mode the first output is the average of all heads'
    probabilities (as logits: log of the mean softmax, or logit of the mean sigmoid for one
    class); training is unchanged.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        num_classes: int = 2,
        features: Sequence[int] = UNETPP_FEATURES,
        norm: LayerSpec = "batch",
        act: LayerSpec = "relu",
        dropout: float = 0.0,
        deep_supervision: bool = False,
        up_mode: str = "transpose",
        accurate: bool = False,
    ) -> None:
        if accurate and not deep_supervision:
            raise ValueError("accurate=True averages the deep-supervision heads: build with deep_supervision=True")
        encoder = PlainEncoder(spatial_dims, in_channels, features, norm, act, dropout)
        decoder = UNetPlusPlusDecoder(spatial_dims, encoder.out_channels, encoder.strides, None, norm, act, 0.0,
                                      up_mode)
        super().__init__(encoder, decoder, num_classes, deep_supervision)
        self.depth = len(features)
        self.accurate = accurate
        heads = len(features) - 1
        self.deep_supervision_weights = [1.0 / heads] * heads

    def forward(self, x: torch.Tensor):
        out = super().forward(x)
        if self.training or not (self.accurate and isinstance(out, list)):
            return out
        return [average_heads(out), *out[1:]]

    def prune(self, level: int) -> "UNetPlusPlus":
        """The sub-network whose output is the head on X[0][level] (1 <= level <= depth - 1),
        with this model's weights, in this model's train/eval mode. Its output equals this
        model's deep-supervision output `outs[depth - 1 - level]`."""
        if not 1 <= level <= self.depth - 1:
            raise ValueError(f"prune level must be in 1..{self.depth - 1} for a depth-{self.depth} U-Net++, got {level}")
        if level < self.depth - 1 and not self.deep_supervision:
            raise ValueError("pruning below the full network needs the deep-supervision heads: build (and train) "
                             "the model with deep_supervision=True")
        config = {**self.unetkit_config, "features": list(self.unetkit_config["features"])[: level + 1],
                  "deep_supervision": False, "accurate": False}
        first = next(self.parameters())
        pruned = UNetPlusPlus(**config).to(device=first.device, dtype=first.dtype)
        state = self.state_dict()
        head = "head." if level == self.depth - 1 else f"aux_heads.{self.depth - 2 - level}."
        wanted = {}
        for key in pruned.state_dict():
            wanted[key] = state[head + key[len("head."):]] if key.startswith("head.") else state[key]
        pruned.load_state_dict(wanted, strict=True)
        return pruned.train(self.training)


def average_heads(outputs: list[torch.Tensor]) -> torch.Tensor:
    """Logits whose probabilities are the mean of the heads' probabilities (softmax over
    channels, or sigmoid for one channel). [(N, K, *S)] -> (N, K, *S)."""
    stacked = torch.stack([o.float() for o in outputs])
    if stacked.shape[2] == 1:
        p = torch.sigmoid(stacked).mean(0).clamp(1e-7, 1 - 1e-7)
        return torch.log(p / (1 - p)).to(outputs[0].dtype)
    return torch.log(torch.softmax(stacked, dim=2).mean(0).clamp_min(1e-12)).to(outputs[0].dtype)
