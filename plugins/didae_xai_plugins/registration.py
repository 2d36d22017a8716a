"""Registers the host-toolkit adapters as didae_xai explainers; loaded by the ``didae_xai.plugins`` entry point.

Third parties register their own entries the same way: an entry point in the group
``didae_xai.plugins`` naming a module that calls :func:`didae_xai.registry.register` on import.
Captum and Zennit are imported only when a factory is called.
"""

from __future__ import annotations

from typing import Any

from didae_xai.registry import register

__all__ = ["captum_didae", "zennit_didae"]


@register("explainer", "captum_didae")
def captum_didae(forward_func: Any, explainer: Any, **kwargs: Any):
    """Captum Attribution around a counterfactual explainer: DiDAECounterfactual(forward_func, explainer)."""
    from didae_xai_plugins.captum_adapter import DiDAECounterfactual

    return DiDAECounterfactual(forward_func, explainer, **kwargs)


@register("explainer", "zennit_didae")
def zennit_didae(model: Any, explainer: Any, **kwargs: Any):
    """Zennit Attributor around a counterfactual explainer: CounterfactualAttributor(model, explainer, ...)."""
    from didae_xai_plugins.zennit_adapter import CounterfactualAttributor

    return CounterfactualAttributor(model, explainer, **kwargs)
