"""Teachers for CFKD: who says whether a counterfactual's flip is legitimate (SPEC §6; peal-didae.md §6).

A teacher maps a :class:`~didae_xai.explain.CounterfactualExplanation` of N factuals with K
counterfactuals each, and the factuals' true labels, to N*K verdict strings (row-major: factual ``i``,
counterfactual ``k`` at ``i*K + k``). ``"true"``: the flip is legitimate (the task attribute changed);
``"false"``: a Clever-Hans flip (the student flipped, the true class did not change); anything else
marks a counterfactual that is filtered out, with the reason as the reference writes it.

- :class:`OracleTeacher`: a classifier trained on unpoisoned data. In order: ``"student originally
  wrong!"`` (the student's factual prediction differs from the label), ``"teacher originally wrong!"``,
  ``"student not swapped!"`` (target confidence < 0.5), ``"out of distribution!"`` (only with an
  ``ood_score``), ``"adversarial counterfactual!"`` (the student does not predict the target, or, given
  a ``surrogate``, the surrogate does not), then ``"true"`` if the teacher's prediction changes, else
  ``"false"``.
- :class:`PreclusteredTeacher`: every counterfactual inherits its atom's verdict (``true_atoms`` true,
  all others false), after the same student-wrong / not-swapped (/ OOD) filters: a person labels K
  atoms once instead of thousands of images.
"""

from __future__ import annotations

import warnings
from typing import Callable, Protocol, Sequence, runtime_checkable

import torch
from torch import nn

from didae_xai.explain.explanation import CounterfactualExplanation
from didae_xai.models.inference import device_of, predict_labels

TRUE = "true"
FALSE = "false"
STUDENT_WRONG = "student originally wrong!"
TEACHER_WRONG = "teacher originally wrong!"
NOT_SWAPPED = "student not swapped!"
OUT_OF_DISTRIBUTION = "out of distribution!"
ADVERSARIAL = "adversarial counterfactual!"
VERDICTS = (TRUE, FALSE, STUDENT_WRONG, TEACHER_WRONG, NOT_SWAPPED, OUT_OF_DISTRIBUTION, ADVERSARIAL)

#: ``ood_score(factuals (N, C, H, W), counterfactuals (N, K, C, H, W)) -> scores (N, K)``; higher = more OOD.
OODScore = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@runtime_checkable
class Teacher(Protocol):
    """What CFKD needs from a teacher."""

    #: How a results table names this teacher's side information, e.g. ``("teacher",)``.
    labels_used: tuple[str, ...]
    #: Classes the teacher predicts (``None``: any number; checked against the student by CFKD).
    num_classes: int | None

    def verdicts(self, explanation: CounterfactualExplanation, factual_labels: torch.Tensor) -> list[str]:
        """One verdict per counterfactual, row-major (N*K)."""
        ...


def check_explanation(explanation: CounterfactualExplanation, factual_labels: torch.Tensor) -> tuple[int, int]:
    """Shapes (N, K) of an explanation, checked against the labels."""
    cf = explanation.counterfactuals
    if cf.ndim != 5:
        raise ValueError(f"counterfactuals must be shaped (N, K, C, H, W), got {tuple(cf.shape)}.")
    n, k = cf.shape[:2]
    if len(explanation.factuals) != n or len(factual_labels) != n:
        raise ValueError(
            f"The explanation has {len(explanation.factuals)} factuals and {n} rows of counterfactuals, "
            f"but {len(factual_labels)} factual labels were given."
        )
    for name in ("cf_pred", "cf_target_confidence"):
        if tuple(getattr(explanation, name).shape) != (n, k):
            raise ValueError(f"explanation.{name} must be shaped ({n}, {k}), got {tuple(getattr(explanation, name).shape)}.")
    return n, k


def _filters(explanation: CounterfactualExplanation, factual_labels: torch.Tensor, threshold: float = 0.5) -> list[list[str | None]]:
    """The student-side filters every teacher shares (None where none applies)."""
    n, k = check_explanation(explanation, factual_labels)
    labels = torch.as_tensor(factual_labels).long()
    wrong = explanation.factual_pred.long() != labels
    not_swapped = explanation.cf_target_confidence < threshold
    out: list[list[str | None]] = []
    for i in range(n):
        row: list[str | None] = []
        for j in range(k):
            row.append(STUDENT_WRONG if wrong[i] else NOT_SWAPPED if not_swapped[i, j] else None)
        out.append(row)
    return out


def _apply_ood(rows: list[list[str | None]], explanation: CounterfactualExplanation,
               ood_score: OODScore | None, threshold: float) -> None:
    if ood_score is None:
        return
    scores = torch.as_tensor(ood_score(explanation.factuals, explanation.counterfactuals))
    if tuple(scores.shape) != tuple(explanation.counterfactuals.shape[:2]):
        raise ValueError(f"ood_score must return (N, K) scores, got shape {tuple(scores.shape)}.")
    for i, row in enumerate(rows):
        for j, v in enumerate(row):
            if v is None and scores[i, j] > threshold:
                row[j] = OUT_OF_DISTRIBUTION


def _num_classes(model: nn.Module) -> int | None:
    n = getattr(model, "num_classes", None)
    if isinstance(n, int):
        return n
    head = getattr(model, "head", None)
    return head.out_features if isinstance(head, nn.Linear) else None


