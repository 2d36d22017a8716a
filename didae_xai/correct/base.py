"""The corrector interface, the data a corrector may use, and the one evaluation every corrector gets.

A corrector takes a *student* (a :class:`~didae_xai.models.Classifier`: ``forward = head(features(x))``)
and a :class:`CorrectionData` (the poisoned training and validation splits, optionally the small
group-balanced DFR set) and returns a :class:`CorrectionResult`: a corrected model and a JSON-ready
record of what it did. Side information that only one method legitimately needs (a teacher and an
explainer for CFKD, the atoms to project out) is given to that corrector's constructor. Every corrector
states the labels it uses in ``labels_used`` so that a results table can show them.

The caller's student is never modified: correctors work on a deep copy (frozen
:class:`~didae_xai.backbones.Backbone` modules are shared, not copied: they never change).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from didae_xai.backbones.base import Backbone
from didae_xai.data.base import BenchmarkData, ImageDataset
from didae_xai.metrics.groups import gain, group_report
from didae_xai.models.inference import as_unit_float as as_input
from didae_xai.models.inference import device_of, predict_labels

#: Labels a :class:`CorrectionData` can hand out. ``group`` and ``artifact`` both read the confounder
#: label ``a`` (as group ids ``g = 2y + a`` or as artifact/clean flags); withholding one of them makes
#: the correctors that need it refuse to run.
DATA_LABELS = ("y", "group", "artifact")

#: What ``labels_used`` may hold: the data labels above plus side information given to a corrector.
KNOWN_LABELS = DATA_LABELS + ("teacher", "atom verdicts")


@dataclass
class CorrectionData:
    """The data a corrector may use.

    Attributes:
        train: the (poisoned) training split the student was trained on.
        val: the (poisoned) validation split, for model selection.
        dfr: optional small group-balanced set (DFR's; ``BenchmarkData.dfr``).
        labels: which labels correctors may read, a subset of ``("y", "group", "artifact")``. A
            corrector whose ``labels_used`` needs a withheld label raises a ``ValueError``.
    """

    train: ImageDataset
    val: ImageDataset
    dfr: ImageDataset | None = None
    labels: tuple[str, ...] = DATA_LABELS

    def __post_init__(self) -> None:
        self.labels = tuple(self.labels)
        unknown = [label for label in self.labels if label not in DATA_LABELS]
        if unknown:
            raise ValueError(f"Unknown data labels {unknown}; CorrectionData.labels is a subset of {DATA_LABELS}.")
        for name in ("train", "val"):
            ds = getattr(self, name)
            if not isinstance(ds, ImageDataset):
                raise TypeError(f"CorrectionData.{name} must be an ImageDataset, got {type(ds).__name__}.")
            if len(ds) == 0:
                raise ValueError(f"CorrectionData.{name} ({ds.name}) is empty.")
        if self.dfr is not None and not isinstance(self.dfr, ImageDataset):
            raise TypeError(f"CorrectionData.dfr must be an ImageDataset or None, got {type(self.dfr).__name__}.")

    @classmethod
    def from_benchmark(cls, bench: BenchmarkData, labels: tuple[str, ...] = DATA_LABELS) -> "CorrectionData":
        """The student's splits of a benchmark (``train``, ``val``, ``dfr``); the test set is left out."""
        return cls(train=bench.train, val=bench.val, dfr=bench.dfr, labels=labels)

    def require(self, who: str, labels_used: tuple[str, ...]) -> None:
        """Raise if ``who`` uses a data label this data withholds."""
        missing = [label for label in labels_used if label in DATA_LABELS and label not in self.labels]
        if missing:
            what = " and ".join(f"{m!r}" for m in missing)
            raise ValueError(
                f"{who} needs {what} labels, but this CorrectionData withholds them (labels={self.labels}). "
                f"Use a corrector that needs no {what} labels, or pass labels including {what}."
            )


@dataclass
class CorrectionResult:
    """What a corrector returns.

    Attributes:
        model: the corrected classifier (a new object; the student is untouched).
        record: JSON-ready description of the run (corrector, labels_used, seconds, method details).
        artifacts: objects worth keeping that are not JSON (e.g. CFKD's counterfactual dataset).
    """

    model: nn.Module
    record: dict[str, Any]
    artifacts: dict[str, Any] = field(default_factory=dict)


class Corrector:
    """Base class. Subclasses set ``name`` and ``labels_used`` and implement :meth:`_correct`.

    ``correct(student, data)`` validates the inputs, deep-copies the student, runs :meth:`_correct` on the
    copy and adds ``corrector``, ``labels_used`` and ``seconds`` to the record.
    """

    name: str = "corrector"
    labels_used: tuple[str, ...] = ("y",)

    def correct(self, student: nn.Module, data: CorrectionData) -> CorrectionResult:
        """Return a corrected copy of ``student`` and a record of what was done."""
        check_student(student)
        if not isinstance(data, CorrectionData):
            raise TypeError(f"{self.name}: data must be a CorrectionData, got {type(data).__name__}.")
        data.require(self.name, tuple(self.labels_used))
        for split in (data.train, data.val):
            check_labels(split, student.head.out_features, self.name)
        start = time.perf_counter()
        model = copy_student(student).eval()
        result = self._correct(model, data)
        result.model.eval()
        record = {"corrector": self.name, "labels_used": list(self.labels_used)}
        record.update(result.record)
        record["seconds"] = time.perf_counter() - start
        result.record = record
        return result

    def _correct(self, model: nn.Module, data: CorrectionData) -> CorrectionResult:  # pragma: no cover
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(labels_used={self.labels_used})"


# ---------------------------------------------------------------------------------------------- checks
def check_student(model: nn.Module) -> None:
    """A student must expose ``features(x)`` and a linear ``head`` (a :class:`Classifier`)."""
    head = getattr(model, "head", None)
    if not callable(getattr(model, "features", None)) or not isinstance(head, nn.Linear):
        raise TypeError(
            f"Correctors need a classifier exposing features(x) and head (an nn.Linear), as "
            f"didae_xai.models.Classifier does; got {type(model).__name__}."
        )


def check_labels(dataset: ImageDataset, num_classes: int, who: str) -> None:
    if dataset.y.min() < 0 or dataset.y.max() >= num_classes:
        raise ValueError(
            f"{who}: {dataset.name} has labels {dataset.y.unique().tolist()} but the student has {num_classes} classes."
        )


def check_confounder(dataset: ImageDataset, who: str, what: str = "group") -> None:
    """The confounder labels ``a`` must be known (0 or 1) for group/artifact methods."""
    bad = (dataset.a < 0) | (dataset.a > 1)
    if bad.any():
        raise ValueError(
            f"{who} needs {what} labels, but {int(bad.sum())} samples of {dataset.name} have an unknown "
            f"confounder label a (values {dataset.a[bad].unique().tolist()}; expected 0 or 1)."
        )


def check_groups(dataset: ImageDataset, who: str, n_groups: int = 4, min_count: int = 1) -> torch.Tensor:
    """Group counts of ``dataset`` (``g = 2y + a``); raise naming the first group with < ``min_count`` samples."""
    check_confounder(dataset, who, "group")
    counts = torch.bincount(dataset.groups, minlength=n_groups)
    if len(counts) > n_groups:
        raise ValueError(f"{who}: {dataset.name} has group ids up to {len(counts) - 1}; expected {n_groups} groups.")
    for g in range(n_groups):
        if counts[g] < min_count:
            need = "is empty" if counts[g] == 0 else f"has only {int(counts[g])} sample(s), fewer than {min_count}"
            raise ValueError(
                f"{who}: group g{g} (y={g // 2}, a={g % 2}) of {dataset.name} {need}; {who} needs samples of every group."
            )
    return counts


# -------------------------------------------------------------------------------------- model helpers
def copy_student(student: nn.Module) -> nn.Module:
    """A deep copy of ``student`` that shares (does not copy) its frozen :class:`Backbone` modules."""
    memo = {id(m): m for m in student.modules() if isinstance(m, Backbone)}
    return copy.deepcopy(student, memo)


def has_trainable_body(model: nn.Module) -> bool:
    """Whether any parameter outside ``model.head`` requires gradients (an end-to-end student)."""
    head_ids = {id(p) for p in model.head.parameters()}
    return any(p.requires_grad and id(p) not in head_ids for p in model.parameters())


def resolve_head_only(model: nn.Module, head_only: bool | None) -> bool:
    """``None``: head only for students with a frozen body (FM probes), all weights otherwise."""
    if head_only is None:
        return not has_trainable_body(model)
    if not head_only and not has_trainable_body(model):
        raise ValueError("head_only=False, but the student's body is frozen (a probe): only its head can be trained.")
    return bool(head_only)


def _images(data: ImageDataset | torch.Tensor) -> torch.Tensor:
    return data.images if isinstance(data, ImageDataset) else data


@torch.no_grad()
def features_of(model: nn.Module, data: ImageDataset | torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Penultimate features ``model.features(x)`` of a dataset (or image tensor), in eval mode."""
    images, device = _images(data), device_of(model)
    was_training = model.training
    model.eval()
    try:
        chunks = [model.features(as_input(images[i : i + batch_size]).to(device)).cpu()
                  for i in range(0, len(images), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(chunks).float() if chunks else torch.zeros(0, model.head.in_features)


@torch.no_grad()
def predict(model: nn.Module, data: ImageDataset | torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Hard predictions of ``model`` on a dataset (or image tensor), in eval mode."""
    return predict_labels(model, _images(data), batch_size)


def set_head(model: nn.Module, head: nn.Linear) -> nn.Module:
    """Replace ``model.head`` (wherever the module lives, e.g. ``model.model.fc`` in timm) by ``head``."""
    old = model.head
    for name, module in model.named_modules():
        if module is old and name:
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            setattr(parent, name.rsplit(".", 1)[-1], head)
            break
    else:  # pragma: no cover - a head that is not a registered submodule
        raise TypeError(f"Cannot replace the head of {type(model).__name__}: it is not a registered submodule.")
    config = getattr(model, "config", None)
    if isinstance(config, dict) and "bias" in config:  # keep save/load of probes consistent
        config["bias"] = head.bias is not None
    return model


# ----------------------------------------------------------------------------------------- evaluation
def evaluate(model: nn.Module, test: ImageDataset, baseline_aga: float | None = None, batch_size: int = 256) -> dict:
    """The evaluation every corrector gets, on the balanced test set.

    Returns:
        ``aga`` (average group accuracy), ``wga`` (worst group accuracy), ``accuracy`` (plain),
        ``group_accuracy`` (``g0..g3``, ``g = 2y + a``) and ``gain`` = (AGA - AGA_before) / (1 - AGA_before)
        over ``baseline_aga`` (``None`` when no baseline is given).
    """
    report = group_report(predict(model, test, batch_size), test.y, test.a)
    report["gain"] = None if baseline_aga is None else gain(report["aga"], baseline_aga)
    return report


def correct_and_evaluate(
    corrector: Corrector,
    student: nn.Module,
    data: CorrectionData,
    test: ImageDataset,
    baseline_aga: float | None = None,
) -> dict:
    """Correct, then evaluate: one row of a results table.

    Args:
        baseline_aga: AGA of the uncorrected student on ``test``; computed if ``None``.

    Returns:
        ``aga``, ``wga``, ``accuracy``, ``gain``, ``minutes`` (correction wall time), ``labels_used``,
        ``group_accuracy``, ``record`` (the corrector's record) and ``model``.
    """
    if baseline_aga is None:
        baseline_aga = evaluate(student, test)["aga"]
    result = corrector.correct(student, data)
    row = evaluate(result.model, test, baseline_aga)
    row.update(
        minutes=result.record["seconds"] / 60.0,
        labels_used=list(corrector.labels_used),
        record=result.record,
        model=result.model,
    )
    return row
