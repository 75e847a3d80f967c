"""Few-shot segmentation from k = 1..5 labelled examples: transfer learning and prototypes.

`fine_tune` is transfer learning (迁移学习): start from a pretrained model (see
`unetkit.paradigms.pretrain`, or any trained U-Net), freeze the encoder (fully, or all but its
normalisation layers: "bn-only", after Frankle et al., "Training BatchNorm and only BatchNorm",
ICLR 2021), and train the rest on heavily augmented random crops of the k support images.

`PrototypeSegmenter` needs no training at all (PANet: Wang et al., "PANet: few-shot image semantic
segmentation with prototype alignment", ICCV 2019): masked average pooling of the support
features gives one prototype per class, and each query pixel takes the class of the most
cosine-similar prototype.

    fine_tune(model, support_images, support_masks, steps=100)       # in place; loss history
    seg = PrototypeSegmenter(model).fit(support_images, support_masks)
    labels = seg.predict(query_images)                               # (N, 1, *S)

Images are normalised float arrays/tensors (C, *S) (or batches (N, C, *S)); masks are class
indices (1, *S) or (*S), 0 = background.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from unetkit.data.augment import build_augmentation
from unetkit.losses import create_loss
from unetkit.models import layers
from unetkit.paradigms.sampling import (ImageSource, as_image_list, as_mask_list, as_tile, model_device, optimise,
                                        random_crop)

FREEZE_MODES = (True, False, "bn-only")
_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def fine_tune(
    model: nn.Module,
    support_images: ImageSource,
    support_masks: Any,
    steps: int = 100,
    freeze_encoder: bool | str = True,
    lr: float = 1e-3,
    augmentation: str | dict | None = "heavy",
    loss: str | nn.Module = "dice_ce",
    tile_size: int | Sequence[int] = 64,
    batch_size: int = 8,
    seed: int = 0,
) -> list[float]:
    """Fine-tune `model` in place on k labelled support images; returns the loss of every step.

    Args:
        model: a `SegmentationModel` (anything with an `encoder` when freezing it).
        support_images: k normalised images (C, *S) (a list, or a batch (k, C, *S)).
        support_masks: their class-index masks (1, *S) / (*S) (a list, or (k, 1, *S)).
        freeze_encoder: True freezes the encoder (weights and normalisation statistics);
            "bn-only" also freezes it but trains its normalisation layers' scale and shift;
            False trains everything. The decoder and heads always train.
        augmentation: an augmentation preset or config (`unetkit.data.augment`), applied to every
            crop; "heavy" suits k <= 5.
        loss: a registered loss name (`unetkit.losses.list_losses()`) or a loss module.
        tile_size, batch_size: each step trains on `batch_size` random crops of the support images.
    """
    if freeze_encoder not in FREEZE_MODES:
        raise ValueError(f"freeze_encoder must be one of {FREEZE_MODES}, got {freeze_encoder!r}")
    if freeze_encoder and not isinstance(getattr(model, "encoder", None), nn.Module):
        raise TypeError(f"freeze_encoder={freeze_encoder!r} needs a model with an `encoder` "
                        f"(a SegmentationModel); {type(model).__name__} has none: pass freeze_encoder=False")
    dims = int(getattr(model, "spatial_dims", 2))
    images = as_image_list(support_images, dims, "support_images")
    masks = as_mask_list(support_masks, len(images), dims)
    for i, (im, m) in enumerate(zip(images, masks)):
        if im.shape[1:] != m.shape[1:]:
            raise ValueError(f"support image {i} {im.shape} and mask {m.shape} sizes differ")
    loss_fn = create_loss(loss) if isinstance(loss, str) else loss
    tile = as_tile(tile_size, dims)
    rng = np.random.default_rng(seed)
    augment = build_augmentation(augmentation, spatial_dims=dims, seed=seed)
    device = model_device(model)

    def step_loss(_: int) -> torch.Tensor:
        xs, ys = [], []
        for _ in range(batch_size):
            k = int(rng.integers(len(images)))
            image, mask = random_crop([images[k], masks[k]], tile, rng)
            out = augment(image, mask)
            xs.append(out["image"])
            ys.append(out["mask"])
        x = torch.from_numpy(np.stack(_common_size(xs))).to(device)
        y = torch.from_numpy(np.stack(_common_size(ys))).to(device)
        return loss_fn(model(x), y)

    saved = {name: p.requires_grad for name, p in model.named_parameters()}
    was_training = model.training
    try:
        model.train()
        if freeze_encoder:
            _freeze(model.encoder, train_norms=freeze_encoder == "bn-only")
        return optimise(model.parameters(), step_loss, steps, lr)
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(saved[name])
        model.train(was_training)


def _freeze(encoder: nn.Module, train_norms: bool) -> None:
    """Stop gradients into `encoder` (but its norm layers' affine parameters when `train_norms`),
    and keep its normalisation statistics fixed (eval mode)."""
    for p in encoder.parameters():
        p.requires_grad_(False)
    for module in encoder.modules():
        if isinstance(module, _NORMS):
            module.eval()
            if train_norms:
                for p in module.parameters():
                    p.requires_grad_(True)


def _common_size(arrays: list[np.ndarray]) -> list[np.ndarray]:
    size = np.min([a.shape[1:] for a in arrays], axis=0)
    return [a[(slice(None), *(slice(0, int(s)) for s in size))] for a in arrays]


# ---- prototypes (PANet) -----------------------------------------------------------------------------
class PrototypeSegmenter:
    """Training-free few-shot segmentation by class prototypes (Wang et al., ICCV 2019).

    features: a `SegmentationModel` (its last decoder map, `model.features(x)[0]`, is used), or any
        module / callable mapping (N, C, *S) -> (N, D, *S') feature maps (resized to *S).
    scale: the cosine similarities are multiplied by it (PANet uses 20) before the softmax.

    fit(images, masks): one prototype per class 0..max(mask): the mean feature over that class's
        pixels in all support images (masked average pooling).
    predict_logits(x (N, C, *S)) -> (N, K, *S) scaled cosine similarities (K = classes 0..max).
    predict(x) -> (N, 1, *S) class indices.
    """

    def __init__(self, features: nn.Module | Callable[[torch.Tensor], torch.Tensor], scale: float = 20.0) -> None:
        if hasattr(features, "features") and hasattr(features, "decoder"):
            model = features
            self.extract: Callable[[torch.Tensor], torch.Tensor] = lambda x: model.features(x)[0]
        else:
            self.extract = features
        self.module = features if isinstance(features, nn.Module) else None
        self.scale = float(scale)
        self.prototypes: torch.Tensor | None = None  # (K, D)
        self.spatial_dims = int(getattr(features, "spatial_dims", 2))

    @torch.no_grad()
    def _features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, *S) -> (N, D, *S) features at the input size."""
        if self.module is not None:
            self.module.eval()
            x = x.to(model_device(self.module))
        f = self.extract(x).float()
        if f.shape[2:] != x.shape[2:]:
            f = F.interpolate(f, size=x.shape[2:], mode=layers.interp_mode(x.dim() - 2), align_corners=False)
        return f

    def fit(self, images: ImageSource, masks: Any) -> "PrototypeSegmenter":
        """Prototypes from support images (C, *S) and their class masks; returns self."""
        images_ = as_image_list(images, self.spatial_dims, "support_images")
        masks_ = as_mask_list(masks, len(images_), self.spatial_dims)
        num_classes = int(max(m.max() for m in masks_)) + 1
        if num_classes < 2:
            raise ValueError("the support masks hold only background: need at least one foreground pixel")
        sums, counts = None, torch.zeros(num_classes, dtype=torch.float64)
        for image, mask in zip(images_, masks_):
            f = self._features(torch.from_numpy(image)[None])[0].flatten(1).double().cpu()  # (D, P)
            onehot = F.one_hot(torch.from_numpy(mask).flatten().long().clamp_min(0), num_classes).double()  # (P, K)
            s = f @ onehot  # (D, K)
            sums = s if sums is None else sums + s
            counts += onehot.sum(0)
        missing = [k for k in range(num_classes) if counts[k] == 0]
        if missing:
            raise ValueError(f"classes {missing} have no pixel in the support masks")
        self.prototypes = (sums / counts).T.float()  # (K, D)
        return self

    def predict_logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.prototypes is None:
            raise RuntimeError("call fit(support_images, support_masks) before predicting")
        x = torch.as_tensor(x, dtype=torch.float32)
        x = x[None] if x.dim() == self.spatial_dims + 1 else x
        f = F.normalize(self._features(x).cpu(), dim=1)  # (N, D, *S)
        p = F.normalize(self.prototypes, dim=1)  # (K, D)
        return self.scale * torch.einsum("nd...,kd->nk...", f, p)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.predict_logits(x).argmax(1, keepdim=True)
