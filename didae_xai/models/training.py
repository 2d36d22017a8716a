"""Seeded, resumable training loops for the classifiers (SPEC §8 recipes, rescaled for CPU).

One loop, :func:`fit`, serves every classifier: the Square foundation model (multi-task), the
students (a linear probe on frozen embeddings, an end-to-end ResNet-18) and the teacher. It shows a
progress bar with the loss, keeps the epoch that scores best on validation, and, given a checkpoint
path, saves its state atomically after every epoch and resumes from it after an interruption.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from didae_xai.data.base import ImageDataset
from didae_xai.io import load_checkpoint, save_checkpoint
from didae_xai.models.classifiers import Classifier, ProbeClassifier, TimmClassifier
from didae_xai.models.inference import as_unit_float, device_of


@dataclass
class TrainConfig:
    """Optimisation recipe. ``class_balanced`` samples every class equally often."""

    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 100
    optimizer: str = "sgd"  # "sgd" (momentum) or "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    seed: int = 0
    class_balanced: bool = False
    lr_schedule: str = "constant"  # "constant" or "cosine" (per step, to zero at the end)


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer of a recipe over ``params`` (which must not be empty)."""
    params = list(params)
    if not params:
        raise ValueError("Nothing to train: no parameter requires gradients.")
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"Unknown optimizer {cfg.optimizer!r}; use 'sgd' or 'adam'.")


def learning_rate(cfg: TrainConfig, step: int, total: int) -> float:
    """The recipe's learning rate at ``step`` of ``total`` (constant, or cosine decay to zero)."""
    if cfg.lr_schedule == "constant":
        return cfg.lr
    if cfg.lr_schedule == "cosine":
        return 0.5 * cfg.lr * (1.0 + math.cos(math.pi * step / max(total, 1)))
    raise ValueError(f"Unknown lr_schedule {cfg.lr_schedule!r}; use 'constant' or 'cosine'.")


def optimization_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, lr: float, where: str) -> float:
    """One gradient step at learning rate ``lr``; a non-finite loss stops the run with advice."""
    if not torch.isfinite(loss):
        raise FloatingPointError(f"{where}: loss became {loss.item()}; lower the learning rate.")
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def _epoch_order(n: int, labels: torch.Tensor | None, cfg: TrainConfig, gen: torch.Generator) -> torch.Tensor:
    if not cfg.class_balanced or labels is None:
        return torch.randperm(n, generator=gen)
    # Draw n samples with equal probability per class (sampling with replacement, as the reference).
    counts = torch.bincount(labels)
    weights = (1.0 / counts.float())[labels]
    return torch.multinomial(weights, n, replacement=True, generator=gen)


def fit(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    cfg: TrainConfig,
    params=None,
    validate: Callable[[nn.Module], float] | None = None,
    checkpoint: str | Path | None = None,
    desc: str = "train",
    progress: bool = True,
) -> dict:
    """Train ``model`` on ``(inputs, targets)`` with minibatch gradient descent.

    Args:
        model: maps a batch of inputs (uint8 images are scaled to ``[0, 1]``) to outputs.
        inputs, targets: the whole training set as tensors (first dimension = samples).
        loss_fn: ``loss_fn(outputs, targets) -> scalar``.
        cfg: the recipe.
        params: parameters to optimise (default: all of ``model``'s that require grad).
        validate: optional ``validate(model) -> score`` (higher is better), called after each epoch;
            the best epoch's weights are restored at the end.
        checkpoint: optional path; written atomically after each epoch and resumed from if present.
        desc: progress-bar label.

    Returns:
        A history dict: ``loss`` and ``val`` per epoch, ``best_epoch``, ``best_val``, ``resumed_from``.
    """
    if len(inputs) != len(targets):
        raise ValueError(f"inputs and targets differ in length: {len(inputs)} vs {len(targets)}.")
    if len(inputs) == 0:
        raise ValueError("Cannot train on an empty dataset.")
    params = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
    optimizer = make_optimizer(params, cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    history = {"loss": [], "val": [], "best_epoch": -1, "best_val": -math.inf, "resumed_from": 0, "config": asdict(cfg)}
    best_state = None
    start = 0
    if checkpoint is not None and Path(checkpoint).is_file():
        state = load_checkpoint(checkpoint)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        history.update(state["history"])
        best_state = state.get("best_model")
        start = history["resumed_from"] = int(state["epoch"])
    labels = targets if targets.dtype == torch.long and targets.ndim == 1 else None
    # Data stays where it is; each batch moves to the model's device.
    device = device_of(model)

    steps_per_epoch = math.ceil(len(inputs) / cfg.batch_size)
    bar = tqdm(range(start, cfg.epochs), desc=desc, disable=not progress, initial=start, total=cfg.epochs)
    for epoch in bar:
        model.train()
        order = _epoch_order(len(inputs), labels, cfg, gen)
        total, seen = 0.0, 0
        for b, i in enumerate(range(0, len(order), cfg.batch_size)):
            idx = order[i : i + cfg.batch_size]
            loss = loss_fn(model(as_unit_float(inputs[idx]).to(device)), targets[idx].to(device))
            lr = learning_rate(cfg, epoch * steps_per_epoch + b, cfg.epochs * steps_per_epoch)
            total += optimization_step(optimizer, loss, lr, f"{desc}, epoch {epoch}") * len(idx)
            seen += len(idx)
        history["loss"].append(total / seen)
        postfix = {"loss": f"{total / seen:.4f}"}
        if validate is not None:
            model.eval()
            score = float(validate(model))
            history["val"].append(score)
            postfix["val"] = f"{score:.4f}"
            if score > history["best_val"]:
                history["best_val"], history["best_epoch"] = score, epoch
                best_state = copy.deepcopy(model.state_dict())
        bar.set_postfix(postfix)
        if checkpoint is not None:
            save_checkpoint(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "generator": gen.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "epoch": epoch + 1,
                    "history": history,
                    **({"best_model": best_state} if best_state is not None else {}),
                },
                checkpoint,
            )
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return history