class OracleTeacher:
    """A classifier trained on unpoisoned data judges each flip (the reference ``Model2ModelTeacher``).

    Args:
        classifier: the teacher; images in ``[0, 1]`` -> logits over the student's classes.
        surrogate: optional independent classifier; a counterfactual it does not flip to the target is
            ``"adversarial counterfactual!"`` (a flip that fools only the student).
        ood_score: optional ``(factuals, counterfactuals) -> (N, K)`` scores; above ``ood_threshold`` a
            counterfactual is ``"out of distribution!"``. The reference's relative outlier score is not
            reimplemented; by default no OOD filter runs.
        ood_threshold: 2.5 as the reference oracle.
        num_classes: classes of the teacher (default: read from ``classifier.num_classes``/``head``).
    """

    labels_used = ("teacher",)

    def __init__(self, classifier: nn.Module, surrogate: nn.Module | None = None, ood_score: OODScore | None = None,
                 ood_threshold: float = 2.5, num_classes: int | None = None, batch_size: int = 256):
        self.classifier = classifier
        self.surrogate = surrogate
        self.ood_score = ood_score
        self.ood_threshold = ood_threshold
        self.num_classes = num_classes if num_classes is not None else _num_classes(classifier)
        self.batch_size = batch_size

    @torch.no_grad()
    def infer_num_classes(self, images: torch.Tensor) -> int:
        """``num_classes``, read from the classifier's output on ``images`` (a few, in [0, 1]) if unknown."""
        if self.num_classes is None:
            device = device_of(self.classifier)
            was_training = self.classifier.training
            self.classifier.eval()
            try:
                self.num_classes = int(self.classifier(images[:1].float().to(device)).shape[1])
            finally:
                self.classifier.train(was_training)
        return self.num_classes

    def verdicts(self, explanation: CounterfactualExplanation, factual_labels: torch.Tensor) -> list[str]:
        rows = _filters(explanation, factual_labels)
        n, k = len(rows), len(rows[0]) if rows else 0
        if n == 0:
            return []
        labels = torch.as_tensor(factual_labels).long()
        cf = explanation.counterfactuals.reshape(n * k, *explanation.counterfactuals.shape[2:])
        t_fact = predict_labels(self.classifier, explanation.factuals, self.batch_size)
        t_cf = predict_labels(self.classifier, cf, self.batch_size).reshape(n, k)
        for i in range(n):
            if rows[i][0] != STUDENT_WRONG and t_fact[i] != labels[i]:
                rows[i] = [TEACHER_WRONG] * k
        _apply_ood(rows, explanation, self.ood_score, self.ood_threshold)
        adversarial = explanation.cf_pred.long() != explanation.target.long()[:, None]
        if self.surrogate is not None:
            adversarial |= predict_labels(self.surrogate, cf, self.batch_size).reshape(n, k) != explanation.target.long()[:, None]
        out = []
        for i in range(n):
            for j in range(k):
                v = rows[i][j]
                if v is None:
                    v = ADVERSARIAL if adversarial[i, j] else TRUE if t_cf[i, j] != t_fact[i] else FALSE
                out.append(v)
        return out


class PreclusteredTeacher:
    """Verdict per atom: counterfactuals of ``true_atoms`` are "true", of every other atom "false".

    Args:
        true_atoms: names (e.g. ``("ColorA",)``, the task atom) or indices of the atoms whose flips are
            legitimate. Indices refer to ``explanation.atoms``.
        ood_score, ood_threshold: optional OOD filter as in :class:`OracleTeacher` (4.0 as the reference).
    """

    labels_used = ("atom verdicts",)
    num_classes = None

    def __init__(self, true_atoms: Sequence[str | int] = ("ColorA",), ood_score: OODScore | None = None,
                 ood_threshold: float = 4.0):
        if isinstance(true_atoms, (str, int)):
            true_atoms = (true_atoms,)
        self.true_atoms = tuple(true_atoms)
        self.ood_score = ood_score
        self.ood_threshold = ood_threshold

    def atom_is_true(self, explanation: CounterfactualExplanation) -> list[bool]:
        names = list(explanation.atom_names)
        flags = [name in self.true_atoms or int(atom) in self.true_atoms for name, atom in zip(names, explanation.atoms)]
        wanted_names = [a for a in self.true_atoms if isinstance(a, str)]
        unknown = [a for a in wanted_names if a not in names]
        if unknown:
            warnings.warn(f"PreclusteredTeacher: true atoms {unknown} are not among the explanation's atoms {names}.", stacklevel=3)
        return flags

    def verdicts(self, explanation: CounterfactualExplanation, factual_labels: torch.Tensor) -> list[str]:
        rows = _filters(explanation, factual_labels)
        if not rows:
            return []
        _apply_ood(rows, explanation, self.ood_score, self.ood_threshold)
        flags = self.atom_is_true(explanation)
        if len(flags) != len(rows[0]):
            raise ValueError(f"The explanation names {len(flags)} atoms but has {len(rows[0])} counterfactuals per factual.")
        return [v if v is not None else (TRUE if flags[j] else FALSE) for row in rows for j, v in enumerate(row)]
