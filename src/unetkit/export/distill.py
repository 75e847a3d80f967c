"""Knowledge distillation for a smaller (faster) student U-Net.

    loss = distillation_loss(student_logits, teacher_logits, target, base_loss, temperature=2, alpha=0.5)
    history = distill(student, teacher, loader, epochs=5)

Soft labels (Hinton et al. 2015): with K > 1 classes, KL(softmax(t / T) || softmax(s / T)) per
pixel; with one channel (binary), binary cross-entropy between sigmoid(s / T) and the soft target
sigmoid(t / T). The soft term is scaled by T**2 so its gradients keep their size as T changes:

    loss = alpha * T**2 * soft + (1 - alpha) * base_loss(student_logits, target)
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def default_base_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for K > 1 (target (N, 1, *S) or (N, *S) class indices), BCE with logits for
    K == 1 (target {0, 1} of the logits' shape or (N, *S))."""
    if logits.shape[1] == 1:
        target = target.float().reshape(logits.shape)
        return F.binary_cross_entropy_with_logits(logits, target)
    if target.dim() == logits.dim():
        target = target[:, 0]
    return F.cross_entropy(logits, target.long())


def soft_label_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """The unscaled soft-label term, averaged over pixels (and the batch)."""
    t = float(temperature)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student {tuple(student_logits.shape)} and teacher {tuple(teacher_logits.shape)} "
                         "logits must have the same shape")
    teacher_logits = teacher_logits.detach()
    if student_logits.shape[1] == 1:
        return F.binary_cross_entropy_with_logits(student_logits / t, torch.sigmoid(teacher_logits / t))
    log_p_s = F.log_softmax(student_logits / t, dim=1)
    log_p_t = F.log_softmax(teacher_logits / t, dim=1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1)  # per pixel
    return kl.mean()


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor | None,
    base_loss: Loss | None = None,
    temperature: float = 2.0,
    alpha: float = 0.5,
) -> torch.Tensor:
    """alpha * T**2 * soft(student, teacher) + (1 - alpha) * base_loss(student, target).

    Shapes: logits (N, K, *S); target as `base_loss` expects (default: class indices
    (N, 1, *S) for K > 1, {0, 1} masks for K == 1). `target` may be None when alpha == 1.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    soft = soft_label_loss(student_logits, teacher_logits, temperature) * temperature**2
    if alpha == 1.0:
        return soft
    if target is None:
        raise ValueError("target is needed when alpha < 1")
    hard = (base_loss or default_base_loss)(student_logits, target)
    return alpha * soft + (1.0 - alpha) * hard


def _split_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(batch, dict):
        return batch["image"], batch.get("mask", batch.get("target"))
    if isinstance(batch, (list, tuple)):
        return batch[0], (batch[1] if len(batch) > 1 else None)
    return batch, None


def _main(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (list, tuple)) else out


def distill(
    student: nn.Module,
    teacher: nn.Module,
    loader: Iterable[Any],
    epochs: int = 1,
    optimizer: torch.optim.Optimizer | None = None,
    lr: float = 1e-3,
    temperature: float = 2.0,
    alpha: float = 0.5,
    base_loss: Loss | None = None,
    device: str | torch.device | None = None,
    max_steps: int | None = None,
) -> list[float]:
    """Train `student` to match `teacher` (frozen, eval mode) on `loader` batches
    ((image, target) pairs, dicts with "image"/"mask", or bare images when alpha == 1).

    Returns the mean loss of each epoch. Deep-supervision outputs: the main logits are used.
    """
    device = torch.device(device) if device is not None else next(student.parameters()).device
    student.to(device).train()
    teacher.to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    optimizer = optimizer or torch.optim.Adam(student.parameters(), lr=lr)
    history: list[float] = []
    steps = 0
    for _ in range(epochs):
        total, count = 0.0, 0
        for batch in loader:
            images, target = _split_batch(batch)
            images = images.to(device).float()
            target = target.to(device) if target is not None else None
            with torch.no_grad():
                teacher_logits = _main(teacher(images))
            loss = distillation_loss(_main(student(images)), teacher_logits, target, base_loss,
                                     temperature, alpha)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
            count += 1
            steps += 1
            if max_steps is not None and steps >= max_steps:
                break
        history.append(total / max(count, 1))
        if max_steps is not None and steps >= max_steps:
            break
    return history
