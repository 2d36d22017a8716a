"""Metrics: group accuracies and Gain, counterfactual quality, and the NAFR surrogate (SPEC §5)."""

from didae_xai.metrics.counterfactual import (
    counterfactuals_per_second,
    diversity,
    explanation_scores,
    flip_rate,
    flips,
    latent_sparsity,
    na_rate,
    nafr,
    pixel_diversity,
    proximity_l1,
    square_oracle_latent,
    target_confidence,
)
from didae_xai.metrics.groups import (
    accuracy,
    average_group_accuracy,
    gain,
    group_accuracies,
    group_report,
    worst_group_accuracy,
)
from didae_xai.metrics.surrogate import LeakySoftplus, distill_surrogate, leaky_softplus_resnet, load_surrogate, pgd_l2

__all__ = [
    "LeakySoftplus",
    "accuracy",
    "average_group_accuracy",
    "counterfactuals_per_second",
    "distill_surrogate",
    "diversity",
    "explanation_scores",
    "flip_rate",
    "flips",
    "gain",
    "group_accuracies",
    "group_report",
    "latent_sparsity",
    "leaky_softplus_resnet",
    "load_surrogate",
    "na_rate",
    "nafr",
    "pgd_l2",
    "pixel_diversity",
    "proximity_l1",
    "square_oracle_latent",
    "target_confidence",
    "worst_group_accuracy",
]
