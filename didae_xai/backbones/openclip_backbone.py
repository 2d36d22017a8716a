"""The image tower of an OpenCLIP model as a frozen backbone, with weights from a local file only."""

from __future__ import annotations

import contextlib
import difflib
import json
import logging
import warnings
from pathlib import Path

import torch

from didae_xai.backbones.base import INTERPOLATIONS, Backbone
from didae_xai.backbones.weights import load_state_dict_file, load_weights_into


class OpenCLIPBackbone(Backbone):
    """``model.encode_image`` of an OpenCLIP model: the image tower ``model.visual``; the text tower is dropped.

    Weights come only from the local file ``weights`` (never downloaded): OpenCLIP's training checkpoint
    (``{"epoch": ..., "state_dict": {"module.visual...": ...}}``), a plain state dict of the whole model
    or of the image tower alone, as ``.safetensors`` or a torch file. Mean, std and input size come from
    the model's preprocessing config.

    Args:
        arch: a built-in OpenCLIP architecture (``"ViT-B-32"``, see ``open_clip.list_models()``) or the path
            of a JSON model config (keys ``embed_dim``, ``vision_cfg``, ``text_cfg``) for custom models.
        weights: the local weight file.
        image_size: build the image tower for this square input size (position embeddings of the
            checkpoint are interpolated to it); default: the architecture's size.
        resize: resize inputs to ``image_size``; if ``False``, inputs of another size are an error.
        allow_random: silence the warning given when ``weights`` is ``None`` (random initialisation).

    Examples:
        >>> backbone = OpenCLIPBackbone("ViT-B-32", weights="open_clip_model.safetensors")
        >>> z = backbone(images)  # images in [0, 1], (B, 3, H, W) -> z: (B, 512)
    """

    def __init__(
        self,
        arch: str | Path,
        weights: str | Path | None = None,
        image_size: int | None = None,
        resize: bool = True,
        allow_random: bool = False,
    ):
        # Imported here: importing open_clip takes seconds, and the registry imports this package just to list names.
        import open_clip

        name, model_cfg = _resolve_arch(arch)
        with _without_random_init_log():
            # pretrained_image/pretrained_text False: no tower may fetch its own base weights.
            model = open_clip.create_model(
                name,
                pretrained=None,
                force_image_size=image_size,
                pretrained_image=False,
                pretrained_text=False,
            )
        if weights is not None:
            _load_visual_weights(model, load_state_dict_file(weights))
        elif not allow_random:
            warnings.warn(
                f"OpenCLIPBackbone({str(arch)!r}) has no weights and stays randomly initialised; pass weights=path "
                "to a local file, or allow_random=True to silence this warning.",
                UserWarning,
                stacklevel=2,
            )
        visual = model.visual
        preprocess_cfg = getattr(visual, "preprocess_cfg", None) or {}
        interpolation = preprocess_cfg.get("interpolation")
        super().__init__(
            visual,
            embedding_dim=model_cfg["embed_dim"],
            image_size=_square(preprocess_cfg.get("size", visual.image_size)),
            mean=tuple(preprocess_cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)),
            std=tuple(preprocess_cfg.get("std", open_clip.OPENAI_DATASET_STD)),
            resize=resize,
            interpolation=interpolation if interpolation in INTERPOLATIONS else "bicubic",
        )
        self.arch = str(arch)
        self.weights = None if weights is None else str(weights)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        features = self.encoder(pixels)
        # Towers built with output_tokens (e.g. CoCa) return (pooled, tokens); encode_image keeps the pooled part.
        return features[0] if isinstance(features, tuple) else features


def _resolve_arch(arch: str | Path) -> tuple[str, dict]:
    """The open_clip config name for ``arch`` (registering a JSON config file) and its model config."""
    import open_clip

    text = str(arch)
    if text.startswith(("hf-hub:", "local-dir:")):
        raise ValueError(
            f"OpenCLIPBackbone never downloads or auto-loads models; got {text!r}. Pass a built-in architecture "
            "name or the path of a JSON model config as arch, and the local weight file as weights."
        )
    path = Path(arch)
    if path.suffix.lower() == ".json" or path.is_file():
        return _register_config_file(path)
    name = text.replace("/", "-")  # open_clip's own spelling: "ViT-B/32" -> "ViT-B-32"
    model_cfg = open_clip.get_model_config(name)
    if model_cfg is None:
        close = difflib.get_close_matches(name, open_clip.list_models(), n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(
            f"Unknown OpenCLIP architecture {text!r}.{hint} Pass a name from open_clip.list_models() "
            "or the path of a JSON model config file."
        )
    return name, model_cfg


def _register_config_file(path: Path) -> tuple[str, dict]:
    """Register a JSON model config with open_clip under its file stem (open_clip's registry is global)."""
    import open_clip

    if not path.is_file():
        raise FileNotFoundError(f"No OpenCLIP model config at {path}. Pass the path of a JSON model config file.")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    required = ("embed_dim", "vision_cfg", "text_cfg")
    if not isinstance(config, dict) or not all(key in config for key in required):
        raise ValueError(
            f"{path} is not an OpenCLIP model config: it needs the top-level keys {', '.join(required)}. "
            "(A Hugging Face open_clip_config.json keeps them under 'model_cfg'; save that part as its own file.)"
        )
    builtin = Path(open_clip.__file__).parent / "model_configs" / f"{path.stem}.json"
    if builtin.is_file() and json.loads(builtin.read_text()) != config:
        raise ValueError(
            f"{path} is named like open_clip's built-in config {path.stem!r} but differs from it; "
            "rename the file so that it does not replace the built-in architecture."
        )
    open_clip.add_model_config(path)
    return path.stem, config


def _load_visual_weights(model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Load the image-tower part of a whole-model (``visual.*`` keys) or image-tower-only state dict."""
    from open_clip.model import resize_pos_embed

    if not any(key.startswith("visual.") for key in state_dict):
        state_dict = {f"visual.{key}": value for key, value in state_dict.items()}
    state_dict = dict(state_dict)
    resize_pos_embed(state_dict, model)  # in place; a no-op unless image_size differs from the checkpoint's
    visual = {key[len("visual.") :]: value for key, value in state_dict.items() if key.startswith("visual.")}
    load_weights_into(model.visual, visual)


def _square(size: int | tuple[int, int] | list[int]) -> int:
    if isinstance(size, int):
        return size
    height, width = size
    if height != width:
        raise ValueError(f"OpenCLIPBackbone supports square image towers only; this one takes {height}x{width}.")
    return int(height)


class _DropRandomInitLog(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No pretrained weights loaded")


@contextlib.contextmanager
def _without_random_init_log():
    # open_clip logs "initialized randomly" on the root logger before we load the weights ourselves;
    # the message would be false, so hide that one record while the model is created.
    root = logging.getLogger()
    log_filter = _DropRandomInitLog()
    root.addFilter(log_filter)
    try:
        yield
    finally:
        root.removeFilter(log_filter)
