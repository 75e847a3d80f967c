"""Multi-task U-Net: one shared encoder, a segmentation decoder + head, an image-level
classification head and a per-pixel regression head; `MultiTaskLoss` combines their losses.

    model = create_model("multitask-unet", num_classes=2, num_labels=3, regression_channels=1)
    out = model.forward_all(x)   # {"segmentation": (N, 2, *S), "classification": (N, 3),
                                 #  "regression": (N, 1, *S)}
    model(x)                     # the segmentation logits only, like every other model
    loss_fn = MultiTaskLoss({"segmentation": create_loss("dice_ce"),
                             "classification": nn.CrossEntropyLoss(), "regression": nn.MSELoss()},
                            learned=True)
    total, parts = loss_fn(out, {"segmentation": mask, "classification": label, "regression": dist})

The auxiliary heads exist only when their sizes are > 0 (the registry default is 0 for both), so
`forward(x)` returns segmentation logits and every parameter of the default model takes part in it.
Typical auxiliary targets: image labels (tumour grade, "contains a lesion") for the classifier
(Mehta et al., "Y-Net", MICCAI 2018), a distance transform or boundary map for the regression head
(`unetkit.losses.signed_distance_maps`; cf. the DCAN contour head, Chen et al., CVPR 2016).
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch
import torch.nn as nn

from unetkit.models.base import SegmentationModel, _crop
from unetkit.models.blocks import SegmentationHead
from unetkit.models.decoders.unet import UNetDecoder
from unetkit.models.encoders.plain import PlainEncoder
from unetkit.models.layers import LayerSpec
from unetkit.models.registry import register_model


class ClassificationHead(nn.Sequential):
    """Global average pooling of the deepest features + a two-layer MLP: (N, C, *S) -> (N, num_labels)."""

    def __init__(self, spatial_dims: int, in_channels: int, num_labels: int, hidden: int | None = None,
                 dropout: float = 0.0) -> None:
        hidden = hidden or max(in_channels, num_labels)
        pool = nn.AdaptiveAvgPool2d(1) if spatial_dims == 2 else nn.AdaptiveAvgPool3d(1)
        super().__init__(pool, nn.Flatten(1), nn.Linear(in_channels, hidden), nn.ReLU(inplace=True),
                         nn.Dropout(dropout), nn.Linear(hidden, num_labels))


@register_model("multitask-unet", tiny={"features": (4, 8, 16)}, any_size=True)
class MultiTaskUNet(SegmentationModel):
    """U-Net with optional image-classification and per-pixel regression heads.

    Args:
        spatial_dims, in_channels, num_classes, features, norm, act, dropout, deep_supervision:
            as `UNet` (`dropout` also applies before the classifier's last layer).
        num_labels: outputs of the classification head (0: no head). Logits for softmax CE
            (or sigmoid BCE for multi-label image tags).
        regression_channels: channels of the per-pixel regression head on the last decoder map
            (0: no head), e.g. 1 for a distance map.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        num_classes: int = 2,
        features: Sequence[int] = (32, 64, 128, 256),
        norm: LayerSpec = "batch",
        act: LayerSpec = "relu",
        dropout: float = 0.0,
        deep_supervision: bool = False,
        num_labels: int = 0,
        regression_channels: int = 0,
    ) -> None:
        if num_labels < 0 or regression_channels < 0:
            raise ValueError(f"num_labels and regression_channels must be >= 0, got {num_labels}, "
                             f"{regression_channels}")
        encoder = PlainEncoder(spatial_dims, in_channels, features, norm, act, dropout)
        decoder = UNetDecoder(spatial_dims, encoder.out_channels, encoder.strides, None, norm, act)
        super().__init__(encoder, decoder, num_classes, deep_supervision)
        self.classifier = (ClassificationHead(spatial_dims, encoder.out_channels[-1], num_labels, dropout=dropout)
                           if num_labels else None)
        self.regressor = (SegmentationHead(spatial_dims, decoder.out_channels[0], regression_channels)
                          if regression_channels else None)

    def forward_all(self, x: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """One pass, every head: {"segmentation": logits (N, K, *S) (a list with deep supervision),
        "classification": (N, num_labels) when built, "regression": (N, R, *S) when built}."""
        x, size = self.prepare_input(x)
        feats = self.encoder(x)
        maps = self.decoder(feats)
        out: dict[str, torch.Tensor | list[torch.Tensor]] = {
            "segmentation": self.head_outputs(maps, size, list(x.shape[2:]))}
        if self.classifier is not None:
            out["classification"] = self.classifier(feats[-1])
        if self.regressor is not None:
            out["regression"] = _crop(self.regressor(maps[0]), size)
        return out


class MultiTaskLoss(nn.Module):
    """Weighted sum of per-task losses, with fixed weights or learned homoscedastic-uncertainty
    weights (Kendall, Gal & Cipolla, "Multi-task learning using uncertainty to weigh losses", CVPR 2018).

    Fixed: total = sum_t w_t * L_t. Learned: total = sum_t exp(-s_t) * L_t + s_t with one trainable
    log-variance s_t = log(sigma_t^2) per task (initialised to 0, i.e. weight 1): a noisy task gets a
    small weight, and the +s_t term stops every weight collapsing to 0. Put `loss_fn.parameters()`
    in the optimiser next to the model's.

    forward(outputs: {task: prediction}, targets: {task: target}) -> (total scalar, {task: L_t detached}).
    Tasks in `losses` but missing from `targets` are skipped (e.g. images without an image label).
    """

    def __init__(self, losses: Mapping[str, Callable[..., torch.Tensor]],
                 weights: Mapping[str, float] | None = None, learned: bool = False) -> None:
        super().__init__()
        if not losses:
            raise ValueError("MultiTaskLoss needs at least one task loss")
        unknown = set(weights or {}) - set(losses)
        if unknown:
            raise ValueError(f"weights name tasks without a loss: {sorted(unknown)}; tasks: {sorted(losses)}")
        if learned and weights:
            raise ValueError("pass either fixed `weights` or learned=True, not both")
        self.losses = dict(losses)
        self.task_modules = nn.ModuleDict(  # so .to(device) moves loss buffers
            {k: v for k, v in losses.items() if isinstance(v, nn.Module)})
        self.weights = {k: float((weights or {}).get(k, 1.0)) for k in losses}
        self.log_vars = nn.ParameterDict({k: nn.Parameter(torch.zeros(())) for k in losses}) if learned else None

    def forward(self, outputs: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        total: torch.Tensor | None = None
        parts: dict[str, torch.Tensor] = {}
        for task, fn in self.losses.items():
            if task not in targets:
                continue
            if task not in outputs:
                raise KeyError(f"no model output for task '{task}' (outputs: {sorted(outputs)}); build the model "
                               f"with that head (num_labels / regression_channels > 0)")
            value = fn(outputs[task], targets[task])
            parts[task] = value.detach()
            if self.log_vars is not None:
                s = self.log_vars[task]
                value = torch.exp(-s) * value + s
            else:
                value = self.weights[task] * value
            total = value if total is None else total + value
        if total is None:
            raise ValueError(f"no targets for any task; tasks: {sorted(self.losses)}")
        return total, parts

    def task_weights(self) -> dict[str, float]:
        """The current weight of each task (exp(-s_t) when learned)."""
        if self.log_vars is None:
            return dict(self.weights)
        return {k: float(torch.exp(-v.detach())) for k, v in self.log_vars.items()}
