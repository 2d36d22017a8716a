"""Correcting shortcut learning: CFKD with teachers, projection, and the baselines, behind one interface.

Every corrector has ``name``, ``labels_used`` and ``correct(student, data) -> CorrectionResult``;
:func:`evaluate` scores any model on the balanced test set (AGA, WGA, accuracy, per-group accuracy,
Gain). Registered under the ``corrector`` kind of :mod:`didae_xai.registry`: ``erm``, ``p_clarc``,
``a_clarc``, ``rr_clarc``, ``groupdro``, ``dfr``, ``projection``, ``cfkd``.

Example:
    >>> data = CorrectionData.from_benchmark(bench)
    >>> corrector = CFKD(explainer, PreclusteredTeacher(true_atoms=("ColorA",)))
    >>> row = correct_and_evaluate(corrector, student, data, bench.test)
    >>> row["aga"], row["gain"], row["labels_used"]
"""

from didae_xai.correct.base import (
    DATA_LABELS,
    CorrectionData,
    CorrectionResult,
    Corrector,
    copy_student,
    correct_and_evaluate,
    evaluate,
    features_of,
    has_trainable_body,
    predict,
)
from didae_xai.correct.cfkd import CFKD, counterfactual_dataset, select_factuals
from didae_xai.correct.clarc import AClarc, PClarc, RRClarc
from didae_xai.correct.dfr import DFR
from didae_xai.correct.edits import (
    HeadWithFeatureEdit,
    SubspaceProjection,
    concept_direction,
    orthonormal_basis,
    project_out,
    shift_along,
)
from didae_xai.correct.erm import ERM
from didae_xai.correct.groupdro import GroupDRO
from didae_xai.correct.loop import FULL_CONFIG, HEAD_CONFIG
from didae_xai.correct.projection import Projection, atom_patterns
from didae_xai.correct.teachers import OracleTeacher, PreclusteredTeacher, Teacher, VERDICTS
from didae_xai.registry import register

__all__ = [
    "AClarc",
    "CFKD",
    "CorrectionData",
    "CorrectionResult",
    "Corrector",
    "DATA_LABELS",
    "DFR",
    "ERM",
    "FULL_CONFIG",
    "GroupDRO",
    "HEAD_CONFIG",
    "HeadWithFeatureEdit",
    "OracleTeacher",
    "PClarc",
    "PreclusteredTeacher",
    "Projection",
    "RRClarc",
    "SubspaceProjection",
    "Teacher",
    "VERDICTS",
    "atom_patterns",
    "concept_direction",
    "copy_student",
    "correct_and_evaluate",
    "counterfactual_dataset",
    "evaluate",
    "features_of",
    "has_trainable_body",
    "orthonormal_basis",
    "predict",
    "project_out",
    "select_factuals",
    "shift_along",
]

for _name, _cls in (
    ("erm", ERM),
    ("p_clarc", PClarc),
    ("a_clarc", AClarc),
    ("rr_clarc", RRClarc),
    ("groupdro", GroupDRO),
    ("dfr", DFR),
    ("projection", Projection),
    ("cfkd", CFKD),
):
    register("corrector", _name)(_cls)
