"""Procrustes dictionary (SPEC §3): orthonormal atoms closest to the attribute directions."""

from __future__ import annotations

import torch

from didae_xai.dictionary.base import Dictionary, check_embeddings


class ProcrustesDictionary(Dictionary):
    """Supervised by attribute labels, not by any classifier.

    With centred embeddings ``Z - mu`` (N x D) and attributes ``Y`` (N x K, continuous or 0/1, task
    first, confounder second), ``M = Y^T (Z - mu)`` has one attribute-embedding covariance per row;
    with the thin SVD ``M = U S V^T`` the atoms are the rows of ``W = U V^T``, the orthonormal K-frame
    closest to ``M`` (its polar factor). Atom ``k`` belongs to attribute ``k``.

    Args:
        names: attribute names, one per column of ``Y`` (default ``attr0 ...``).

    Attributes:
        components_: ``(K, D)`` orthonormal atoms, one per row.
        mean_: ``(D,)`` mean of the embeddings it was fitted on.
        names_: the K atom names.
        fit_info_: fitting metadata (number of samples, singular values).
    """

    kind = "procrustes"

    def __init__(self, names: list[str] | None = None) -> None:
        super().__init__()
        self.names = names

    def fit(self, Z: torch.Tensor, Y: torch.Tensor | None = None) -> "ProcrustesDictionary":
        if Y is None:
            raise ValueError("ProcrustesDictionary.fit needs attribute labels Y (N x K); use SVDDictionary without labels.")
        Z = check_embeddings(Z)
        Y = torch.as_tensor(Y).double()
        if Y.ndim == 1:
            Y = Y[:, None]
        if len(Y) != len(Z):
            raise ValueError(f"Z has {len(Z)} samples but Y has {len(Y)}.")
        n, d = Z.shape
        k = Y.shape[1]
        if d < k:
            raise ValueError(f"Procrustes needs D >= K: {k} attributes but only {d} embedding dimensions.")
        if not torch.isfinite(Y).all():
            raise ValueError("Y contains NaN or infinite values.")
        constant = (Y.std(0) == 0).nonzero().flatten().tolist()
        if constant:
            raise ValueError(f"Attribute column(s) {constant} are constant; their direction is undefined.")
        names = self.names or [f"attr{i}" for i in range(k)]
        if len(names) != k:
            raise ValueError(f"{len(names)} names for {k} attribute columns.")
        self.mean_ = Z.mean(0)
        M = Y.T @ (Z - self.mean_)
        U, S, Vh = torch.linalg.svd(M, full_matrices=False)
        self.components_ = U @ Vh
        self.names_ = list(names)
        self._set_scale(Z)
        self.fit_info_ = {"n_samples": n, "singular_values": S.tolist()}
        return self
