"""Counterfactual metrics (SPEC §5) as pure functions of tensors: no models, no I/O.

Flip rates take what the models already said about the counterfactuals (confidences, flip flags);
the NAFR surrogate that produces the second set of flags lives in :mod:`didae_xai.metrics.surrogate`.
Functions that average over rows where a metric is undefined (a zero change) skip those rows and
return ``nan`` when none is left, so that a benchmark table shows "undefined" rather than a number.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from didae_xai.data.square import SquareGeometry

_RANGE_TOL = 1e-4


def _check_finite(name: str, t: torch.Tensor) -> None:
    if t.numel() == 0:
        raise ValueError(f"{name} is empty; a metric over no counterfactuals is undefined.")
    if t.is_floating_point() and not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or infinite values.")


def _as_flags(name: str, t: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(t)
    _check_finite(name, t)
    if t.dtype != torch.bool:
        if not ((t == 0) | (t == 1)).all():
            raise ValueError(f"{name} must be a boolean tensor (or 0/1 values), got dtype {t.dtype}.")
        t = t.bool()
    return t.flatten()


def _unit_images(name: str, x: torch.Tensor) -> torch.Tensor:
    """``uint8`` images scaled to ``[0, 1]``; float images checked to lie in ``[0, 1]``."""
    x = torch.as_tensor(x)
    _check_finite(name, x)
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    x = x.float()
    if x.min() < -_RANGE_TOL or x.max() > 1 + _RANGE_TOL:
        raise ValueError(
            f"{name} must lie in [0, 1] (or be uint8), got values in [{x.min():.3f}, {x.max():.3f}]; "
            "map images from [-1, 1] with (x + 1) / 2."
        )
    return x


def target_confidence(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Softmax probability of the target class, ``softmax(logits)[i, target_i]`` (no temperature).

    Args:
        logits: ``(N, C)`` classifier outputs on the counterfactuals.
        target: ``(N,)`` target class of each counterfactual.

    Returns:
        ``(N,)`` confidences in ``[0, 1]``.
    """
    logits, target = torch.as_tensor(logits), torch.as_tensor(target).long().flatten()
    _check_finite("logits", logits)
    if logits.ndim != 2 or len(logits) != len(target):
        raise ValueError(f"Expected logits (N, C) and target (N,), got {tuple(logits.shape)} and {tuple(target.shape)}.")
    return logits.float().softmax(dim=1).gather(1, target[:, None]).squeeze(1)


