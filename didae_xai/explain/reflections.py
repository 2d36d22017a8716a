"""Gradient-free counterfactual edits in embedding space (SPEC §4), as pure tensor functions.

Shapes: ``z`` is ``(N, D)``; a direction ``u`` is ``(D,)``; a linear decision function is given by
its weight ``w`` (``(D,)`` or one row per sample, ``(N, D)``) and bias ``b`` (scalar or ``(N,)``),
with margin ``m(z) = w . z + b`` positive on the source side of the boundary.
"""

from __future__ import annotations

import torch

# |w . u| below this fraction of |w| |u| means the atom is (almost) parallel to the boundary: moving
# along it cannot change the margin, and the step size would blow up.
DEGENERATE_TOL = 1e-4


def _unit(u: torch.Tensor) -> torch.Tensor:
    norm = u.norm()
    if norm == 0:
        raise ValueError("A direction of zero length cannot be reflected along.")
    return u / norm


def _rows(w: torch.Tensor, n: int) -> torch.Tensor:
    return w.expand(n, -1) if w.ndim == 1 else w


def margin(z: torch.Tensor, w: torch.Tensor, b: torch.Tensor | float = 0.0) -> torch.Tensor:
    """``w . z + b`` per sample, ``(N,)``."""
    return (z * _rows(w, len(z))).sum(-1) + b


def component_reflection(z: torch.Tensor, mean: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Mirror the coordinate of ``z`` along ``u`` about the data mean: ``z - 2 ((z - mu) . u) u``.

    Classifier-free: shows what atom ``u`` encodes. Only the component along ``u`` changes.
    """
    u = _unit(u)
    p = (z - mean) @ u
    return z - 2.0 * p[:, None] * u


def boundary_inversion(
    z: torch.Tensor,
    w: torch.Tensor,
    u: torch.Tensor,
    b: torch.Tensor | float = 0.0,
    lam: float | torch.Tensor = 2.0,
    tol: float = DEGENERATE_TOL,
    max_step: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Move ``z`` along ``u`` across the linear boundary ``w . z + b = 0``.

    ``s = m(z) / (w . u)`` and ``z' = z - lam * s * u``: with ``lam = 2`` the margin is mirrored,
    ``m(z') = -m(z)``, while ``z`` moves only along ``u`` (``lam = 1`` lands on the boundary).

    ``max_step`` optionally bounds the move ``|lam * s|`` (in embedding units along ``u``): a boundary
    that lies further away than the data ever varies along ``u`` is approached, not crossed, so the
    decoded image stays plausible (it is then reported as not flipping instead of decoding noise).

    Returns:
        ``(z_cf, movable)``: ``movable`` is ``False`` where ``|w . u| < tol |w| |u|`` or ``w = 0``;
        there ``z`` is returned unchanged instead of dividing by (almost) zero.
    """
    u = _unit(u)
    w = _rows(w, len(z))
    wu = w @ u
    w_norm = w.norm(dim=-1)
    # A zero w (source == target class) has no boundary to cross.
    movable = (wu.abs() >= tol * w_norm) & (w_norm > 0)
    s = margin(z, w, b) / torch.where(movable, wu, torch.ones_like(wu))
    lam = torch.as_tensor(lam, dtype=z.dtype)
    step = torch.where(movable, lam * s, torch.zeros_like(s))
    if max_step is not None:
        step = step.clamp(-max_step, max_step)
    return z - step[:, None] * u, movable


def householder_reflection(z: torch.Tensor, w: torch.Tensor, b: torch.Tensor | float = 0.0) -> torch.Tensor:
    """The single-attempt variant: reflect across the boundary along ``w`` itself.

    ``z' = z - 2 (m(z) / |w|^2) w``: the closest mirrored point, but it changes every attribute that
    ``w`` mixes (entangled), unlike the per-atom inversion.
    """
    w = _rows(w, len(z))
    return z - 2.0 * (margin(z, w, b) / (w * w).sum(-1))[:, None] * w
