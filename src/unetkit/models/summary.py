"""Parameter and FLOP counts; FLOPs are counted on the meta device, so no compute is spent."""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Forward FLOPs (multiply and add counted separately) of `model` on one input of
    `input_shape` = (N, C, *S), measured by torch's FLOP counter on the model's device."""
    device = next(model.parameters()).device
    x = torch.zeros(tuple(input_shape), device=device)
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    model.train(was_training)
    return int(counter.get_total_flops())


def model_flops(name: str, input_shape: Sequence[int], **kwargs: Any) -> tuple[int, int]:
    """(parameters, forward FLOPs) of a registered model, built on the meta device."""
    from unetkit.models.registry import create_model

    with torch.device("meta"):
        model = create_model(name, **kwargs)
    return count_parameters(model), count_flops(model, input_shape)