def flips(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Flip flags under the argmax criterion: ``argmax_c logits[i, c] == target_i``.

    Args:
        logits: ``(N, C)`` outputs of one model on the counterfactuals.
        target: ``(N,)`` target class of each counterfactual.

    Returns:
        ``(N,)`` boolean tensor, the input of :func:`nafr` and :func:`na_rate`.
    """
    logits, target = torch.as_tensor(logits), torch.as_tensor(target).long().flatten()
    _check_finite("logits", logits)
    if logits.ndim != 2 or len(logits) != len(target):
        raise ValueError(f"Expected logits (N, C) and target (N,), got {tuple(logits.shape)} and {tuple(target.shape)}.")
    return logits.argmax(dim=1) == target


def flip_rate(target_confidence: torch.Tensor, threshold: float = 0.5) -> float:
    """FR = (1/N) Σ_i 1[p_f(y_t | x'_i) ≥ threshold].

    Args:
        target_confidence: ``(N,)`` classifier confidence for the target class of each
            counterfactual (see :func:`target_confidence`).
        threshold: 0.5 per SPEC §5 (the PEAL code uses 0.51).

    Returns:
        The share of counterfactuals that reach the target class.
    """
    conf = torch.as_tensor(target_confidence).float().flatten()
    _check_finite("target_confidence", conf)
    if conf.min() < 0 or conf.max() > 1:
        raise ValueError("target_confidence must hold probabilities in [0, 1]; pass softmax outputs, not logits.")
    return (conf >= threshold).float().mean().item()


def nafr(student_flipped: torch.Tensor, surrogate_flipped: torch.Tensor) -> float:
    """NAFR = (1/N) Σ_i 1[f(x'_i) = y_t ∧ f_sur(x'_i) = y_t]: flips that fool both models.

    Args:
        student_flipped: ``(N,)`` bool, the student's argmax equals the target (see :func:`flips`).
        surrogate_flipped: ``(N,)`` bool, the same for the distilled surrogate.

    Returns:
        The non-adversarial flip rate, in ``[0, 1]``.
    """
    s, r = _as_flags("student_flipped", student_flipped), _as_flags("surrogate_flipped", surrogate_flipped)
    if s.shape != r.shape:
        raise ValueError(f"student_flipped and surrogate_flipped differ in length: {len(s)} vs {len(r)}.")
    return (s & r).float().mean().item()


def na_rate(student_flipped: torch.Tensor, surrogate_flipped: torch.Tensor) -> float:
    """NA rate = N_{flip both} / N_{flip student}: the share of the student's flips that are not
    adversarial. Defined as 0 when the student never flips.

    Args:
        student_flipped, surrogate_flipped: ``(N,)`` bool flags as in :func:`nafr`.

    Returns:
        The non-adversarial rate, in ``[0, 1]``.
    """
    s, r = _as_flags("student_flipped", student_flipped), _as_flags("surrogate_flipped", surrogate_flipped)
    if s.shape != r.shape:
        raise ValueError(f"student_flipped and surrogate_flipped differ in length: {len(s)} vs {len(r)}.")
    n_student = int(s.sum())
    return int((s & r).sum()) / n_student if n_student else 0.0


def proximity_l1(x: torch.Tensor, x_cf: torch.Tensor) -> torch.Tensor:
    """Per-pair proximity: ``mean_{c,h,w} |x - x_cf|`` with images in ``[0, 1]`` (uint8 is scaled).

    Args:
        x: ``(N, ...)`` factual images.
        x_cf: counterfactuals, same shape as ``x``.

    Returns:
        ``(N,)`` mean absolute pixel differences (lower is closer).
    """
    x, x_cf = _unit_images("x", x), _unit_images("x_cf", x_cf)
    if x.shape != x_cf.shape or x.ndim < 2:
        raise ValueError(f"x and x_cf must have the same shape (N, ...), got {tuple(x.shape)} and {tuple(x_cf.shape)}.")
    return (x - x_cf).abs().flatten(1).mean(dim=1)


def diversity(deltas: torch.Tensor, eps: float = 1e-12) -> float:
    """Diversity ``= 1 − mean_n [ mean_{i<j} |cos(d_{n,i}, d_{n,j})| ]`` over the K changes of a factual.

    Orthogonal changes give 1, parallel (or anti-parallel) changes give 0. Pairs involving a zero
    change (cosine undefined) are skipped, and so are factuals left without a pair.

    Args:
        deltas: ``(N, K, F)``: for each of N factuals, K ≥ 2 changes (latent or flattened pixel
            differences ``x_cf - x``). Counterfactuals stored attempt-major ``(K * N, ...)`` must be
            reordered first, e.g. ``d.view(K, N, -1).transpose(0, 1)``.
        eps: norms below this count as a zero change.

    Returns:
        Mean diversity over factuals, or ``nan`` if no factual has two non-zero changes.
    """
    d = torch.as_tensor(deltas)
    _check_finite("deltas", d)
    if d.ndim != 3:
        raise ValueError(f"deltas must be (N, K, F), got shape {tuple(d.shape)}.")
    n, k, _ = d.shape
    if k < 2:
        raise ValueError(f"Diversity compares the counterfactuals of one factual and needs K >= 2 of them, got K = {k}.")
    d = d.double()
    norms = d.norm(dim=2)
    valid = norms > eps
    unit = d / norms.clamp_min(eps).unsqueeze(2)
    cos = (unit @ unit.transpose(1, 2)).abs()  # (N, K, K)
    i, j = torch.triu_indices(k, k, offset=1)
    pair_cos = cos[:, i, j]  # (N, P)
    pair_ok = valid[:, i] & valid[:, j]
    n_ok = pair_ok.sum(dim=1)
    rows = n_ok > 0
    if not rows.any():
        return math.nan
    mean_cos = (pair_cos * pair_ok).sum(dim=1)[rows] / n_ok[rows]
    return (1.0 - mean_cos).mean().item()


def pixel_diversity(x: torch.Tensor, x_cf: torch.Tensor) -> float:
    """:func:`diversity` of the pixel changes ``x_cf[:, k] - x`` (images in ``[0, 1]``).

    Args:
        x: ``(N, C, H, W)`` factual images.
        x_cf: ``(N, K, C, H, W)``: K ≥ 2 counterfactuals per factual.

    Returns:
        Mean pixel-space diversity over factuals (``nan`` if undefined everywhere).
    """
    x, x_cf = _unit_images("x", x), _unit_images("x_cf", x_cf)
    if x_cf.ndim != x.ndim + 1 or x_cf.shape[0] != x.shape[0] or x_cf.shape[2:] != x.shape[1:]:
        raise ValueError(f"Expected x (N, C, H, W) and x_cf (N, K, C, H, W), got {tuple(x.shape)} and {tuple(x_cf.shape)}.")
    return diversity((x_cf - x.unsqueeze(1)).flatten(2))


def latent_sparsity(d: torch.Tensor) -> float:
    """Sparsity ``= 1 − mean_i [(Σ_j |d_ij| − max_j |d_ij|) / ((n − 1) · max_j |d_ij|)]``.

    1 when each counterfactual changes a single factor, 0 when it changes all n factors equally.
    Rows without any change (``max |d| = 0``) are skipped.

    Args:
        d: ``(N, n)`` change of the n ≥ 2 ground-truth factors, ``latent(x_cf) - latent(x)``.

    Returns:
        Mean sparsity over the rows with a change, or ``nan`` if there is none.
    """
    d = torch.as_tensor(d)
    _check_finite("d", d)
    if d.ndim != 2:
        raise ValueError(f"d must be (N, n_factors), got shape {tuple(d.shape)}.")
    n = d.shape[1]
    if n < 2:
        raise ValueError(f"Sparsity needs at least 2 factors, got {n}.")
    a = d.double().abs()
    peak = a.max(dim=1).values
    rows = peak > 0
    if not rows.any():
        return math.nan
    spread = (a.sum(dim=1)[rows] - peak[rows]) / ((n - 1) * peak[rows])
    return (1.0 - spread).mean().item()


def square_oracle_latent(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Ground-truth read-out of a Square image: ``[red inside the mask, mean intensity outside]``.

    ``latent[:, 0]`` = mean of the red channel over the foreground mask (≈ ``ColorA``);
    ``latent[:, 1]`` = mean over all channels of the pixels outside the mask dilated by the frame
    border, ``max(1, round(2 * size / 64))`` px, i.e. outside the grey frame (≈ ``ColorB``).

    Args:
        images: ``(N, 3, H, W)`` in ``[0, 1]`` (``uint8`` is scaled), e.g. factuals or counterfactuals.
        masks: ``(N, H, W)`` bool foreground masks of the factuals (``ImageDataset.masks``).

    Returns:
        ``(N, 2)`` float tensor; differences of two read-outs feed :func:`latent_sparsity`.
    """
    x = _unit_images("images", images)
    masks = torch.as_tensor(masks)
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"images must be (N, 3, H, W), got {tuple(x.shape)}.")
    if masks.shape != (x.shape[0], *x.shape[2:]):
        raise ValueError(f"masks must be (N, H, W) = {(x.shape[0], *x.shape[2:])}, got {tuple(masks.shape)}.")
    inside = masks.bool()
    border = SquareGeometry.for_size(x.shape[-1]).border
    frame = F.max_pool2d(inside[:, None].float(), 2 * border + 1, stride=1, padding=border)[:, 0] > 0
    outside = ~frame
    n_in, n_out = inside.flatten(1).sum(1), outside.flatten(1).sum(1)
    if (n_in == 0).any() or (n_out == 0).any():
        raise ValueError("Every image needs a non-empty mask and some pixels outside its frame.")
    red = (x[:, 0] * inside).flatten(1).sum(1) / n_in
    rest = (x.mean(dim=1) * outside).flatten(1).sum(1) / n_out
    return torch.stack([red, rest], dim=1)


def counterfactuals_per_second(n_counterfactuals: int, seconds: float) -> float:
    """Speed = counterfactuals returned / wall time of their generation (a warm batch, SPEC §5).

    Args:
        n_counterfactuals: counterfactuals returned (B · K for K per factual).
        seconds: wall time of the generation call, > 0.

    Returns:
        Counterfactuals per second.
    """
    if n_counterfactuals < 0:
        raise ValueError(f"n_counterfactuals must be >= 0, got {n_counterfactuals}.")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"seconds must be a positive, finite wall time, got {seconds}; time a warm batch.")
    return n_counterfactuals / seconds


def explanation_scores(explanation, surrogate: torch.nn.Module, n: int | None = None) -> dict:
    """Flip rate and NAFR of a :class:`~didae_xai.explain.CounterfactualExplanation` (its first ``n``
    factuals), per counterfactual and per factual (``..._any``: at least one of its counterfactuals).

    ``surrogate`` is the adversarially distilled model of :func:`~didae_xai.metrics.distill_surrogate`;
    ``l1`` is the mean absolute pixel change.
    """
    flipped, target = explanation.flipped[:n], explanation.target[:n]
    cfs = explanation.counterfactuals[:n]
    rows, k = flipped.shape
    with torch.no_grad():
        sur = surrogate.predict(cfs.reshape(rows * k, *cfs.shape[2:])).reshape(rows, k) == target[:, None]
    both = flipped & sur
    return {
        "factuals": rows,
        "counterfactuals": rows * k,
        "flip_rate": flipped.float().mean().item(),
        "nafr": nafr(flipped.flatten(), sur.flatten()),
        "flip_rate_any": flipped.any(1).float().mean().item(),
        "nafr_any": both.any(1).float().mean().item(),
        "l1": (cfs - explanation.factuals[:n, None]).abs().mean().item(),
    }
