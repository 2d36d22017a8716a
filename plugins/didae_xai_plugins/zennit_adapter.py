"""Zennit adapter: a counterfactual explainer as a :class:`zennit.attribution.Attributor`."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn
from zennit.attribution import Attributor, identity

from didae_xai_plugins._common import (
    check_explainer,
    default_target,
    prepare_images,
    run_explainer,
    target_from_grad_output,
)

__all__ = ["CounterfactualAttributor"]

MODES = ("difference", "lrp")


class CounterfactualAttributor(Attributor):
    '''Counterfactual Attributor. The attribution is the change ``x_cf - x`` a counterfactual explainer makes to the
    input so that the model predicts the class selected by ``attr_output``; with ``mode='lrp'`` it is instead the
    relevance (e.g. LRP, given a composite) of the factual and of the counterfactual, side by side, for that class,
    which shows where the model's evidence moved.

    The class to reach is read from ``attr_output`` (a one-hot tensor shaped like the model output, or a function of
    the output returning one): the one non-zero entry of each row. Without ``attr_output`` the counterfactual goes to
    the other class of a binary model, the runner-up class otherwise (the default of
    :class:`didae_xai.explain.DiDAE`), since a counterfactual needs a class to move to.

    Parameters
    ----------
    model: :py:obj:`torch.nn.Module`
        The classifier to explain, taking images in ``[0, 1]`` and returning logits ``(N, classes)``. The composite,
        if any, is registered to it within ``with`` statements, or temporarily when calling the instance.
    explainer: :py:class:`didae_xai.explain.DiDAE` or explainer with the same interface
        Provides ``attribute(inputs, target=None, ...)`` returning ``x_cf - x`` shaped like ``inputs``; usually
        explains ``model`` itself.
    composite: :py:obj:`zennit.core.Composite`, optional
        Used by ``mode='lrp'`` to compute the relevance of the factual and the counterfactual, e.g.
        ``EpsilonPlusFlat(canonizers=[ResNetCanonizer()])`` for a torchvision ResNet. The counterfactual itself is
        computed without gradients, so the composite does not change it.
    attr_output: :py:obj:`torch.Tensor` or callable, optional
        The default output attribution selecting the class to reach, a one-hot tensor shaped like the model output
        (or ``(1, classes)``, used for every input) or a function of the model's output returning one. If None
        (default), the explainer's default class.
    mode: str, optional
        ``'difference'`` (default): the attribution is ``x_cf - x``, shaped like the input. ``'lrp'``: the output and
        the attribution are stacked along a new dimension 1, index 0 the factual and index 1 the counterfactual:
        output ``(N, 2, classes)`` and attribution ``(N, 2, C, H, W)``, the relevance of each image for the target
        class (the gradient, without a composite).
    atom: int or str, optional
        Use the counterfactual along this dictionary atom; if None (default), per input the one that gives the target
        class the highest probability. Only forwarded to the explainer when set.
    clamp: bool, optional
        Clamp floating-point inputs into ``[0, 1]`` before explaining them (default True).
    internal_batch_size: int, optional
        Inputs explained at a time, to bound memory; if None (default), the explainer's own setting.

    Examples
    --------
    >>> composite = EpsilonPlusFlat(canonizers=[ResNetCanonizer()])
    >>> with CounterfactualAttributor(model, explainer, composite, mode='lrp') as attributor:
    ...     output, relevance = attributor(images, torch.eye(2)[[1] * len(images)])
    >>> moved = relevance[:, 1].sum(1) - relevance[:, 0].sum(1)  # evidence gained (+) and lost (-) per pixel
    '''
    def __init__(
        self,
        model: nn.Module,
        explainer: Any,
        composite: Any = None,
        attr_output: Tensor | Callable[[Tensor], Tensor] | None = None,
        mode: str = "difference",
        atom: int | str | None = None,
        clamp: bool = True,
        internal_batch_size: int | None = None,
    ):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}.")
        super().__init__(model=model, composite=composite, attr_output=attr_output)
        self.explainer = check_explainer(explainer)
        self.mode = mode
        self.atom = atom
        self.clamp = clamp
        self.internal_batch_size = internal_batch_size

    def forward(self, input: Tensor, attr_output_fn: Callable[[Tensor], Any]) -> tuple[Tensor, Tensor]:
        '''Compute the counterfactual (and, with ``mode='lrp'``, the relevances) of ``input``. This function does not
        register the composite, and is wrapped in the ``__call__`` of :py:class:`~zennit.attribution.Attributor`.

        Parameters
        ----------
        input: :py:obj:`torch.Tensor`
            Images ``(N, C, H, W)`` in ``[0, 1]``.
        attr_output_fn: callable
            Function of the model's output returning the output attribution that selects the class to reach;
            Zennit's ``identity`` (no ``attr_output`` given) selects the explainer's default class.

        Returns
        -------
        output: :py:obj:`torch.Tensor`
            Output of the model given ``input`` (``mode='difference'``), or the outputs given the factual and the
            counterfactual stacked along dimension 1 (``mode='lrp'``).
        attribution: :py:obj:`torch.Tensor`
            ``x_cf - x`` with the same shape as ``input`` (``mode='difference'``), or the relevances of the factual
            and the counterfactual stacked along dimension 1 (``mode='lrp'``).
        '''
        x = prepare_images(input, self.clamp)
        if self.mode == "difference":
            with torch.no_grad():
                output = self.model(x)
            target = self._target(attr_output_fn, output)
            return output, self._counterfactual_change(x, target)

        out_x, rel_x, target = self._relevance(x, attr_output_fn, None)
        x_cf = x + self._counterfactual_change(x, target)
        out_cf, rel_cf, _ = self._relevance(x_cf, attr_output_fn, target)
        return torch.stack([out_x, out_cf], 1), torch.stack([rel_x, rel_cf], 1)

    def _target(self, attr_output_fn: Callable[[Tensor], Any], output: Tensor) -> Tensor:
        if attr_output_fn is identity:
            return default_target(output.detach()).cpu()
        return target_from_grad_output(attr_output_fn(output.detach()), output)

    def _counterfactual_change(self, x: Tensor, target: Tensor) -> Tensor:
        return run_explainer(self.explainer, x, target, self.atom, self.internal_batch_size)

    def _relevance(self, x: Tensor, attr_output_fn: Callable[[Tensor], Any], target: Tensor | None):
        '''Output and (modified) gradient of the model at ``x`` for the target class, as :py:class:`zennit.attribution.Gradient`.'''
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            output = self.model(x)
            if target is None:
                target = self._target(attr_output_fn, output)
            if attr_output_fn is identity:
                grad_output = torch.nn.functional.one_hot(target.to(output.device), output.shape[1]).to(output.dtype)
            else:
                grad_output = torch.as_tensor(attr_output_fn(output.detach())).to(output).expand_as(output)
            (relevance,) = torch.autograd.grad((output,), (x,), grad_outputs=(grad_output,))
        return output.detach(), relevance.detach(), target
