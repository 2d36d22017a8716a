"""DiDAE projection (SPEC §6): remove chosen atoms from the features before the last layer.

``h <- h - Q Q^T h`` with ``Q`` an orthonormal basis (QR) of the chosen atoms; no mean-centring (as the
reference ``projection_adaptor``) and no retraining. The corrected model is a
:class:`~didae_xai.correct.edits.HeadWithFeatureEdit`.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from didae_xai.correct.base import CorrectionData, CorrectionResult, Corrector, features_of
from didae_xai.correct.edits import HeadWithFeatureEdit, SubspaceProjection, orthonormal_basis
from didae_xai.models.classifiers import ProbeClassifier


def _base(model: nn.Module) -> nn.Module:
    while isinstance(model, HeadWithFeatureEdit):
        model = model.student
    return model


def atom_patterns(z: torch.Tensor, h: torch.Tensor, directions: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
    """Carry directions of the embedding space into the student's feature space (pattern vectors).

    The coordinates ``t = (z - mean z) . u`` along the ``context`` directions (default: the
    ``directions`` themselves) are regressed jointly onto the centred features,
    ``h - mean h ~ t B`` (least squares); the row of ``B`` of each of ``directions`` is its pattern:
    how the features move per unit of that atom *with the other context atoms held fixed*. With one
    direction and no context this is Haufe's ``cov(h, t) / var(t)``. Pass every atom of the
    dictionary as ``context`` so that an atom correlated with another in the data (the confounder
    with the task on poisoned data) does not carry the other's pattern along. Needs no labels.

    Returns:
        (m, D_h) patterns, one per direction.
    """
    directions = directions.to(z)
    if context is None:
        context, rows = directions, list(range(len(directions)))
    else:
        context = context.to(z)
        rows = []
        for d in directions:
            match = torch.nonzero(torch.isclose(context, d[None], atol=1e-6).all(1)).flatten()
            if len(match) == 0:
                raise ValueError("Every direction to remove must be one of the context directions.")
            rows.append(int(match[0]))
    t = (z - z.mean(0)) @ context.T  # (N, m_ctx)
    hc = h - h.mean(0)
    coef = torch.linalg.lstsq(t.double(), hc.double()).solution  # (m_ctx, D_h)
    return coef[rows].to(h.dtype)


class Projection(Corrector):
    """Project chosen directions (dictionary atoms) out of the penultimate features; no retraining.

    Args:
        directions: (m, D) or (D,) directions in the student's feature space (or in ``embedder``'s).
        dictionary: alternatively, a fitted :class:`~didae_xai.dictionary.Dictionary` ...
        atoms: ... and the atoms (names or indices) to remove, e.g. ``("ColorB",)``.
        embedder: the frozen encoder the directions live in (e.g. the autoencoder's backbone). Needed
            only when the student's features are *not* that embedding (an end-to-end ResNet): the
            directions are then carried into the student's features as pattern vectors fitted on
            the training images (:func:`atom_patterns`; with a dictionary, all its atoms are the
            regression context). For an FM probe on the same backbone object, the atoms are used
            as they are.
        center: remove the component relative to the training mean (``h - Q Q^T (h - m)``) instead of
            the reference's uncentred ``h - Q Q^T h``.

    Labels used: the verdicts on atoms (which atom is spurious), nothing else.
    """

    name = "projection"
    labels_used = ("atom verdicts",)

    def __init__(
        self,
        directions: torch.Tensor | None = None,
        *,
        dictionary=None,
        atoms: Sequence[int | str] | None = None,
        embedder: nn.Module | None = None,
        center: bool = False,
    ):
        if directions is None and dictionary is None:
            raise ValueError("Projection needs directions to remove: pass directions=(m, D) or dictionary= and atoms=.")
        if directions is not None and dictionary is not None:
            raise ValueError("Pass either directions or dictionary + atoms, not both.")
        self.atom_names: list[str] | None = None
        self.context: torch.Tensor | None = None
        if dictionary is not None:
            if not atoms:
                raise ValueError("Projection with a dictionary needs the atoms to remove, e.g. atoms=('ColorB',).")
            dictionary._check_fitted()
            index = [dictionary.atom(a) for a in atoms]
            directions = dictionary.components_[index]
            self.context = torch.as_tensor(dictionary.components_, dtype=torch.float32)
            self.atom_names = [dictionary.names_[i] if i < len(dictionary.names_) else str(i) for i in index]
        directions = torch.as_tensor(directions, dtype=torch.float32)
        if directions.ndim == 1:
            directions = directions[None]
        if directions.ndim != 2 or directions.shape[0] == 0:
            raise ValueError(f"Projection needs at least one direction as rows (m, D); got shape {tuple(directions.shape)}.")
        orthonormal_basis(directions)  # fail early on dependent directions
        self.directions = directions
        self.embedder = embedder
        self.center = center

    def _in_feature_space(self, model: nn.Module) -> bool:
        if self.embedder is None:
            return True
        base = _base(model)
        return isinstance(base, ProbeClassifier) and base.backbone is self.embedder

    def _correct(self, model: nn.Module, data: CorrectionData) -> CorrectionResult:
        dim = model.head.in_features
        record = {"n_directions": self.directions.shape[0], "feature_dim": dim, "atoms": self.atom_names, "center": self.center}
        h_train = None
        if self._in_feature_space(model):
            if self.directions.shape[1] != dim:
                raise ValueError(
                    f"The directions have dimension {self.directions.shape[1]} but the student's features have "
                    f"dimension {dim}. Use directions in the student's feature space, or pass embedder= (the encoder "
                    "the directions live in) to carry them into it."
                )
            directions, record["transfer"] = self.directions, "none"
        else:
            h_train = features_of(model, data.train)
            z_train = self.embedder.embed(data.train.float_images())
            if z_train.shape[1] != self.directions.shape[1]:
                raise ValueError(
                    f"The directions have dimension {self.directions.shape[1]} but the embedder gives {z_train.shape[1]}-d embeddings."
                )
            directions, record["transfer"] = atom_patterns(z_train, h_train, self.directions, self.context), "pattern"
        basis = orthonormal_basis(directions)
        offset = None
        if self.center:
            h_train = features_of(model, data.train) if h_train is None else h_train
            offset = h_train.mean(0) @ basis
        edit = SubspaceProjection(basis, offset)
        return CorrectionResult(HeadWithFeatureEdit(model, edit), record, {"basis": basis})
