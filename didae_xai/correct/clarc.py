"""The ClArC family on the penultimate features ``h`` (SPEC §6; baselines.md C.1).

All three use the *pattern* concept direction (CAV) ``v``: the normalised mean difference of the
features of artifact vs clean training samples (the confounder label ``a`` is the artifact label). By
default it is estimated within each class and averaged (``scope="per_class"``), so that a confounder
correlated with the label does not drag the class direction into ``v``.

- **P-ClArC** (projective, post hoc): at inference ``h <- h + v (v^T z_clean - v^T h)``, with
  ``v^T z_clean`` the mean of ``v^T h`` over clean samples. No training.
- **A-ClArC** (augmentative): the same projection toward the *artifact* mean (it adds the artifact to
  every sample) while the last layer is fine-tuned with cross-entropy, so the head learns to do
  without ``v``; the projection stays in the model at evaluation, as in the reference code.
- **RR-ClArC** (right reason): fine-tune the last layer with
  ``CE + lam * mean((d y_hat / d h . v)^2)``, ``y_hat = sum_k s_k logit_k`` with random signs
  ``s_k = +-1`` per sample and class (the reference's ``all_logits_random``, ``l2_mean``).

For every student kind only the last linear layer trains (the reference freezes every conv/BN layer,
which for a ResNet-18 leaves exactly its final ``fc``), on features precomputed once with the frozen body.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from didae_xai.correct.base import CorrectionData, CorrectionResult, Corrector, check_confounder, device_of, features_of
from didae_xai.correct.edits import HeadWithFeatureEdit, SubspaceProjection, concept_direction
from didae_xai.correct.loop import HEAD_CONFIG, train_loop
from didae_xai.models.training import TrainConfig


class _ClarcBase(Corrector):
    def __init__(self, scope: str | int = "per_class", artifact_value: int = 1):
        if not (scope in ("all", "per_class") or isinstance(scope, int)):
            raise ValueError(f"scope must be 'all', 'per_class' or a class index, got {scope!r}.")
        self.scope = scope
        self.artifact_value = int(artifact_value)
        self.labels_used = ("artifact",) if scope == "all" else ("y", "artifact")

    def concept(self, model: nn.Module, data: CorrectionData) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Training features ``h``, the unit concept direction ``v`` and its info (clean/artifact means)."""
        check_confounder(data.train, self.name, "artifact")
        h = features_of(model, data.train)
        artifact = data.train.a == self.artifact_value
        v, info = concept_direction(h, artifact, data.train.y, self.scope)
        info.update(scope=self.scope if isinstance(self.scope, str) else int(self.scope),
                    n_artifact=int(artifact.sum()), n_clean=int((~artifact).sum()))
        return h, v, info


