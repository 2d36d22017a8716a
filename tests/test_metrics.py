import pytest
import torch

from didae_xai.metrics import (
    accuracy,
    average_group_accuracy,
    gain,
    group_accuracies,
    group_report,
    worst_group_accuracy,
)


def test_group_metrics_hand_computed():
    # groups g = 2y + a:      g0 g0 g1 g1 g1 g2 g2 g3
    y = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1])
    a = torch.tensor([0, 0, 1, 1, 1, 0, 0, 1])
    pred = torch.tensor([0, 1, 0, 0, 1, 1, 1, 0])
    accs = group_accuracies(pred, y, a)
    assert accs == {"g0": 0.5, "g1": pytest.approx(2 / 3), "g2": 1.0, "g3": 0.0}
    assert average_group_accuracy(accs) == pytest.approx((0.5 + 2 / 3 + 1 + 0) / 4)
    assert worst_group_accuracy(accs) == 0.0
    assert accuracy(pred, y) == pytest.approx(5 / 8)
    report = group_report(pred, y, a)
    assert report["aga"] == pytest.approx(0.541666, abs=1e-5) and report["wga"] == 0.0


def test_gain():
    assert gain(0.9, 0.6) == pytest.approx(0.75)
    assert gain(0.6, 0.6) == 0.0
    assert gain(0.5, 0.6) == pytest.approx(-0.25)
    assert gain(1.0, 1.0) == 0.0


def test_empty_group_and_length_errors():
    with pytest.raises(ValueError, match="g3 .* is empty"):
        group_accuracies(torch.tensor([0, 1, 1]), torch.tensor([0, 0, 1]), torch.tensor([0, 1, 0]))
    with pytest.raises(ValueError, match="equal lengths"):
        group_accuracies(torch.tensor([0, 1]), torch.tensor([0]), torch.tensor([0]))
