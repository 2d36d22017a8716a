"""Shared plumbing of the adapters: the explainer protocol, target forms, input preparation."""

from __future__ import annotations

import numbers
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor


@runtime_checkable
class CounterfactualExplainer(Protocol):
    """What the adapters need from an explainer (DiDAE today; DiME, FastDiME, ACE later).

    ``attribute(inputs, target=None, **options)`` takes images ``(N, C, H, W)`` in ``[0, 1]`` and
    one of the target forms ``None`` (the explainer's default class), an ``int`` or a ``LongTensor``
    ``(N,)``, and returns ``x_cf - x`` shaped like ``inputs``. ``explain`` (optional) returns the rich
    result. Options the adapters forward only when the user sets them: ``atom`` and
    ``internal_batch_size``.
    """

    def attribute(self, inputs: Tensor, target: Any = None, **options: Any) -> Tensor: ...


def check_explainer(explainer: Any) -> Any:
    if not callable(getattr(explainer, "attribute", None)):
        raise TypeError(
            "explainer must have an attribute(inputs, target=None, ...) method returning x_cf - x shaped like "
            f"inputs, such as didae_xai.explain.DiDAE; got {type(explainer).__name__}."
        )
    return explainer


def prepare_images(x: Tensor, clamp: bool) -> Tensor:
    """Detach; clamp floating images into ``[0, 1]`` (noisy inputs from NoiseTunnel or metrics)."""
    if not isinstance(x, Tensor) or x.ndim != 4:
        raise ValueError(f"inputs must be images (N, C, H, W) in [0, 1], got {getattr(x, 'shape', type(x).__name__)}.")
    x = x.detach()
    return x.clamp(0, 1) if clamp and x.is_floating_point() else x


def run_explainer(explainer: Any, x: Tensor, target: Any, atom: Any = None, internal_batch_size: int | None = None) -> Tensor:
    """``explainer.attribute`` with only the options that are set, checked against the shape contract."""
    options: dict[str, Any] = {}
    if atom is not None:
        options["atom"] = atom
    if internal_batch_size is not None:
        options["internal_batch_size"] = internal_batch_size
    delta = explainer.attribute(x, target=target, **options)
    if not isinstance(delta, Tensor) or delta.shape != x.shape:
        raise RuntimeError(
            f"{type(explainer).__name__}.attribute must return x_cf - x shaped like its inputs {tuple(x.shape)}, "
            f"got {getattr(delta, 'shape', type(delta).__name__)}."
        )
    dtype = x.dtype if x.is_floating_point() else delta.dtype
    return delta.detach().to(device=x.device, dtype=dtype)


def captum_target(target: Any, n: int) -> int | Tensor | None:
    """Captum's ``target`` forms for a classifier's ``(N, classes)`` output -> ``None``, ``int`` or ``(N,)``.

    Accepts ``None``; an ``int`` or a 1-tuple ``(c,)`` (same class for every input); a tensor with
    one element; a 1-D tensor or a list of ``int`` or of 1-tuples with one class per input. Multi-index
    tuples address outputs with more than two dimensions, which a classifier does not have.
    """
    if target is None:
        return None
    if isinstance(target, bool):
        raise TypeError("target must be a class index, not a bool.")
    if isinstance(target, numbers.Integral):
        return int(target)
    if isinstance(target, tuple):
        return _one_index(target)
    if isinstance(target, Tensor):
        if target.numel() == 1 and not target.is_floating_point():
            return int(target.item())
        if target.ndim == 1 and not target.is_floating_point():
            return target.detach().long().cpu()
        raise ValueError(
            f"A tensor target must hold integer classes, one per input (shape ({n},)), got {target.dtype} "
            f"of shape {tuple(target.shape)}."
        )
    if isinstance(target, list):
        return torch.tensor([_one_index(t) if isinstance(t, tuple) else int(t) for t in target], dtype=torch.long)
    raise TypeError(f"target must be None, an int, a tuple, a list or a tensor (Captum's forms), got {type(target).__name__}.")


def _one_index(t: tuple) -> int:
    if len(t) != 1:
        raise ValueError(
            f"A tuple target indexes an output with more than two dimensions; a classifier's output is "
            f"(N, classes), so give one class: an int or (c,), got {t}."
        )
    return int(t[0])


def default_target(logits: Tensor) -> Tensor:
    """The explainers' default class: the other class of a binary model, the runner-up otherwise."""
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(f"The model must return logits (N, classes) with at least two classes, got {tuple(logits.shape)}.")
    if logits.shape[1] == 2:
        return 1 - logits.argmax(1)
    return logits.topk(2, dim=1).indices[:, 1]


def target_from_grad_output(grad_output: Any, output: Tensor) -> Tensor:
    """The class each row of a Zennit ``attr_output`` selects: the one non-zero entry per row."""
    g = torch.as_tensor(grad_output).detach()
    if g.ndim == 1:
        g = g[None]
    n, c = output.shape[0], output.shape[-1]
    if output.ndim != 2 or g.ndim != 2 or g.shape[1] != c or g.shape[0] not in (1, n):
        raise ValueError(
            f"attr_output must be shaped like the model's output {tuple(output.shape)} (or (1, {c}), used for every "
            f"input), e.g. torch.eye({c})[[target]], or a function of the output returning that; got {tuple(g.shape)}."
        )
    g = g.expand(n, c)
    nonzero = (g != 0).sum(1)
    bad = (nonzero != 1).nonzero().flatten().tolist()
    if bad:
        raise ValueError(
            "attr_output names the class the counterfactual should reach, so it must select exactly one class per "
            f"input (one non-zero entry per row, like a one-hot vector); rows {bad[:5]} have "
            f"{nonzero[bad[:5]].tolist()} non-zero entries."
        )
    return g.abs().argmax(1).cpu()
