"""The trained models one benchmark run leaves in a folder, loaded back together.

The layout is the one the benchmark scripts write: ``fm/``, ``probe/``, ``resnet/``, ``teacher/``
(:func:`~didae_xai.models.save_classifier`) and ``autoencoder/``
(:meth:`~didae_xai.autoencoder.DiffusionAutoencoder.save_pretrained`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from didae_xai.models import Classifier, load_classifier


@dataclass
class SquareArtifacts:
    """The foundation model, its frozen backbone, the students, the teacher and the autoencoder."""

    fm: Classifier
    backbone: nn.Module
    students: dict[str, Classifier] = field(default_factory=dict)
    teacher: Classifier | None = None
    autoencoder: nn.Module | None = None


def load_artifacts(directory: str | Path, batch_size: int = 64) -> SquareArtifacts:
    """Load what ``directory`` holds; ``fm/`` is required, the rest is loaded when present.

    The probe student and the autoencoder share one backbone object (the FM's body), so an FM-space
    dictionary applies to the probe's features as they are.
    """
    directory = Path(directory)
    if not (directory / "fm").is_dir():
        raise FileNotFoundError(
            f"No foundation model in {directory}: expected {directory / 'fm'}. Create it with "
            f"`python benchmarks/students.py --out {directory}`."
        )
    fm = load_classifier(directory / "fm")
    backbone = fm.as_backbone()
    students = {}
    if (directory / "probe").is_dir():
        students["probe"] = load_classifier(directory / "probe", backbone=backbone)
    if (directory / "resnet").is_dir():
        students["resnet"] = load_classifier(directory / "resnet")
    teacher = load_classifier(directory / "teacher") if (directory / "teacher").is_dir() else None
    autoencoder = None
    if (directory / "autoencoder").is_dir():
        from didae_xai.autoencoder import DiffusionAutoencoder

        autoencoder = DiffusionAutoencoder.from_pretrained(directory / "autoencoder", backbone, batch_size=batch_size)
    return SquareArtifacts(fm=fm, backbone=backbone, students=students, teacher=teacher, autoencoder=autoencoder)
