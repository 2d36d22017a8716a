"""Probe distillation (SPEC §4): a linear model on the embedding that imitates any classifier."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression


@dataclass
class LinearProbe:
    """Class scores ``z @ weight.T + bias`` on raw backbone embeddings.

    Attributes:
        weight: ``(C, D)``; bias: ``(C,)``; fidelity: agreement with the distilled classifier's hard
        predictions on the distillation data (1.0 = it always agrees).
    """

    weight: torch.Tensor
    bias: torch.Tensor
    fidelity: float = float("nan")

    @property
    def num_classes(self) -> int:
        return self.weight.shape[0]

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        return z.to(self.weight) @ self.weight.T + self.bias

    def predict(self, z: torch.Tensor) -> torch.Tensor:
        return self.logits(z).argmax(-1)

    def pair(self, source: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample boundary between two classes: ``(w, b)`` with ``w . z + b > 0`` where source wins."""
        source, target = torch.as_tensor(source).long(), torch.as_tensor(target).long()
        return self.weight[source] - self.weight[target], self.bias[source] - self.bias[target]


def distill_probe(z: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None, C: float = 1.0) -> LinearProbe:
    """Fit a linear probe to a classifier's hard predictions ``labels`` on embeddings ``z``.

    We use a bias (the decision boundary of an embedding space of non-negative pooled features does
    not pass through the origin) and L2-regularised logistic regression on standardised embeddings,
    mapped back to raw-embedding coordinates so the probe applies to ``z`` directly.

    Args:
        z: embeddings ``(N, D)`` of the distillation images (e.g. the poisoned training set).
        labels: the classifier's hard predictions on those images, ``(N,)``.
        num_classes: number of classes of the classifier (default ``labels.max() + 1``, at least 2).
        C: inverse regularisation strength of the logistic regression.
    """
    z = torch.as_tensor(z).double()
    labels = torch.as_tensor(labels).long()
    if z.ndim != 2 or len(z) != len(labels):
        raise ValueError(f"Need embeddings (N, D) and N labels, got {tuple(z.shape)} and {tuple(labels.shape)}.")
    num_classes = max(int(labels.max()) + 1, 2) if num_classes is None else num_classes
    present = torch.unique(labels)
    if len(present) < 2:
        raise ValueError(
            f"The classifier predicts only class {present.tolist()} on the distillation data; a probe cannot "
            "learn a boundary. Distil on data where it predicts at least two classes."
        )
    mean, std = z.mean(0), z.std(0).clamp_min(1e-8)
    x = ((z - mean) / std).numpy()
    clf = LogisticRegression(C=C, max_iter=2000).fit(x, labels.numpy())
    coef = torch.from_numpy(clf.coef_)
    intercept = torch.from_numpy(np.atleast_1d(clf.intercept_))
    if coef.shape[0] == 1:  # binary: sklearn keeps one score for classes_[1]
        coef, intercept = torch.cat([-coef, coef]) / 2, torch.cat([-intercept, intercept]) / 2
    weight = torch.zeros(num_classes, z.shape[1], dtype=torch.float64)
    bias = torch.zeros(num_classes, dtype=torch.float64)
    # Classes the classifier never predicted keep a very low score.
    bias[:] = -1e4
    cls = torch.from_numpy(clf.classes_).long()
    weight[cls] = coef / std
    bias[cls] = intercept - (coef / std) @ mean
    probe = LinearProbe(weight.float(), bias.float())
    probe.fidelity = (probe.predict(z.float()) == labels).float().mean().item()
    return probe
