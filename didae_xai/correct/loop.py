"""The small training loop the correctors share, with weighted sampling and selection on validation.

:func:`didae_xai.models.training.fit` draws uniform or class-balanced batches; correctors need other
draws (group-balanced for GroupDRO, half counterfactuals / half real data for CFKD) and losses that see
more than ``(outputs, targets)``. Here the caller gives ``batch_loss(indices) -> scalar`` and per-sample
sampling weights; the loop handles the optimiser, the learning-rate schedule, progress, seeding and
keeping the best epoch on validation.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, replace
from typing import Callable, Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from didae_xai.models.training import TrainConfig, learning_rate, make_optimizer, optimization_step

#: Last-layer training on precomputed features (cheap: many epochs are fine).
HEAD_CONFIG = TrainConfig(epochs=50, lr=1e-3, batch_size=64, optimizer="adam")
#: Fine-tuning all weights of an end-to-end student from its current weights. CPU-sized: about 65
#: steps of 64 images for 800 training images (a ResNet-18 step at 32x32 takes ~1-3 s on 2 cores).
#: SGD at the reference CFKD learning rate (0.01, momentum 0.9), annealed to zero (cosine).
FULL_CONFIG = TrainConfig(epochs=5, lr=1e-2, batch_size=64, optimizer="sgd", momentum=0.9, lr_schedule="cosine")


def default_config(head_only: bool, config: TrainConfig | None, **overrides) -> TrainConfig:
    cfg = config if config is not None else (HEAD_CONFIG if head_only else FULL_CONFIG)
    return replace(cfg, **overrides) if overrides else cfg


def balanced_weights(keys: torch.Tensor) -> torch.Tensor:
    """Per-sample weights giving every distinct key the same total probability (sums to 1)."""
    keys = torch.as_tensor(keys).long()
    _, inverse, counts = torch.unique(keys, return_inverse=True, return_counts=True)
    w = 1.0 / counts[inverse].double()
    return w / w.sum()


def train_loop(
    module: nn.Module,
    params: Iterable[nn.Parameter],
    n: int,
    batch_loss: Callable[[torch.Tensor], torch.Tensor],
    cfg: TrainConfig,
    weights: torch.Tensor | None = None,
    validate: Callable[[], float] | None = None,
    epoch_size: int | None = None,
    desc: str = "correct",
    progress: bool = True,
) -> dict:
    """Minimise ``batch_loss(indices)`` over ``n`` samples.

    Args:
        module: whose ``state_dict`` is kept for the best epoch (and put in train mode per epoch).
        params: the parameters to optimise.
        n: number of samples ``batch_loss`` can index.
        batch_loss: maps a long tensor of sample indices to a scalar loss.
        cfg: the recipe (epochs, lr, batch size, optimiser, seed, schedule).
        weights: sampling weights (n,): each epoch draws ``epoch_size`` indices with replacement;
            ``None``: a random permutation of all samples each epoch.
        validate: ``validate() -> score`` (higher is better) after every epoch, in eval mode; the best
            epoch's weights are restored at the end.
        epoch_size: samples per epoch (default ``n``).

    Returns:
        History: ``loss`` and ``val`` per epoch, ``best_epoch``, ``best_val``, ``config``.
    """
    params = [p for p in params if p.requires_grad]
    optimizer = make_optimizer(params, cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    epoch_size = int(epoch_size or n)
    steps = math.ceil(epoch_size / cfg.batch_size)
    history = {"loss": [], "val": [], "best_epoch": -1, "best_val": -math.inf, "config": asdict(cfg)}
    best_state = None
    for epoch in tqdm(range(cfg.epochs), desc=desc, disable=not progress):
        module.train()
        if weights is None:
            order = torch.randperm(n, generator=gen)[:epoch_size]
        else:
            order = torch.multinomial(weights.double(), epoch_size, replacement=True, generator=gen)
        total, seen = 0.0, 0
        for b in range(steps):
            idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            if len(idx) == 0:
                break
            lr = learning_rate(cfg, epoch * steps + b, cfg.epochs * steps)
            total += optimization_step(optimizer, batch_loss(idx), lr, f"{desc}, epoch {epoch}") * len(idx)
            seen += len(idx)
        history["loss"].append(total / max(seen, 1))
        if validate is not None:
            module.eval()
            score = float(validate())
            history["val"].append(score)
            if score > history["best_val"]:
                history["best_val"], history["best_epoch"] = score, epoch
                best_state = copy.deepcopy(module.state_dict())
    if best_state is not None:
        module.load_state_dict(best_state)
    else:
        history["best_epoch"] = cfg.epochs - 1
    module.eval()
    return history
