"""Frozen image encoders ("foundation models") behind one small protocol, :class:`Backbone`.

Weights always come from local files; nothing is downloaded. Both adapters are registered as
``backbone`` entries: ``didae_xai.registry.create("backbone", "timm", model_name=..., weights=...)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from didae_xai.backbones.base import Backbone
from didae_xai.backbones.openclip_backbone import OpenCLIPBackbone
from didae_xai.backbones.timm_backbone import TimmBackbone
from didae_xai.backbones.weights import load_state_dict_file, load_weights_into
from didae_xai.registry import register

__all__ = [
    "Backbone",
    "OpenCLIPBackbone",
    "TimmBackbone",
    "load_state_dict_file",
    "load_weights_into",
    "open_clip_backbone",
    "timm_backbone",
]


@register("backbone", "timm")
def timm_backbone(model_name: str, weights: str | Path | None = None, **kw: Any) -> TimmBackbone:
    """Any timm image model, frozen, its pooled features as embedding; weights from a local file.

    Args:
        model_name: a timm model name, e.g. ``"resnet18"``.
        weights: local weight file (``.safetensors``, ``.pth``, ...).
        **kw: passed to :class:`TimmBackbone` (``image_size``, ``resize``, ``allow_random``, timm options).

    Returns:
        The backbone.
    """
    return TimmBackbone(model_name, weights=weights, **kw)


@register("backbone", "open_clip")
def open_clip_backbone(arch: str | Path, weights: str | Path | None = None, **kw: Any) -> OpenCLIPBackbone:
    """The image tower of an OpenCLIP model (built-in or JSON config), frozen; weights from a local file.

    Args:
        arch: built-in OpenCLIP architecture name or path of a JSON model config.
        weights: local weight file (OpenCLIP checkpoint, state dict or ``.safetensors``).
        **kw: passed to :class:`OpenCLIPBackbone` (``image_size``, ``resize``, ``allow_random``).

    Returns:
        The backbone.
    """
    return OpenCLIPBackbone(arch, weights=weights, **kw)
