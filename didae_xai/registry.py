"""One registry of names -> factories, in the spirit of timm's ``register_model``.

Four kinds of things are created by name: ``backbone``, ``dataset``, ``explainer`` and ``corrector``.
The CLI takes its choices from here. Third parties add entries through the Python entry-point group
``didae_xai.plugins``: each entry point names a module (or a callable) that, when loaded, calls
:func:`register`. Entry points are loaded lazily, the first time the registry is read.
"""

from __future__ import annotations

import difflib
import warnings
from dataclasses import dataclass
from importlib import import_module
from importlib.metadata import entry_points
from typing import Any, Callable

KINDS = ("backbone", "dataset", "explainer", "corrector")
ENTRY_POINT_GROUP = "didae_xai.plugins"

# The library's own entries live in these modules; importing one registers its entries.
_BUILTIN_MODULES = (
    "didae_xai.backbones",
    "didae_xai.data",
    "didae_xai.explain",
    "didae_xai.correct",
    "didae_xai.baselines",
)


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str
    factory: Callable[..., Any]
    description: str
    source: str  # "didae_xai" or the distribution/module that registered it


_ENTRIES: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
_loaded = False


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"Unknown registry kind {kind!r}; choose one of {', '.join(KINDS)}.")


def register(kind: str, name: str | None = None, description: str | None = None):
    """Decorator registering ``factory`` under ``name`` (default: the factory's ``__name__``).

    >>> @register("backbone", "my_encoder")
    ... def my_encoder(**kwargs): ...
    """
    _check_kind(kind)

    def decorator(factory: Callable[..., Any]) -> Callable[..., Any]:
        key = name or factory.__name__
        if key in _ENTRIES[kind] and _ENTRIES[kind][key].factory is not factory:
            raise ValueError(f"A {kind} named {key!r} is already registered by {_ENTRIES[kind][key].source}.")
        doc = description or (factory.__doc__ or "").strip().splitlines()[0:1]
        if isinstance(doc, list):
            doc = doc[0] if doc else ""
        module = getattr(factory, "__module__", "") or ""
        source = "didae_xai" if module == "didae_xai" or module.startswith("didae_xai.") else module.split(".")[0]
        _ENTRIES[kind][key] = Entry(kind, key, factory, doc, source)
        return factory

    return decorator


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in _BUILTIN_MODULES:
        import_module(module)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
            if callable(obj) and not isinstance(obj, type):
                obj()  # a plugin may expose a ``register()`` function instead of registering on import
        except Exception as exc:  # a broken plugin must not break the library
            warnings.warn(f"didae-xai plugin {ep.name!r} ({ep.value}) failed to load: {exc}", stacklevel=2)


def names(kind: str) -> list[str]:
    """Sorted names registered for ``kind``."""
    _check_kind(kind)
    _load()
    return sorted(_ENTRIES[kind])


def entries(kind: str | None = None) -> list[Entry]:
    """All entries, or those of one kind, sorted by kind then name."""
    _load()
    kinds = KINDS if kind is None else (kind,)
    for k in kinds:
        _check_kind(k)
    return [_ENTRIES[k][n] for k in kinds for n in sorted(_ENTRIES[k])]


def get(kind: str, name: str) -> Entry:
    _check_kind(kind)
    _load()
    try:
        return _ENTRIES[kind][name]
    except KeyError:
        known = sorted(_ENTRIES[kind])
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise KeyError(f"No {kind} named {name!r}.{hint} Known: {', '.join(known) or '(none)'}.") from None


def create(kind: str, name: str, **kwargs: Any) -> Any:
    """Build the ``kind`` registered as ``name`` (timm's ``create_model`` for every kind)."""
    return get(kind, name).factory(**kwargs)
