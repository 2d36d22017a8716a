"""Captum adapter: a counterfactual explainer as a :class:`captum.attr.Attribution`."""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

from captum.attr import Attribution
from torch import Tensor

from didae_xai_plugins._common import captum_target, check_explainer, prepare_images, run_explainer

__all__ = ["DiDAECounterfactual"]


def _attribution_method(func: Callable) -> Callable:
    # Captum decorates ``attribute`` with ``log_usage``; NoiseTunnel calls the undecorated method
    # through ``attribute.__wrapped__``. Provide that attribute without depending on ``captum.log``.
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)

    return wrapper


class DiDAECounterfactual(Attribution):
    r"""
    Counterfactual attribution: the change a counterfactual explainer makes to
    each input so that the model predicts ``target``, ``x_cf - x``.

    The explainer (a :class:`didae_xai.explain.DiDAE`, or any object with the
    same ``attribute(inputs, target=None, ...)`` method, such as the gradient
    based baselines DiME, FastDiME and ACE) edits the image in the latent space
    of a diffusion autoencoder; DiDAE does so without gradients, by reflecting
    the foundation-model embedding across the model's distilled decision
    boundary along disentangled dictionary atoms. The attribution is positive
    where the counterfactual is brighter than the input and negative where it
    is darker, with the same shape as the inputs, so that it composes with
    Captum's visualization, :class:`~captum.attr.NoiseTunnel` and
    :mod:`captum.metrics`.

    The full result (all K counterfactuals per input, their predictions and
    flip flags) is available from :meth:`explain`.

    More details about the approach can be found in the following paper:
        https://arxiv.org/abs/2601.21851
    """

    def __init__(self, forward_func: Callable[..., Tensor] | None, explainer: Any, clamp: bool = True) -> None:
        r"""
        Args:

            forward_func (Callable or None): The forward function of the model
                        whose decision is explained, or any modification of it
                        (e.g. followed by a softmax). The counterfactuals come
                        from ``explainer`` (which holds its own model); Captum's
                        wrappers and metrics call ``forward_func``. If None,
                        ``explainer.model`` is used.
            explainer (DiDAE or explainer with the same interface): The
                        counterfactual explainer. It must provide
                        ``attribute(inputs, target=None, ...)`` returning
                        ``x_cf - x`` shaped like ``inputs``; ``explain`` is
                        needed only by :meth:`explain`.
            clamp (bool, optional): Clamp floating-point inputs into
                        ``[0, 1]`` (the range the explainer works in) before
                        explaining them. Inputs perturbed by
                        :class:`~captum.attr.NoiseTunnel` or
                        :func:`~captum.metrics.sensitivity_max` leave that
                        range; the attribution is then the change made to the
                        clamped image.
                        Default: True
        """
        explainer = check_explainer(explainer)
        if forward_func is None:
            forward_func = getattr(explainer, "model", None)
            if forward_func is None:
                raise ValueError("forward_func is None and the explainer has no .model; pass the model to explain.")
        Attribution.__init__(self, forward_func)
        self.explainer = explainer
        self.clamp = clamp

    @_attribution_method
    def attribute(
        self,
        inputs: Tensor | tuple[Tensor],
        target: Any = None,
        atom: int | str | None = None,
        internal_batch_size: int | None = None,
    ) -> Tensor | tuple[Tensor]:
        r"""
        Args:

            inputs (Tensor or tuple[Tensor]): Images of shape ``(N, C, H, W)``
                        in ``[0, 1]`` for which counterfactuals are computed,
                        either a single tensor or a tuple holding one tensor.
                        Dimension 0 corresponds to the number of examples. The
                        explainer edits images only, so a tuple of several
                        tensors raises a ValueError.
            target (int, tuple, Tensor, or list, optional): The class each
                        counterfactual should reach. Targets can be either:

                        - a single integer, a tuple ``(c,)`` or a tensor
                          containing a single integer, which is applied to all
                          input examples

                        - a list of integers (or of 1-tuples) or a 1D tensor,
                          with length matching the number of examples in inputs
                          (dim 0). Each integer is applied as the target for the
                          corresponding example.

                        If None, the explainer's default is used: for DiDAE the
                        other class of a binary model, the runner-up class
                        otherwise (unlike gradient methods, a counterfactual
                        needs a class to move to, not the predicted one).
                        Default: None
            atom (int or str, optional): Use the counterfactual made along this
                        dictionary atom (index or name). If None, for each
                        input the counterfactual that gives ``target`` the
                        highest probability is used. Only forwarded to the
                        explainer when set (explainers without atoms ignore it
                        by never receiving it).
                        Default: None
            internal_batch_size (int, optional): Number of inputs explained at
                        a time, to bound memory; each input makes one decode per
                        atom. If None, the explainer's own setting is used.
                        Default: None

        Returns:
            *Tensor* or *tuple[Tensor]* of **attributions**:
            - **attributions** (*Tensor* or *tuple[Tensor]*):
                        The counterfactual change ``x_cf - x`` for each input.
                        Attributions have the same shape and dtype as the
                        provided inputs. If a single tensor is provided as
                        inputs, a single tensor is returned. If a tuple is
                        provided for inputs, a tuple of one tensor is returned.

        Examples::

            >>> # model takes images Nx3x32x32 in [0, 1] and returns Nx2 logits;
            >>> # explainer is a fitted didae_xai.explain.DiDAE for that model.
            >>> cf = DiDAECounterfactual(model, explainer)
            >>> # The change that makes the model predict class 1.
            >>> attribution = cf.attribute(images, target=1)
            >>> # Smoothed over noisy copies of each image.
            >>> nt = NoiseTunnel(cf)
            >>> attribution = nt.attribute(images, nt_type="smoothgrad",
            >>>                            nt_samples=8, stdevs=0.05, target=1)
        """
        is_inputs_tuple = isinstance(inputs, tuple)
        if is_inputs_tuple:
            if len(inputs) != 1:
                raise ValueError(
                    f"{type(self).__name__} explains images: pass one tensor (N, C, H, W) or a 1-tuple of it, "
                    f"got a tuple of {len(inputs)} tensors."
                )
            (x,) = inputs
        else:
            x = inputs
        prepared = prepare_images(x, self.clamp)
        delta = run_explainer(self.explainer, prepared, captum_target(target, len(prepared)), atom, internal_batch_size)
        return (delta,) if is_inputs_tuple else delta

    def explain(self, inputs: Tensor | tuple[Tensor], target: Any = None, atoms: Sequence[int | str] | None = None) -> Any:
        r"""
        The explainer's full result for the same inputs and target forms as
        :meth:`attribute`.

        Args:

            inputs (Tensor or tuple[Tensor]): Images ``(N, C, H, W)`` in
                        ``[0, 1]`` (clamped if ``clamp`` is set).
            target (int, tuple, Tensor, or list, optional): As in
                        :meth:`attribute`.
                        Default: None
            atoms (list, optional): Restrict to these atom indices or names.
                        Default: None

        Returns:
            *CounterfactualExplanation*: K counterfactuals per input with the
            model's predictions on them (see
            :class:`didae_xai.explain.CounterfactualExplanation`).
        """
        if not callable(getattr(self.explainer, "explain", None)):
            raise TypeError(f"{type(self.explainer).__name__} has no explain() method; use attribute().")
        x = inputs[0] if isinstance(inputs, tuple) and len(inputs) == 1 else inputs
        prepared = prepare_images(x, self.clamp)
        options = {} if atoms is None else {"atoms": atoms}
        return self.explainer.explain(prepared, target=captum_target(target, len(prepared)), **options)

    def attribute_future(self) -> None:
        r"""
        This method is not implemented for DiDAECounterfactual.
        """
        raise NotImplementedError("attribute_future is not implemented for DiDAECounterfactual")

    @classmethod
    def get_name(cls) -> str:
        r"""
        Returns:
            str: ``"DiDAE Counterfactual"``, the readable name of the method.
        """
        return "DiDAE Counterfactual"
