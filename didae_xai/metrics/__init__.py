"""Metrics: group accuracies and Gain (SPEC §5)."""

from didae_xai.metrics.groups import (
    accuracy,
    average_group_accuracy,
    gain,
    group_accuracies,
    group_report,
    worst_group_accuracy,
)

__all__ = [
    "accuracy",
    "average_group_accuracy",
    "gain",
    "group_accuracies",
    "group_report",
    "worst_group_accuracy",
]
