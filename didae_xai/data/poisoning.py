"""Group-controlled poisoning: build a training set where a spurious attribute predicts the label."""

from __future__ import annotations

import torch


def group_quotas(n_total: int, p: float) -> dict[int, int]:
    """Group sizes of a poisoned set with confounder probability ``p``.

    Group ``g = 2 y + a``. The majority pairs ``y = 1`` with ``a = 0`` and ``y = 0`` with ``a = 1``
    (groups 2 and 1) and gets ``n (1 - p) / 2`` each; the minority groups 0 and 3 get ``n p / 2``
    each: 490/490/10/10 for ``n = 1000, p = 0.02`` (SPEC §8).
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"Confounder probability p must be in [0, 1], got {p}.")
    minority = int(round(n_total * p / 2))
    majority = n_total // 2 - minority
    return {0: minority, 1: majority, 2: majority, 3: minority}


def poison_indices(
    y: torch.Tensor,
    a: torch.Tensor,
    n_total: int = 1000,
    p: float = 0.02,
    val_fraction: float = 0.2,
    seed: int = 0,
    exclude: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick ``n_total`` indices with the poisoned group quotas, split each group train/validation.

    Args:
        y, a: binary task and confounder labels of the pool to draw from.
        n_total: size of the poisoned set (train + validation).
        p: confounder probability; the minority groups hold ``p`` of the images.
        val_fraction: share of each group that goes to validation (0.2 gives 800/200).
        seed: seeds the random choice within each group.
        exclude: optional boolean mask of pool items that must not be drawn.

    Returns:
        ``(train_index, val_index)``, sorted ``long`` tensors into the pool.

    Raises:
        ValueError: if a group of the pool has fewer images than its quota.
    """
    y = torch.as_tensor(y, dtype=torch.long)
    a = torch.as_tensor(a, dtype=torch.long)
    if y.shape != a.shape:
        raise ValueError(f"y and a must have the same shape, got {tuple(y.shape)} and {tuple(a.shape)}.")
    if not set(torch.unique(y).tolist()) <= {0, 1} or not set(torch.unique(a).tolist()) <= {0, 1}:
        raise ValueError("Poisoning needs binary labels y and a (values 0/1).")
    groups = 2 * y + a
    available = torch.ones_like(y, dtype=torch.bool) if exclude is None else ~exclude.bool()
    generator = torch.Generator().manual_seed(seed)
    train, val = [], []
    for g, quota in group_quotas(n_total, p).items():
        members = torch.nonzero((groups == g) & available).flatten()
        if len(members) < quota:
            raise ValueError(
                f"Cannot poison: group g={g} (y={g // 2}, a={g % 2}) needs {quota} images but the pool "
                f"has only {len(members)}. Use a larger pool, a smaller n_total or another p."
            )
        chosen = members[torch.randperm(len(members), generator=generator)[:quota]]
        n_val = int(round(quota * val_fraction))
        val.append(chosen[:n_val])
        train.append(chosen[n_val:])
    return torch.cat(train).sort().values, torch.cat(val).sort().values


def balanced_indices(
    y: torch.Tensor, a: torch.Tensor, per_group: int, seed: int = 0, exclude: torch.Tensor | None = None
) -> torch.Tensor:
    """``per_group`` random indices from each of the four groups (e.g. the DFR set)."""
    groups = 2 * torch.as_tensor(y) + torch.as_tensor(a)
    available = torch.ones_like(groups, dtype=torch.bool) if exclude is None else ~exclude.bool()
    generator = torch.Generator().manual_seed(seed)
    out = []
    for g in range(4):
        members = torch.nonzero((groups == g) & available).flatten()
        if len(members) < per_group:
            raise ValueError(
                f"Cannot draw a balanced set: group g={g} has {len(members)} images, {per_group} needed."
            )
        out.append(members[torch.randperm(len(members), generator=generator)[:per_group]])
    return torch.cat(out).sort().values


def round_robin_order(y: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """An order of the rows that cycles through the four (y, a) groups, so that every prefix is balanced.

    Used to give slow methods a prefix of the factuals a fast method explains, still balanced.
    """
    groups = 2 * torch.as_tensor(y).long() + torch.as_tensor(a).long()
    rank = torch.empty_like(groups)
    for g in groups.unique():
        members = (groups == g).nonzero().flatten()
        rank[members] = torch.arange(len(members))
    return torch.argsort(rank * 4 + groups, stable=True)