def accuracy_on(dataset: ImageDataset, batch_size: int = 256) -> Callable[[Classifier], float]:
    """A ``validate`` callback: plain accuracy of a classifier on ``dataset``."""
    images = dataset.float_images()

    def score(model: Classifier) -> float:
        return (model.predict(images, batch_size) == dataset.y).float().mean().item()

    return score


def train_classifier(
    model: Classifier,
    train: ImageDataset,
    cfg: TrainConfig,
    val: ImageDataset | None = None,
    checkpoint: str | Path | None = None,
    desc: str = "classifier",
    progress: bool = True,
) -> dict:
    """Train all weights of ``model`` with cross-entropy on ``train.y``; select on ``val`` accuracy."""
    return fit(
        model,
        train.images,
        train.y,
        F.cross_entropy,
        cfg,
        validate=accuracy_on(val) if val is not None else None,
        checkpoint=checkpoint,
        desc=desc,
        progress=progress,
    )


def train_probe(
    backbone: nn.Module,
    train: ImageDataset,
    cfg: TrainConfig,
    val: ImageDataset | None = None,
    num_classes: int = 2,
    bias: bool = False,
    checkpoint: str | Path | None = None,
    desc: str = "probe",
    progress: bool = True,
) -> tuple[ProbeClassifier, dict]:
    """Train a linear probe on frozen embeddings; the embeddings are computed once, not per epoch."""
    model = ProbeClassifier(backbone, num_classes=num_classes, bias=bias)
    z_train = backbone.embed(train.float_images())
    validate = None
    if val is not None:
        z_val = backbone.embed(val.float_images())

        def validate(head: nn.Module) -> float:
            with torch.no_grad():
                return (head(z_val).argmax(1) == val.y).float().mean().item()

    history = fit(model.head, z_train, train.y, F.cross_entropy, cfg, validate=validate,
                  checkpoint=checkpoint, desc=desc, progress=progress)
    return model.eval(), history


def square_fm_targets(dataset: ImageDataset, class_factors: list[str], continuous_factors: list[str]) -> torch.Tensor:
    """Stack the factors an attribute model predicts: binary classes first, then continuous values."""
    missing = [f for f in class_factors + continuous_factors if f not in dataset.factors]
    if missing:
        raise ValueError(f"{dataset.name} lacks the factors {missing}; it has {list(dataset.factors)}.")
    return torch.stack([dataset.factors[f].float() for f in class_factors + continuous_factors], dim=1)


def attribute_loss(n_classes: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """BCE on the first ``n_classes`` outputs and MSE on the rest (the reference "mixed" loss)."""

    def loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        bce = F.binary_cross_entropy_with_logits(out[:, :n_classes], target[:, :n_classes])
        mse = F.mse_loss(out[:, n_classes:], target[:, n_classes:]) if out.shape[1] > n_classes else 0.0
        return bce + mse

    return loss


def train_attribute_model(
    train: ImageDataset,
    class_factors: list[str],
    continuous_factors: list[str],
    cfg: TrainConfig,
    arch: str = "resnet18",
    val: ImageDataset | None = None,
    checkpoint: str | Path | None = None,
    desc: str = "foundation model",
    progress: bool = True,
    device: str | torch.device = "cpu",
) -> tuple[TimmClassifier, dict]:
    """Train a network to predict every factor (the Square "foundation model", SPEC §8).

    Its pooled penultimate features become the embedding ``z`` of the autoencoder and the probes.
    Validation score: minus the validation loss.
    """
    model = TimmClassifier(arch, num_classes=len(class_factors) + len(continuous_factors), image_size=train.image_size)
    model.to(device)
    targets = square_fm_targets(train, class_factors, continuous_factors)
    loss = attribute_loss(len(class_factors))
    validate = None
    if val is not None:
        val_images, val_targets = val.float_images(), square_fm_targets(val, class_factors, continuous_factors)

        def validate(m: nn.Module) -> float:
            return -loss(m.predict_logits(val_images).float(), val_targets).item()

    history = fit(model, train.images, targets, loss, cfg, validate=validate, checkpoint=checkpoint,
                  desc=desc, progress=progress)
    return model, history


# Recipes. The reference (SPEC §8) trains with SGD lr 1e-3, batch 100 for 300 epochs from ImageNet
# weights; we have no pretrained weights and 2 CPU cores, so the models trained from scratch on the
# large balanced set use Adam for a few epochs. The students keep the reference recipe.
FOUNDATION_CPU = TrainConfig(epochs=8, lr=1e-3, batch_size=128, optimizer="adam", lr_schedule="cosine")
TEACHER_CPU = TrainConfig(epochs=6, lr=1e-3, batch_size=128, optimizer="adam", lr_schedule="cosine")
PROBE_STUDENT = TrainConfig(epochs=300, lr=1e-3, batch_size=100, optimizer="sgd", momentum=0.9)
RESNET_STUDENT = TrainConfig(epochs=60, lr=1e-3, batch_size=100, optimizer="sgd", momentum=0.9)
