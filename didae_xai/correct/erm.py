"""ERM: no correction. The uncorrected student, evaluated like every corrected one."""

from __future__ import annotations

from torch import nn

from didae_xai.correct.base import CorrectionData, CorrectionResult, Corrector


class ERM(Corrector):
    """No correction: returns (a copy of) the student trained with empirical risk minimisation on ``y``."""

    name = "erm"
    labels_used = ("y",)

    def _correct(self, model: nn.Module, data: CorrectionData) -> CorrectionResult:
        return CorrectionResult(model, {"trained": "nothing"})