def _class_weights(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    counts = torch.bincount(y, minlength=num_classes).float()
    return torch.where(counts > 0, len(y) / (num_classes * counts.clamp_min(1)), torch.zeros_like(counts))


def gradient_along(head: nn.Linear, v: torch.Tensor) -> float:
    """RMS over random signs of ``(d y_hat / d h) . v`` for a linear head: ``sqrt(sum_k (W_k . v)^2)``."""
    with torch.no_grad():
        return (head.weight @ v.to(head.weight)).norm().item()


class PClarc(_ClarcBase):
    """P-ClArC: move every sample to the clean mean along the artifact direction, at inference.

    Args:
        scope: where the concept direction is estimated: ``"per_class"`` (default), ``"all"`` or a class.
        artifact_value: the value of ``a`` marking artifact samples (the rest are clean).
    """

    name = "p_clarc"

    def _correct(self, model: nn.Module, data: CorrectionData) -> CorrectionResult:
        _, v, info = self.concept(model, data)
        edit = SubspaceProjection(v, torch.tensor([info["clean_mean"]]))
        record = {"trained": "nothing", "reference": "clean mean", **info}
        return CorrectionResult(HeadWithFeatureEdit(model, edit), record, {"direction": v})


class AClarc(_ClarcBase):
    """A-ClArC: fine-tune the last layer on features moved to the artifact mean along the artifact direction.

    Args:
        scope, artifact_value: as :class:`PClarc`.
        config: the head's training recipe (default :data:`~didae_xai.correct.loop.HEAD_CONFIG`);
            the last epoch is kept (no selection, as the reference's fixed-epoch fine-tuning).
        keep_at_eval: keep the projection in the corrected model (the reference keeps its hook).
    """

    name = "a_clarc"

    def __init__(self, scope: str | int = "per_class", artifact_value: int = 1, config: TrainConfig | None = None,
                 keep_at_eval: bool = True, progress: bool = True):
        super().__init__(scope, artifact_value)
        self.config = config or HEAD_CONFIG
        self.keep_at_eval = keep_at_eval
        self.progress = progress

    def _correct(self, model: nn.Module, data: CorrectionData) -> CorrectionResult:
        h, v, info = self.concept(model, data)
        edit = SubspaceProjection(v, torch.tensor([info["artifact_mean"]]))
        with torch.no_grad():
            e = edit(h)
        y = data.train.y
        head = copy.deepcopy(model.head).requires_grad_(True)
        cw = _class_weights(y, head.out_features)

        device = device_of(head)
        cw = cw.to(device)

        def batch_loss(idx: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(head(e[idx].to(device)), y[idx].to(device), weight=cw)

        history = train_loop(head, head.parameters(), len(e), batch_loss, self.config, desc="A-ClArC", progress=self.progress)
        corrected = HeadWithFeatureEdit(model, edit if self.keep_at_eval else None, head=head)
        record = {"trained": "head", "reference": "artifact mean", "keep_at_eval": self.keep_at_eval,
                  "epochs": self.config.epochs, "final_loss": history["loss"][-1], **info}
        return CorrectionResult(corrected, record, {"direction": v})


class RRClarc(_ClarcBase):
    """RR-ClArC: fine-tune the last layer with a penalty on the output gradient along the artifact direction.

    Args:
        lam: weight of the penalty.
        criterion: ``"all_logits_random"`` (sum of logits with random signs, the default),
            ``"all_logits"`` (plain sum) or ``"target_logit"``.
        compute: ``"l2"`` (``mean (g . v)^2``, SPEC §6) or ``"cosine"`` (``mean |cos(g, v)|``).
        scope, artifact_value: as :class:`PClarc`.
        config: the head's recipe (default :data:`~didae_xai.correct.loop.HEAD_CONFIG`); last epoch kept.
    """

    name = "rr_clarc"

    def __init__(self, lam: float = 100.0, criterion: str = "all_logits_random", compute: str = "l2",
                 scope: str | int = "per_class", artifact_value: int = 1, config: TrainConfig | None = None,
                 progress: bool = True):
        super().__init__(scope, artifact_value)
        if criterion not in ("all_logits_random", "all_logits", "target_logit"):
            raise ValueError(f"Unknown criterion {criterion!r}; use 'all_logits_random', 'all_logits' or 'target_logit'.")
        if compute not in ("l2", "cosine"):
            raise ValueError(f"Unknown compute {compute!r}; use 'l2' or 'cosine'.")
        if lam < 0:
            raise ValueError(f"lam must be non-negative, got {lam}.")
        self.lam, self.criterion, self.compute = float(lam), criterion, compute
        self.config = config or HEAD_CONFIG
        self.progress = progress

    def penalty(self, head: nn.Module, h: torch.Tensor, y: torch.Tensor, v: torch.Tensor,
                gen: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and the right-reason penalty of one batch (differentiable w.r.t. the head)."""
        h = h.detach().requires_grad_(True)
        logits = head(h)
        if self.criterion == "all_logits_random":
            signs = torch.randint(0, 2, logits.shape, generator=gen).to(logits) * 2 - 1
            y_hat = (logits * signs).sum()
        elif self.criterion == "all_logits":
            y_hat = logits.sum()
        else:
            y_hat = logits.gather(1, y[:, None]).sum()
        g = torch.autograd.grad(y_hat, h, create_graph=True)[0]
        gv = g @ v.to(g)
        if self.compute == "l2":
            pen = (gv**2).mean()
        else:
            pen = (gv.abs() / g.norm(dim=1).clamp_min(1e-12)).mean()
        return logits, pen

    def _correct(self, model: nn.Module, data: CorrectionData) -> CorrectionResult:
        h, v, info = self.concept(model, data)
        y = data.train.y
        head = model.head
        head.requires_grad_(True)
        before = gradient_along(head, v)
        cw = _class_weights(y, head.out_features)
        gen = torch.Generator().manual_seed(self.config.seed + 1)

        device = device_of(head)
        cw = cw.to(device)

        def batch_loss(idx: torch.Tensor) -> torch.Tensor:
            logits, pen = self.penalty(head, h[idx].to(device), y[idx].to(device), v, gen)
            return F.cross_entropy(logits, y[idx].to(device), weight=cw) + self.lam * pen

        history = train_loop(head, head.parameters(), len(h), batch_loss, self.config, desc="RR-ClArC", progress=self.progress)
        record = {"trained": "head", "lam": self.lam, "criterion": self.criterion, "compute": self.compute,
                  "epochs": self.config.epochs, "final_loss": history["loss"][-1],
                  "gradient_along_v_before": before, "gradient_along_v_after": gradient_along(head, v), **info}
        return CorrectionResult(model, record, {"direction": v})
