"""Adapters that put didae-xai's counterfactual explainers inside the toolkits you already use.

- :class:`DiDAECounterfactual` -- a Captum :class:`~captum.attr.Attribution`
  (``DiDAECounterfactual(model, explainer).attribute(x, target=1)``);
- :class:`CounterfactualAttributor` -- a Zennit :class:`~zennit.attribution.Attributor`
  (``with CounterfactualAttributor(model, explainer) as attributor: output, relevance = attributor(x, one_hot)``).

Both wrap any explainer with DiDAE's interface: ``attribute(inputs, target=None, ...) -> x_cf - x``
(and, for the rich result, ``explain(inputs, target=None, atoms=None)``). They are written against
didae_xai's public API only and register themselves in :mod:`didae_xai.registry` as the explainers
``captum_didae`` and ``zennit_didae`` through the ``didae_xai.plugins`` entry point
(module :mod:`didae_xai_plugins.registration`).

Importing this package is cheap: Captum and Zennit are imported when an adapter is first used.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from didae_xai_plugins.captum_adapter import DiDAECounterfactual
    from didae_xai_plugins.zennit_adapter import CounterfactualAttributor

__all__ = ["CounterfactualAttributor", "DiDAECounterfactual"]

_LAZY = {
    "DiDAECounterfactual": "didae_xai_plugins.captum_adapter",
    "CounterfactualAttributor": "didae_xai_plugins.zennit_adapter",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'didae_xai_plugins' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
