"""Any timm image model as a frozen backbone, with weights from a local file only."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from didae_xai.backbones.base import INTERPOLATIONS, Backbone
from didae_xai.backbones.weights import load_state_dict_file, load_weights_into


class TimmBackbone(Backbone):
    """A timm model without its classifier (``num_classes=0``): pooled features are the embedding.

    Weights come only from the local file ``weights`` (never from a hub). A checkpoint that still holds
    the classifier head (e.g. trained with ``num_classes=8``) loads: the head keys are dropped.
    Mean, std, interpolation and input size come from timm's data config; ``image_size`` overrides the size.

    Args:
        model_name: a timm model name, e.g. ``"resnet18"``.
        weights: a local ``.safetensors``/``.pth``/``.pt``/``.bin``/``.ckpt`` file in timm's layout.
        image_size: square side images are resized to (default: the model's input size). For ViTs at
            another size, also pass ``img_size=`` so that the position embeddings match.
        resize: resize inputs to ``image_size``; if ``False``, inputs of another size are an error.
        allow_random: silence the warning given when ``weights`` is ``None`` (random initialisation).
        **timm_kwargs: passed to ``timm.create_model`` (e.g. ``img_size=32``).

    Examples:
        >>> backbone = TimmBackbone("resnet18", weights="resnet18.safetensors", image_size=32)
        >>> z = backbone(images)  # images in [0, 1], (B, 3, H, W) -> z: (B, 512)
    """

    def __init__(
        self,
        model_name: str,
        weights: str | Path | None = None,
        image_size: int | None = None,
        resize: bool = True,
        allow_random: bool = False,
        **timm_kwargs: Any,
    ):
        # Imported here: importing timm takes seconds, and the registry imports this package just to list names.
        import timm

        for key in ("pretrained", "num_classes"):
            if key in timm_kwargs:
                raise ValueError(
                    f"TimmBackbone sets {key} itself (pretrained=False, num_classes=0); remove {key}= from the "
                    "arguments and pass local weights with weights=path."
                )
        model = timm.create_model(model_name, pretrained=False, num_classes=0, **timm_kwargs)
        if weights is not None:
            load_weights_into(model, load_state_dict_file(weights), ignore_prefixes=_classifier_prefixes(model))
        elif not allow_random:
            warnings.warn(
                f"TimmBackbone({model_name!r}) has no weights and stays randomly initialised; pass weights=path "
                "to a local file, or allow_random=True to silence this warning.",
                UserWarning,
                stacklevel=2,
            )
        super().__init__(model, resize=resize, **_timm_config(model, image_size))
        self.model_name = model_name
        self.weights = None if weights is None else str(weights)

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        image_size: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        resize: bool = True,
    ) -> TimmBackbone:
        """Wrap a timm model already in memory (e.g. just trained); the caller's model is left untouched.

        Args:
            model: a timm model; a deep copy has its classifier removed (``reset_classifier(0)``).
            image_size: square side images are resized to (default: the model's input size).
            mean: per-channel normalisation mean (default: the model's data config).
            std: per-channel normalisation std (default: the model's data config).
            resize: resize inputs to ``image_size``.

        Returns:
            The frozen backbone.
        """
        if not hasattr(model, "reset_classifier"):
            raise TypeError(f"from_model needs a timm model (with reset_classifier); got {type(model).__name__}.")
        encoder = copy.deepcopy(model)
        encoder.reset_classifier(0)
        config = _timm_config(encoder, image_size)
        config["mean"] = config["mean"] if mean is None else mean
        config["std"] = config["std"] if std is None else std
        backbone = cls.__new__(cls)
        Backbone.__init__(backbone, encoder, resize=resize, **config)
        backbone.model_name = getattr(encoder, "pretrained_cfg", {}).get("architecture", type(encoder).__name__)
        backbone.weights = None
        return backbone


def _classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    """Key prefixes of the classifier head named in the model's pretrained config (e.g. ``"fc."``)."""
    classifier = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or ()
    names = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    return tuple(f"{name}." for name in names)


def _timm_config(model: nn.Module, image_size: int | None) -> dict[str, Any]:
    """Embedding size, input size and normalisation of a timm model (``image_size`` wins when given)."""
    from timm.data import resolve_data_config

    config = resolve_data_config({}, model=model)
    if image_size is None:
        height, width = config["input_size"][-2:]
        if height != width:
            raise ValueError(f"The model's default input is {height}x{width}, not square; pass image_size=.")
        image_size = height
    interpolation = config.get("interpolation")
    return {
        # head_hidden_size: models with pre-logits (e.g. MobileNetV3) output more than num_features.
        "embedding_dim": getattr(model, "head_hidden_size", None) or model.num_features,
        "image_size": image_size,
        "mean": tuple(config["mean"]),
        "std": tuple(config["std"]),
        "interpolation": interpolation if interpolation in INTERPOLATIONS else "bicubic",
    }
