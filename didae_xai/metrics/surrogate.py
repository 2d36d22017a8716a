"""The NAFR surrogate (SPEC §5): an independent, adversarially trained copy of the student.

A counterfactual that flips the student but not this surrogate is an adversarial perturbation of
the student rather than a semantic change. Reference recipe: a ResNet-18 whose ReLUs are replaced by
LeakySoftplus, distilled from the student's *hard* predictions with PGD-L2 adversarial training
(ε = 1.0, 5 steps).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from didae_xai.io import load_json, load_tensors
from didae_xai.models.classifiers import TimmClassifier
from didae_xai.models.inference import as_unit_float, device_of, predict_labels
from didae_xai.models.training import TrainConfig, fit

SURROGATE_KIND = "timm_leaky_softplus"

# CPU recipe (the reference: SGD lr 0.01, batch 32, class-balanced, 50 epochs x 1000 steps from
# ImageNet weights). Adam from scratch for a few epochs is what 2 CPU cores allow: one adversarial
# epoch over 1000 images at 32x32 takes about 30-50 s with ResNet-18 there.
SURROGATE_CPU = TrainConfig(epochs=4, lr=1e-3, batch_size=64, optimizer="adam", lr_schedule="cosine", class_balanced=True)


class LeakySoftplus(nn.Module):
    """LeakySoftplus(x) = ½ (LeakyReLU_{0.1}(x) + Softplus_{β=10}(x)): smooth, with useful gradients
    everywhere, so that the surrogate's loss landscape differs from a ReLU student's."""

    def __init__(self, negative_slope: float = 0.1, beta: float = 10.0):
        super().__init__()
        self.negative_slope = negative_slope
        self.beta = beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * (F.leaky_relu(x, self.negative_slope) + F.softplus(x, beta=self.beta))

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}, beta={self.beta}"


def replace_relu(module: nn.Module) -> int:
    """Replace every ``nn.ReLU`` submodule of ``module`` by :class:`LeakySoftplus`, in place.

    Returns:
        The number of modules replaced.
    """
    count = 0
    for name, child in module.named_children():
        if isinstance(child, nn.ReLU):
            setattr(module, name, LeakySoftplus())
            count += 1
        else:
            count += replace_relu(child)
    return count


def leaky_softplus_resnet(arch: str = "resnet18", num_classes: int = 2, image_size: int = 32) -> TimmClassifier:
    """A timm ReLU network (ResNet-18 by default) with every ReLU replaced by LeakySoftplus.

    timm's ResNets hold their activations as ``nn.ReLU`` modules (``act1``, ``act2``, ... and inside
    a deep stem's ``Sequential``), so a recursive module swap reaches all of them.

    Args:
        arch: a timm model name whose activations are ``nn.ReLU`` modules.
        num_classes: outputs of the final layer.
        image_size: the input size (recorded in the config).

    Returns:
        A :class:`TimmClassifier` whose ``config["kind"]`` is ``"timm_leaky_softplus"``; reload a
        saved one with :func:`load_surrogate`, not ``load_classifier``.
    """
    model = TimmClassifier(arch, num_classes=num_classes, image_size=image_size)
    if replace_relu(model) == 0:
        raise ValueError(f"{arch!r} has no nn.ReLU modules to replace; use a ReLU network such as 'resnet18'.")
    left = [name for name, m in model.named_modules() if isinstance(m, nn.ReLU)]
    assert not left, f"ReLU modules left after replacement: {left}"
    # A different kind makes load_classifier fail loudly instead of rebuilding it with ReLUs.
    model.config["kind"] = SURROGATE_KIND
    return model


def load_surrogate(directory: str | Path) -> TimmClassifier:
    """Reload a surrogate written by ``save_classifier`` (``config.json`` + ``model.safetensors``)."""
    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"No surrogate at {directory}: config.json is missing.")
    config = dict(load_json(directory / "config.json"))
    kind = config.pop("kind")
    if kind != SURROGATE_KIND:
        raise ValueError(f"{directory} holds a {kind!r} classifier, not a {SURROGATE_KIND!r} surrogate.")
    model = leaky_softplus_resnet(**config)
    model.load_state_dict(load_tensors(directory / "model.safetensors"))
    return model.eval()


def pgd_l2(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float = 1.0,
    steps: int = 5,
    step_size: float | None = None,
) -> torch.Tensor:
    """L2 projected gradient ascent on the cross-entropy, per sample, from the clean image.

    Each step moves by ``step_size`` along the L2-normalised gradient, projects the perturbation
    back onto the ball ``||δ||_2 ≤ eps`` and clamps the image to ``[0, 1]`` (no random start, as in
    the Madry-lab ``robustness`` defaults). The model is attacked in eval mode and its mode restored.

    Args:
        model: maps ``[0, 1]`` images ``(B, C, H, W)`` to logits ``(B, classes)``.
        x: ``(B, C, H, W)`` float images in ``[0, 1]``.
        y: ``(B,)`` labels whose loss is maximised.
        eps: radius of the L2 ball, in ``[0, 1]`` pixel units over all of C·H·W.
        steps: number of gradient steps.
        step_size: default ``2.5 * eps / steps``.

    Returns:
        ``x_adv``, detached, with ``||x_adv - x||_2 ≤ eps`` per sample and values in ``[0, 1]``.
    """
    if not x.is_floating_point() or x.ndim != 4:
        raise ValueError(f"x must be float images (B, C, H, W) in [0, 1], got {x.dtype} {tuple(x.shape)}.")
    if len(y) != len(x):
        raise ValueError(f"x and y differ in length: {len(x)} vs {len(y)}.")
    if eps <= 0 or steps < 1:
        raise ValueError(f"Need eps > 0 and steps >= 1, got eps={eps}, steps={steps}.")
    step_size = 2.5 * eps / steps if step_size is None else step_size
    x = x.detach()
    y = torch.as_tensor(y, device=x.device).long()
    was_training = model.training
    model.eval()
    try:
        x_adv = x.clone()
        for _ in range(steps):
            x_adv.requires_grad_(True)
            loss = F.cross_entropy(model(x_adv), y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, x_adv)
            norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
            delta = x_adv.detach() + step_size * grad / norm - x
            scale = (eps / delta.flatten(1).norm(dim=1).clamp_min(1e-12)).clamp(max=1.0).view(-1, 1, 1, 1)
            # Clamping after the projection only shrinks |δ| per pixel, so the ball constraint holds.
            x_adv = (x + delta * scale).clamp(0.0, 1.0).detach()
    finally:
        model.train(was_training)
    return x_adv


class _DistillStep(nn.Module):
    """What :func:`fit` trains. ``fit`` hands a model only its inputs, but the attack also needs the
    labels, so the inputs are sample indices and this wrapper looks up both image and label."""

    def __init__(self, surrogate: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                 eps: float, steps: int, adversarial: bool, mix_clean: bool):
        super().__init__()
        self.surrogate = surrogate
        # Plain attributes, not buffers: they must stay out of the checkpoints.
        self.images, self.labels = images, labels
        self.eps, self.steps, self.adversarial, self.mix_clean = eps, steps, adversarial, mix_clean

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        index = index.round().long()
        device = device_of(self.surrogate)
        x = as_unit_float(self.images[index]).to(device)
        if not self.adversarial:
            return self.surrogate(x)
        x_adv = pgd_l2(self.surrogate, x, self.labels[index].to(device), self.eps, self.steps)
        return self.surrogate(torch.cat([x, x_adv]) if self.mix_clean else x_adv)


def distill_surrogate(
    student: nn.Module,
    images: torch.Tensor,
    cfg: TrainConfig = SURROGATE_CPU,
    eps: float = 1.0,
    steps: int = 5,
    adversarial: bool = True,
    mix_clean: bool = True,
    arch: str = "resnet18",
    seed: int = 0,
    checkpoint: str | Path | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> TimmClassifier:
    """Distil the student's hard predictions into a LeakySoftplus network with PGD-L2 training.

    Each step attacks the current surrogate with :func:`pgd_l2` at the student's labels and takes a
    cross-entropy step on the adversarial batch; with ``mix_clean`` (default) the clean batch is
    added with equal weight. The clean half anchors fidelity on natural images: at 32x32 an
    ε = 1 ball can move the red intensity of Square's 4x4 mask by 0.25, half the label range, so a
    purely adversarial loss asks the surrogate to hold labels across genuine class changes.

    Args:
        student: the classifier explained, mapping ``[0, 1]`` images to logits; its hard labels are
            ``argmax student(x)`` in eval mode (what ``Classifier.predict`` returns).
        images: ``(N, 3, H, W)`` ``uint8`` or float in ``[0, 1]`` (e.g. the student's train + val
            images); the surrogate is trained at size ``H``.
        cfg: the optimisation recipe; ``seed`` overrides ``cfg.seed``. Adversarial training costs
            about ``steps + 2`` forward/backward passes per batch.
        eps, steps: the PGD-L2 attack (reference ε = 1.0, 5 steps, for Square at 64x64). The L2
            norm of a given per-pixel change grows with the image side, so scale ε on smaller
            images (e.g. ``size / 64``): at 16x16, ε = 1 spans Square's whole label range and
            training stalls at chance.
        adversarial: ``False`` distils on clean images only (a non-robust baseline).
        mix_clean: train on clean + adversarial batches 50/50 rather than adversarial ones only.
        arch: timm ReLU architecture, converted by :func:`leaky_softplus_resnet`.
        seed: seeds the initial weights and the sample order.
        checkpoint: optional path; training resumes from it after an interruption.
        device: where the surrogate trains; images stay where they are and move batch by batch.
        progress: show a tqdm bar.

    Returns:
        The surrogate in eval mode, with ``fidelity_`` (share of ``images`` on which it agrees with
        the student), ``label_counts_`` (the student's label histogram) and ``history_`` (of ``fit``).
    """
    if images.ndim != 4 or images.shape[1] != 3 or len(images) == 0:
        raise ValueError(f"images must be a non-empty (N, 3, H, W) tensor, got {tuple(images.shape)}.")
    if images.dtype != torch.uint8:
        if not torch.isfinite(images).all() or images.min() < 0 or images.max() > 1:
            raise ValueError("Float images must be finite and lie in [0, 1]; pass uint8 images or scale them.")
    labels = predict_labels(student, images)
    num_classes = int(getattr(student, "num_classes", max(2, int(labels.max()) + 1)))

    torch.manual_seed(seed)
    surrogate = leaky_softplus_resnet(arch, num_classes=num_classes, image_size=int(images.shape[-1])).to(device)
    step = _DistillStep(surrogate, images, labels, eps, steps, adversarial, mix_clean)
    doubled = adversarial and mix_clean

    def loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        y = y.to(out.device)
        return F.cross_entropy(out, torch.cat([y, y]) if doubled else y)

    history = fit(step, torch.arange(len(images)), labels, loss, replace(cfg, seed=seed),
                  checkpoint=checkpoint, desc="surrogate", progress=progress)
    surrogate.eval()
    surrogate.fidelity_ = (predict_labels(surrogate, images) == labels).float().mean().item()
    surrogate.label_counts_ = torch.bincount(labels, minlength=num_classes).tolist()
    surrogate.history_ = history
    return surrogate
