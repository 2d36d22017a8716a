"""Running a model on images: the input scaling, the model's device, batched hard predictions.

One place for what training, correction and the metrics all do to run any ``nn.Module`` on images
that may be uint8 (``[0, 255]``) or float (``[0, 1]``) and may live on another device than the model.
"""

from __future__ import annotations

import torch
from torch import nn


def as_unit_float(batch: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float in ``[0, 1]``; float tensors pass through (as float32)."""
    return batch.float() / 255.0 if batch.dtype == torch.uint8 else batch.float()


def device_of(model: nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (CPU for an empty module)."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


@torch.no_grad()
def predict_labels(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Argmax predictions (long, on the CPU) of ``model`` on ``images``, batch by batch on the model's
    device, in eval mode (the model's mode is restored)."""
    device = device_of(model)
    was_training = model.training
    model.eval()
    try:
        preds = [model(as_unit_float(images[i : i + batch_size]).to(device)).argmax(1).cpu()
                 for i in range(0, len(images), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(preds).long() if preds else torch.zeros(0, dtype=torch.long)
