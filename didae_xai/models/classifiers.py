"""Classifiers explained and corrected by the package.

Every classifier takes images as ``float`` in ``[0, 1]`` (it normalises internally) and exposes
``features(x)`` (the penultimate activations ``h``) and ``head`` (the final ``nn.Linear``), so that
forward is ``head(features(x))``. Correctors that act on the last layer (DFR, ClArC, projection,
CFKD last-layer retraining) rely on exactly this split.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn

from didae_xai.io import load_json, load_tensors, save_json, save_tensors


class Classifier(nn.Module):
    """Base: ``forward(x) = head(features(x))``; subclasses define ``features`` and ``head``."""

    head: nn.Linear

    def features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    @torch.no_grad()
    def predict_logits(self, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Logits of a (possibly large) batch of ``[0, 1]`` images, in eval mode, without gradients."""
        was_training = self.training
        self.eval()
        try:
            device = next(self.parameters()).device
            return torch.cat([self(x[i : i + batch_size].float().to(device)).cpu() for i in range(0, len(x), batch_size)])
        finally:
            self.train(was_training)

    def predict(self, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Hard class predictions (argmax of the logits)."""
        return self.predict_logits(x, batch_size).argmax(dim=1)


def _check_images(x: torch.Tensor, in_chans: int = 3) -> None:
    if x.ndim != 4 or x.shape[1] != in_chans:
        raise ValueError(f"Expected images of shape (B, {in_chans}, H, W) in [0, 1], got {tuple(x.shape)}.")


class TimmClassifier(Classifier):
    """An end-to-end timm network (ResNet-18 by default) trained from scratch.

    Args:
        arch: any timm model name.
        num_classes: outputs of the final layer.
        image_size: the input size it is trained at (recorded; CNNs accept other sizes).
    """

    def __init__(self, arch: str = "resnet18", num_classes: int = 2, image_size: int = 32, **timm_kwargs):
        super().__init__()
        self.config = {"kind": "timm", "arch": arch, "num_classes": num_classes, "image_size": image_size, **timm_kwargs}
        self.model = timm.create_model(arch, pretrained=False, num_classes=num_classes, **timm_kwargs)
        data_cfg = timm.data.resolve_data_config({}, model=self.model)
        self.register_buffer("mean", torch.tensor(data_cfg["mean"]).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(data_cfg["std"]).view(1, -1, 1, 1), persistent=False)

    @property
    def head(self) -> nn.Linear:  # type: ignore[override]
        return self.model.get_classifier()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        _check_images(x)
        x = (x - self.mean) / self.std
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)

    def as_backbone(self):
        """This network's body as a frozen :class:`~didae_xai.backbones.TimmBackbone` (a copy; the
        pooled penultimate features become the embedding), e.g. the Square foundation model."""
        from didae_xai.backbones import TimmBackbone

        return TimmBackbone.from_model(
            self.model, image_size=self.config["image_size"], mean=self.mean.flatten().tolist(), std=self.std.flatten().tolist()
        )


class ProbeClassifier(Classifier):
    """A linear probe on a frozen backbone: ``head(backbone(x))``.

    Args:
        backbone: a frozen encoder (:class:`didae_xai.backbones.Backbone`) mapping ``[0, 1]`` images
            to embeddings.
        num_classes: number of classes.
        bias: whether the head has a bias (the reference probe has none).
    """

    def __init__(self, backbone: nn.Module, num_classes: int = 2, bias: bool = False):
        super().__init__()
        self.config = {"kind": "probe", "num_classes": num_classes, "bias": bias}
        self.backbone = backbone
        self.head = nn.Linear(backbone.embedding_dim, num_classes, bias=bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)


def save_classifier(model: Classifier, directory: str | Path) -> Path:
    """Write ``config.json`` and ``model.safetensors`` (for a probe: the head only) into ``directory``."""
    directory = Path(directory)
    state = model.head.state_dict() if isinstance(model, ProbeClassifier) else model.state_dict()
    save_tensors(state, directory / "model.safetensors")
    save_json(model.config, directory / "config.json")
    return directory


def load_classifier(directory: str | Path, backbone: nn.Module | None = None) -> Classifier:
    """Rebuild a classifier saved by :func:`save_classifier`; a probe needs its ``backbone``."""
    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"No classifier at {directory}: config.json is missing.")
    config = dict(load_json(directory / "config.json"))
    kind = config.pop("kind")
    state = load_tensors(directory / "model.safetensors")
    if kind == "probe":
        if backbone is None:
            raise ValueError(f"{directory} holds a linear probe; pass the backbone it was trained on.")
        model: Classifier = ProbeClassifier(backbone, **config)
        model.head.load_state_dict(state)
    elif kind == "timm":
        model = TimmClassifier(**config)
        model.load_state_dict(state)
    else:
        raise ValueError(f"Unknown classifier kind {kind!r} in {directory / 'config.json'}.")
    return model.eval()
