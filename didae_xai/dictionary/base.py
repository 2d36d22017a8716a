"""Dictionaries of orthonormal directions in embedding space, with a scikit-learn interface.

``components_`` follows scikit-learn: shape ``(K, D)``, one atom ``u_k`` per row (SPEC §3 writes them
as columns). ``mean_`` is the mean of the embeddings the dictionary was fitted on; ``names_`` names
the atoms. ``transform(Z)`` gives the coordinates ``(Z - mean_) @ components_.T``; ``scale_`` is the
standard deviation of each coordinate on the fitting data (the spread of the data along each atom).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from didae_xai.io import load_tensors, save_tensors


def check_embeddings(Z: torch.Tensor, name: str = "Z") -> torch.Tensor:
    Z = torch.as_tensor(Z)
    if Z.ndim != 2:
        raise ValueError(f"{name} must be a 2-D tensor (N samples, D dimensions), got shape {tuple(Z.shape)}.")
    if len(Z) < 2:
        raise ValueError(f"{name} needs at least 2 samples to fit a dictionary, got {len(Z)}.")
    if not torch.isfinite(Z).all():
        raise ValueError(f"{name} contains NaN or infinite values; check the backbone's outputs.")
    return Z.double()


class Dictionary:
    """Base class: subclasses implement :meth:`fit` and set ``components_``, ``mean_``, ``names_``."""

    kind = "dictionary"

    def __init__(self) -> None:
        self.components_: torch.Tensor | None = None
        self.mean_: torch.Tensor | None = None
        self.names_: list[str] = []
        self.scale_: torch.Tensor | None = None
        self.fit_info_: dict = {}

    def fit(self, Z: torch.Tensor, Y: torch.Tensor | None = None) -> "Dictionary":  # pragma: no cover
        raise NotImplementedError

    def _set_scale(self, Z: torch.Tensor) -> None:
        self.scale_ = ((Z - self.mean_) @ self.components_.T).std(0)

    def _check_fitted(self) -> None:
        if self.components_ is None:
            raise RuntimeError(f"This {type(self).__name__} is not fitted yet; call fit(Z, ...) first.")

    @property
    def n_components(self) -> int:
        self._check_fitted()
        return self.components_.shape[0]

    @property
    def embedding_dim(self) -> int:
        self._check_fitted()
        return self.components_.shape[1]

    def atom(self, key: int | str) -> int:
        """Index of an atom given by index or by name."""
        self._check_fitted()
        if isinstance(key, str):
            if key not in self.names_:
                raise KeyError(f"No atom named {key!r}; atoms are {self.names_}.")
            return self.names_.index(key)
        if not -self.n_components <= key < self.n_components:
            raise IndexError(f"Atom index {key} out of range for {self.n_components} atoms.")
        return key % self.n_components

    def transform(self, Z: torch.Tensor) -> torch.Tensor:
        """Coordinates of ``Z`` along every atom, ``(N, K)``, measured from the fitted mean."""
        self._check_fitted()
        Z = torch.as_tensor(Z)
        if Z.shape[-1] != self.embedding_dim:
            raise ValueError(f"Embeddings have {Z.shape[-1]} dimensions but the dictionary has {self.embedding_dim}.")
        return (Z.to(self.components_) - self.mean_) @ self.components_.T

    def save(self, path: str | Path) -> Path:
        """Write atoms and mean as safetensors (names and fitting metadata in its header)."""
        self._check_fitted()
        meta = {"kind": self.kind, "names": json.dumps(self.names_), "fit_info": json.dumps(self.fit_info_)}
        return save_tensors({"components": self.components_, "mean": self.mean_, "scale": self.scale_}, path, metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> "Dictionary":
        from safetensors import safe_open

        tensors = load_tensors(path)
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        kinds = {sub.kind: sub for sub in Dictionary.__subclasses__()}
        kind = meta.get("kind")
        if kind not in kinds:
            raise ValueError(f"{path} is not a didae-xai dictionary (kind {kind!r}).")
        obj = kinds[kind]()
        obj.components_, obj.mean_, obj.scale_ = tensors["components"], tensors["mean"], tensors["scale"]
        obj.names_ = json.loads(meta["names"])
        obj.fit_info_ = json.loads(meta.get("fit_info", "{}"))
        return obj

    def __repr__(self) -> str:
        if self.components_ is None:
            return f"{type(self).__name__}()"
        return f"{type(self).__name__}(atoms={self.names_}, embedding_dim={self.embedding_dim})"
