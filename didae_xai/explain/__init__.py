"""Explaining classifiers: probe distillation, reflections (pure math), the DiDAE explainer."""

from didae_xai.explain.didae import DiDAE, resolve_target
from didae_xai.explain.explanation import CounterfactualExplanation
from didae_xai.explain.probe import LinearProbe, distill_probe
from didae_xai.explain.reflections import (
    boundary_inversion,
    component_reflection,
    householder_reflection,
    margin,
)

__all__ = [
    "CounterfactualExplanation",
    "DiDAE",
    "LinearProbe",
    "boundary_inversion",
    "component_reflection",
    "distill_probe",
    "householder_reflection",
    "margin",
    "resolve_target",
]

from didae_xai.registry import register  # noqa: E402


@register("explainer", "didae")
def didae(model, autoencoder, dictionary, **kwargs) -> DiDAE:
    """DiDAE: gradient-free counterfactuals, one per dictionary atom, across the distilled boundary."""
    return DiDAE(model, autoencoder, dictionary, **kwargs)
