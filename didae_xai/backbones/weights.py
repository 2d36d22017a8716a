"""Read weight files from local paths and load them into a model, with errors that say what does not match."""

from __future__ import annotations

import argparse
import pickle
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
# Keys that wrap the state dict in training checkpoints (timm, OpenCLIP, Lightning, plain loops).
_CONTAINER_KEYS = ("state_dict", "model")
# Prefixes added by DataParallel/DistributedDataParallel and by torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict (name -> tensor) from a local weight file, on the CPU.

    ``.safetensors`` files are read with safetensors; ``.pth``/``.pt``/``.bin``/``.ckpt`` files with
    ``torch.load(..., weights_only=True)``. Training checkpoints are unwrapped: a ``"state_dict"`` or
    ``"model"`` entry is taken, and a ``"module."`` (or ``"_orig_mod."``) prefix shared by all keys is dropped.

    Args:
        path: the weight file.

    Returns:
        The state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"No weight file at {path}. didae-xai never downloads weights: fetch the file once "
            "(e.g. `huggingface-cli download ...` or your training run) and pass its local path."
        )
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        checkpoint = load_file(str(path))
    elif suffix in TORCH_SUFFIXES:
        try:
            # timm's training checkpoints store their arguments as an argparse.Namespace (harmless).
            with torch.serialization.safe_globals([argparse.Namespace]):
                checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise ValueError(
                f"{path} holds Python objects that torch.load(weights_only=True) refuses to unpickle. "
                "Re-save only the weights, e.g. safetensors.torch.save_file(model.state_dict(), 'weights.safetensors')."
            ) from exc
    else:
        raise ValueError(
            f"Unknown weight file extension {path.suffix!r} for {path}; expected .safetensors, "
            + ", ".join(TORCH_SUFFIXES)
            + "."
        )
    return _unwrap(checkpoint, path)


def _unwrap(checkpoint: object, path: Path) -> dict[str, torch.Tensor]:
    while isinstance(checkpoint, Mapping):
        inner = next((checkpoint[k] for k in _CONTAINER_KEYS if isinstance(checkpoint.get(k), Mapping)), None)
        if inner is None:
            break
        checkpoint = inner
    if not isinstance(checkpoint, Mapping) or not checkpoint:
        raise ValueError(f"{path} does not contain a state dict (a non-empty mapping of names to tensors).")
    not_tensors = [k for k, v in checkpoint.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ValueError(
            f"{path} is not a state dict: {_few(not_tensors)} are not tensors (top-level keys: {_few(list(checkpoint))}). "
            "Save the model's state_dict() alone, or under a 'state_dict' key."
        )
    state_dict = dict(checkpoint)
    for prefix in _WRAPPER_PREFIXES:
        if all(k.startswith(prefix) for k in state_dict):
            state_dict = {k[len(prefix) :]: v for k, v in state_dict.items()}
    return state_dict


def load_weights_into(
    model: torch.nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    ignore_prefixes: str | Iterable[str] = (),
) -> torch.nn.Module:
    """Load ``state_dict`` into ``model`` strictly, or raise an error listing what does not match.

    Args:
        model: the module to fill.
        state_dict: the weights, e.g. from :func:`load_state_dict_file`.
        ignore_prefixes: keys of ``state_dict`` starting with any of these are dropped first
            (e.g. ``"fc."`` for a classifier head the model does not have).

    Returns:
        ``model``, with the weights loaded.
    """
    prefixes = (ignore_prefixes,) if isinstance(ignore_prefixes, str) else tuple(ignore_prefixes)
    state_dict = {k: v for k, v in state_dict.items() if not (prefixes and k.startswith(prefixes))}
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k} (file {tuple(v.shape)}, model {tuple(expected[k].shape)})"
        for k, v in state_dict.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing keys: {_few(missing)}")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected keys: {_few(unexpected)}")
        if mismatched:
            problems.append(f"{len(mismatched)} shape mismatches: {_few(mismatched)}")
        raise ValueError(
            f"The weights do not match the architecture {type(model).__name__}: " + "; ".join(problems) + ". "
            "Check that the file was saved from the same model with the same options (e.g. img_size, depth)."
        )
    model.load_state_dict(state_dict, strict=True)
    return model


def _few(items: list[str], n: int = 5) -> str:
    shown = ", ".join(items[:n])
    return shown + (f" (and {len(items) - n} more)" if len(items) > n else "")
