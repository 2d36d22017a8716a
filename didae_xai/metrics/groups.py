"""Group metrics of spurious-correlation benchmarks (SPEC §5), as pure functions of tensors."""

from __future__ import annotations

import torch


def group_accuracies(pred: torch.Tensor, y: torch.Tensor, a: torch.Tensor, n_groups: int = 4) -> dict[str, float]:
    """Accuracy within each group ``g = 2 y + a``; keys ``g0 .. g{n_groups-1}``.

    Raises:
        ValueError: on mismatched lengths or an empty group (its accuracy is undefined).
    """
    pred, y, a = (torch.as_tensor(t).long().flatten() for t in (pred, y, a))
    if not len(pred) == len(y) == len(a):
        raise ValueError(f"pred, y and a must have equal lengths, got {len(pred)}, {len(y)}, {len(a)}.")
    groups = 2 * y + a
    out = {}
    for g in range(n_groups):
        members = groups == g
        if not members.any():
            raise ValueError(f"Group g{g} (y={g // 2}, a={g % 2}) is empty; group accuracy is undefined.")
        out[f"g{g}"] = (pred[members] == y[members]).float().mean().item()
    return out


def average_group_accuracy(accuracies: dict[str, float]) -> float:
    """AGA: the unweighted mean of the group accuracies."""
    return sum(accuracies.values()) / len(accuracies)


def worst_group_accuracy(accuracies: dict[str, float]) -> float:
    """WGA: the smallest group accuracy."""
    return min(accuracies.values())


def accuracy(pred: torch.Tensor, y: torch.Tensor) -> float:
    """Plain accuracy over all samples (weighted by group size, unlike AGA)."""
    pred, y = torch.as_tensor(pred).flatten(), torch.as_tensor(y).flatten()
    return (pred.long() == y.long()).float().mean().item()


def gain(aga_after: float, aga_before: float) -> float:
    """Share of the remaining AGA gap closed by a correction: (after - before) / (1 - before).

    Defined as 0 when ``aga_before`` is already 1 (there is no gap to close).
    """
    if aga_before >= 1.0:
        return 0.0
    return (aga_after - aga_before) / (1.0 - aga_before)


def group_report(pred: torch.Tensor, y: torch.Tensor, a: torch.Tensor) -> dict:
    """Per-group accuracy, AGA, WGA and plain accuracy in one dictionary."""
    accs = group_accuracies(pred, y, a)
    return {
        "group_accuracy": accs,
        "aga": average_group_accuracy(accs),
        "wga": worst_group_accuracy(accs),
        "accuracy": accuracy(pred, y),
    }
