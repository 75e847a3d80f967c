"""Pruning helpers over `torch.nn.utils.prune`: global unstructured magnitude pruning and
structured L1 channel pruning of conv layers, `remove_pruning` to make it permanent, and a
sparsity report.

    prune_global_unstructured(model, amount=0.5)    # zero the 50% smallest conv weights overall
    prune_channels(model, amount=0.25)              # zero 25% of output channels per conv (L1)
    remove_pruning(model)                           # bake the masks into the weights
    sparsity(model)                                 # {"total": 0.5, "layers": {...}}

Pruning zeroes weights; it does not shrink tensors, so it saves compute only with sparse
kernels. It pairs with fine-tuning (and distillation) to recover accuracy.
"""
from __future__ import annotations

from typing import Iterable

import torch.nn as nn
import torch.nn.utils.prune as tprune

_PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
             nn.Linear)


def prunable_layers(model: nn.Module, include_head: bool = False) -> list[tuple[str, nn.Module]]:
    """(name, module) of the conv/linear layers to prune. The last conv (the classification
    head) is left out unless `include_head`, since pruning class logits hurts most."""
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, _PRUNABLE)]
    if not include_head and len(layers) > 1:
        layers = layers[:-1]
    return layers


def _check_amount(amount: float) -> None:
    if not 0.0 <= amount < 1.0:
        raise ValueError(f"amount must be in [0, 1), got {amount}")


def prune_global_unstructured(model: nn.Module, amount: float, include_head: bool = False) -> nn.Module:
    """Zero the `amount` fraction of smallest-magnitude weights across all prunable layers
    (one global threshold), in place; masks stay attached until `remove_pruning`."""
    _check_amount(amount)
    params = [(m, "weight") for _, m in prunable_layers(model, include_head)]
    tprune.global_unstructured(params, pruning_method=tprune.L1Unstructured, amount=amount)
    return model


def prune_channels(model: nn.Module, amount: float, include_head: bool = False) -> nn.Module:
    """Zero the `amount` fraction of output channels with the smallest L1 norm in every prunable
    layer (structured: whole filters), in place; masks stay attached until `remove_pruning`."""
    _check_amount(amount)
    for _, m in prunable_layers(model, include_head):
        # output channels: dim 0 for conv/linear weights, dim 1 for transposed conv weights
        dim = 1 if isinstance(m, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)) else 0
        tprune.ln_structured(m, "weight", amount=amount, n=1, dim=dim)
    return model


def remove_pruning(model: nn.Module) -> nn.Module:
    """Make pruning permanent: fold every mask into its weight and drop the re-parametrisation."""
    for m in model.modules():
        for name in [k[:-len("_orig")] for k, _ in list(m.named_parameters(recurse=False)) if k.endswith("_orig")]:
            tprune.remove(m, name)
    return model


def is_pruned(model: nn.Module) -> bool:
    """True while pruning masks are attached (before `remove_pruning`)."""
    return tprune.is_pruned(model)


def sparsity(model: nn.Module, layers: Iterable[tuple[str, nn.Module]] | None = None) -> dict:
    """Fraction of exactly-zero weights: {"total": float, "zeros": int, "weights": int,
    "layers": {name: float}} over the prunable layers (head included)."""
    layers = list(layers) if layers is not None else prunable_layers(model, include_head=True)
    per, zeros, total = {}, 0, 0
    for name, m in layers:
        w = m.weight.detach()  # the masked weight while pruning is attached
        z = int((w == 0).sum())
        per[name] = z / w.numel()
        zeros += z
        total += w.numel()
    return {"total": zeros / max(total, 1), "zeros": zeros, "weights": total, "layers": per}


def channel_sparsity(model: nn.Module, include_head: bool = True) -> float:
    """Fraction of output channels whose weights are all zero, over the prunable layers."""
    dead = count = 0
    for _, m in prunable_layers(model, include_head):
        w = m.weight.detach()
        dim = 1 if isinstance(m, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)) else 0
        per_channel = w.transpose(0, dim).reshape(w.shape[dim], -1).abs().sum(1)
        dead += int((per_channel == 0).sum())
        count += per_channel.numel()
    return dead / max(count, 1)

