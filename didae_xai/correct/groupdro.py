"""GroupDRO (Sagawa et al., 2020; ``kohpangwei/group_DRO`` ``LossComputer``), SPEC §6.

Per batch: group losses ``l_g`` (mean CE of the batch's members of group ``g = 2y + a``, 0 if absent);
group weights ``q_g <- q_g exp(eta (l_g + C / sqrt(N_g)))``, renormalised; loss ``sum_g q_g l_g``.
Batches are group-balanced (sampling with replacement, weight ``1 / N_g``); the epoch with the best
worst-group validation accuracy is kept.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from didae_xai.correct.base import (
    CorrectionData,
    CorrectionResult,
    Corrector,
    as_input,
    check_groups,
    device_of,
    features_of,
    predict,
    resolve_head_only,
)
from didae_xai.correct.loop import default_config, train_loop
from didae_xai.metrics.groups import group_accuracies
from didae_xai.models.training import TrainConfig


def group_losses(losses: torch.Tensor, groups: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Mean per-sample loss within each group of the batch (0 for groups absent from it)."""
    total = torch.zeros(n_groups, dtype=losses.dtype, device=losses.device).scatter_add(0, groups, losses)
    counts = torch.bincount(groups, minlength=n_groups).clamp_min(1).to(losses.dtype)
    return total / counts


def update_group_weights(q: torch.Tensor, group_loss: torch.Tensor, eta: float) -> torch.Tensor:
    """Exponentiated-gradient step ``q <- q exp(eta l) / sum(...)`` (returns a new tensor)."""
    q = q * torch.exp(eta * group_loss.detach())
    return q / q.sum()


class GroupDRO(Corrector):
    """Group distributionally robust optimisation.

    Args:
        eta: step size of the group weights (``robust_step_size``, 0.01).
        adjustment: generalisation adjustment ``C`` (0 in the reference's CelebA/Waterbirds commands).
        head_only: train only the last layer on precomputed features. ``None`` (default): head only for
            students with a frozen body (FM probes), all weights for end-to-end students (ResNet).
        config: the recipe (default :data:`~didae_xai.correct.loop.HEAD_CONFIG` or ``FULL_CONFIG``).

    After :meth:`correct`, ``result.record["q"]`` holds the final group weights and ``q_history`` their
    value after every epoch.
    """

    name = "groupdro"
    labels_used = ("y", "group")

    def __init__(self, eta: float = 0.01, adjustment: float = 0.0, head_only: bool | None = None,
                 config: TrainConfig | None = None, n_groups: int = 4, progress: bool = True):
        if eta <= 0:
            raise ValueError(f"eta must be positive, got {eta}.")
        self.eta, self.adjustment, self.head_only = float(eta), float(adjustment), head_only
        self.config, self.n_groups, self.progress = config, int(n_groups), progress

    def _correct(self, model: nn.Module, data: CorrectionData) -> CorrectionResult:
        counts = check_groups(data.train, self.name, self.n_groups)
        check_groups(data.val, self.name, self.n_groups)
        head_only = resolve_head_only(model, self.head_only)
        cfg = default_config(head_only, self.config)
        if head_only:
            inputs, module = features_of(model, data.train), model.head
            val_inputs = features_of(model, data.val)
            score_val = lambda: module(val_inputs.to(device_of(module))).argmax(1).cpu()  # noqa: E731
        else:
            inputs, module = data.train.images, model
            score_val = lambda: predict(model, data.val)  # noqa: E731
        if head_only:
            module.requires_grad_(True)
        y, g = data.train.y, data.train.groups
        adj = self.adjustment / counts.double().sqrt()
        state = {"q": torch.full((self.n_groups,), 1.0 / self.n_groups, dtype=torch.float64)}
        q_history: list[list[float]] = []

        device = device_of(module)

        def batch_loss(idx: torch.Tensor) -> torch.Tensor:
            out = module(as_input(inputs[idx]).to(device))
            losses = F.cross_entropy(out, y[idx].to(device), reduction="none")
            gl = group_losses(losses, g[idx].to(device), self.n_groups)
            state["q"] = update_group_weights(state["q"], gl.detach().double().cpu() + adj, self.eta)
            return (state["q"].to(gl) * gl).sum()

        @torch.no_grad()
        def validate() -> float:
            q_history.append(state["q"].tolist())
            accs = group_accuracies(score_val(), data.val.y, data.val.a, self.n_groups)
            return min(accs.values())

        weights = (1.0 / counts.double())[g]
        history = train_loop(module, module.parameters(), len(inputs), batch_loss, cfg, weights=weights,
                             validate=validate, desc="GroupDRO", progress=self.progress)
        record = {
            "trained": "head" if head_only else "all weights",
            "eta": self.eta,
            "adjustment": self.adjustment,
            "q": state["q"].tolist(),
            "q_history": q_history,
            "q_selected": q_history[history["best_epoch"]],
            "train_group_counts": counts.tolist(),
            "val_wga": history["val"],
            "selected_epoch": history["best_epoch"],
            "epochs": cfg.epochs,
            "config": history["config"],
        }
        return CorrectionResult(model, record)
