"""SVD dictionary (SPEC §3): the top principal directions of the embeddings, unsupervised."""

from __future__ import annotations

import torch

from didae_xai.dictionary.base import Dictionary, check_embeddings


class SVDDictionary(Dictionary):
    """The top-``n_components`` right singular vectors of ``Z - mu`` (PCA directions), by variance.

    No labels are used, so atoms have no semantic names (``pc0, pc1, ...``); name them after looking
    at their reflections (``names_`` may be assigned). Signs follow scikit-learn's ``svd_flip``: the
    largest-magnitude entry of each atom is positive, so fits are reproducible.
    """

    kind = "svd"

    def __init__(self, n_components: int = 4) -> None:
        super().__init__()
        if n_components < 1:
            raise ValueError(f"n_components must be positive, got {n_components}.")
        self.n_components_requested = n_components

    def fit(self, Z: torch.Tensor, Y: torch.Tensor | None = None) -> "SVDDictionary":
        """Fit on embeddings ``Z`` (N x D); ``Y`` is ignored (accepted for a uniform interface)."""
        Z = check_embeddings(Z)
        k = self.n_components_requested
        if k > min(Z.shape):
            raise ValueError(f"n_components={k} exceeds min(N, D) = {min(Z.shape)}.")
        self.mean_ = Z.mean(0)
        _, S, Vh = torch.linalg.svd(Z - self.mean_, full_matrices=False)
        atoms = Vh[:k]
        signs = torch.sign(atoms.gather(1, atoms.abs().argmax(1, keepdim=True)))
        self.components_ = atoms * signs
        self._set_scale(Z)
        self.names_ = [f"pc{i}" for i in range(k)]
        variance = S**2 / (len(Z) - 1)
        self.fit_info_ = {"n_samples": len(Z), "explained_variance_ratio": (variance[:k] / variance.sum()).tolist()}
        return self
