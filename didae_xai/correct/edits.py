"""Edits of the penultimate features ``h`` before the last layer, and the wrapper that applies them.

Pure math first (:func:`orthonormal_basis`, :func:`concept_direction`, :func:`project_out`,
:func:`shift_along`), then modules: :class:`SubspaceProjection` (``h <- h - Q Q^T h + Q c``) and
:class:`HeadWithFeatureEdit`, a classifier whose ``forward`` is ``head(edit(features(x)))`` and which
still exposes ``features``/``head``, so that corrections stack and every evaluation keeps working.
"""

from __future__ import annotations

import torch
from torch import nn

from didae_xai.models.classifiers import Classifier
from didae_xai.models.inference import device_of


# ------------------------------------------------------------------------------------------ pure math
def orthonormal_basis(directions: torch.Tensor, rtol: float = 1e-6) -> torch.Tensor:
    """Orthonormal basis ``Q`` (D, m) of the span of ``m`` directions given as rows (m, D), by QR.

    Raises:
        ValueError: no directions, or linearly dependent (or zero) directions.
    """
    directions = torch.as_tensor(directions)
    if directions.ndim == 1:
        directions = directions[None]
    if directions.ndim != 2 or directions.shape[0] == 0 or directions.shape[1] == 0:
        raise ValueError(f"Need at least one direction as rows (m, D); got shape {tuple(directions.shape)}.")
    if directions.shape[0] > directions.shape[1]:
        raise ValueError(f"{directions.shape[0]} directions cannot be independent in {directions.shape[1]} dimensions.")
    d = directions.double()
    q, r = torch.linalg.qr(d.T, mode="reduced")
    diag = r.diagonal().abs()
    if (diag <= rtol * d.norm(dim=1).max().clamp_min(1e-300)).any():
        raise ValueError("The directions are linearly dependent (or zero); pass independent directions.")
    return q.to(directions.dtype if directions.is_floating_point() else torch.float32)


def project_out(h: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """``h - Q Q^T h`` (no centring): the component of ``h`` in span(Q) is removed."""
    q = basis.to(h)
    return h - (h @ q) @ q.T


def shift_along(h: torch.Tensor, basis: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """``h - Q Q^T h + Q c``: every sample's coordinates along ``Q`` are set to ``c``."""
    q = basis.to(h)
    return h + (offset.to(h) - h @ q) @ q.T


def concept_direction(
    h: torch.Tensor,
    artifact: torch.Tensor,
    y: torch.Tensor | None = None,
    scope: str | int = "per_class",
) -> tuple[torch.Tensor, dict]:
    """Pattern CAV (Haufe's "signal"): the normalised mean difference of artifact vs clean features.

    Args:
        h: features (N, D).
        artifact: bool (N,), True for samples with the artifact.
        y: class labels (N,), needed unless ``scope="all"``.
        scope: ``"all"``: one mean difference over all samples; ``"per_class"``: the average of the
            within-class mean differences over the classes holding both artifact and clean samples
            (the confounder's direction with the class held fixed, so that a shortcut correlated with
            the label does not drag the class direction in); an int: within that class only
            (the reference's ``cav_scope = attacked class``).

    Returns:
        ``v`` (D,) of unit norm, and info: ``classes`` used, ``clean_mean`` and ``artifact_mean``, the
        mean of ``v^T h`` over clean and artifact samples (averaged over the classes used).
    """
    artifact = torch.as_tensor(artifact).bool()
    if scope == "all":
        groups = [torch.ones(len(h), dtype=torch.bool)]
        classes: list = ["all"]
    else:
        if y is None:
            raise ValueError("concept_direction needs class labels y unless scope='all'.")
        wanted = y.unique().tolist() if scope == "per_class" else [int(scope)]
        groups, classes = [], []
        for c in wanted:
            members = y == c
            if (members & artifact).any() and (members & ~artifact).any():
                groups.append(members)
                classes.append(int(c))
        if not groups:
            raise ValueError(
                f"No class in scope {scope!r} holds both artifact and clean samples; cannot estimate the concept direction."
            )
    if scope == "all" and (artifact.all() or not artifact.any()):
        raise ValueError("The concept direction needs both artifact and clean samples.")
    diffs = [h[m & artifact].mean(0) - h[m & ~artifact].mean(0) for m in groups]
    v = torch.stack(diffs).mean(0)
    norm = v.norm()
    if not torch.isfinite(norm) or norm < 1e-12:
        raise ValueError("Artifact and clean features have the same mean: the concept direction is undefined.")
    v = v / norm
    proj = h @ v
    info = {
        "classes": classes,
        "clean_mean": torch.stack([proj[m & ~artifact].mean() for m in groups]).mean().item(),
        "artifact_mean": torch.stack([proj[m & artifact].mean() for m in groups]).mean().item(),
    }
    return v, info


# ------------------------------------------------------------------------------------------- modules
class SubspaceProjection(nn.Module):
    """``h <- h - Q Q^T h + Q c``: remove ``h``'s component in span(Q) and put it at ``c`` (0 by default).

    With ``c = 0`` this is the DiDAE projection (no centring); with one direction ``v`` and
    ``c = v^T z`` it is the ClArC projection toward the reference point ``z``.

    Args:
        basis: (D, m) orthonormal columns (see :func:`orthonormal_basis`).
        offset: (m,) target coordinates ``c``; ``None`` means 0.
    """

    def __init__(self, basis: torch.Tensor, offset: torch.Tensor | None = None):
        super().__init__()
        basis = torch.as_tensor(basis, dtype=torch.float32)
        if basis.ndim == 1:
            basis = basis[:, None]
        self.register_buffer("basis", basis)
        self.register_buffer("offset", torch.zeros(basis.shape[1]) if offset is None else torch.as_tensor(offset, dtype=torch.float32).reshape(-1))
        if self.offset.shape[0] != basis.shape[1]:
            raise ValueError(f"offset has {self.offset.shape[0]} values for {basis.shape[1]} directions.")

    @property
    def dim(self) -> int:
        return self.basis.shape[0]

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if h.shape[-1] != self.dim:
            raise ValueError(f"The edit works on {self.dim}-d features, got {h.shape[-1]}-d.")
        return shift_along(h, self.basis, self.offset)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, directions={self.basis.shape[1]}, offset={self.offset.tolist()}"


class HeadWithFeatureEdit(Classifier):
    """A student whose penultimate features are edited before the (possibly new) last layer.

    ``features(x) = edit(student.features(x))`` and ``forward(x) = head(features(x))``, with ``head``
    the student's head unless a new one is given. Wrappers stack: the student may itself be a
    ``HeadWithFeatureEdit``.

    Args:
        student: a :class:`Classifier`.
        edit: a module mapping features (B, D) to features (B, D); ``None`` = identity.
        head: a new last layer; ``None`` keeps the student's.
    """

    def __init__(self, student: Classifier, edit: nn.Module | None = None, head: nn.Linear | None = None):
        super().__init__()
        self.student = student
        device = device_of(student)
        self.edit = (edit if edit is not None else nn.Identity()).to(device)
        self.new_head = head.to(device) if head is not None else None
        self.config = {"kind": "edited", "student": dict(getattr(student, "config", {})), "edit": type(self.edit).__name__}

    @property
    def head(self) -> nn.Linear:  # type: ignore[override]
        return self.new_head if self.new_head is not None else self.student.head

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.edit(self.student.features(x))

    @property
    def base_student(self) -> Classifier:
        """The innermost student under all the edits."""
        s = self.student
        while isinstance(s, HeadWithFeatureEdit):
            s = s.student
        return s
