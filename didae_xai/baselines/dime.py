"""DiME: Diffusion Models for Counterfactual Explanations (Jeanneret et al., ACCV 2022), on our UNet.

The algorithm (reference ``guillaumejs2403/DiME``, ``core/sample_utils.py``; SPEC §7):

1. noise the factual x to the first of the last ``tau`` respaced steps: ``z = q_sample(x, t_tau)``;
2. for each reverse step t: the posterior mean ``mu`` of ``q(z_{t-1} | z_t, x0_hat)`` is shifted by
   ``- Sigma_t * g`` with ``g = grad_x L_cls(x_t) / sqrt(alpha_bar_t) + lambda_1 * sign(z_t - x)``,
   where ``x_t`` is the current *clean estimate*; ``z_{t-1} = mu' + sigma_t * eps``;
3. DiME's clean estimate: run the *unguided* reverse chain from ``z_{t-1}`` all the way to 0. This
   nested chain makes the cost quadratic in tau: ``tau (tau + 1) / 2`` UNet calls per classifier scale;
4. classifier scales are tried in turn (8, 10, 15): factuals not flipped yet are regenerated from the
   same ``z_tau`` with the next scale; a factual never flipped keeps the last attempt.

Defaults follow the published CelebA setting: tau = 60 of 200 respaced steps (our UNet has T = 1000
training steps, so 200 respaced steps are every 5th training step and the chain starts at training
step 295, the same noise level, ``alpha_bar ~ 0.4``, as the reference's 60/200 of T = 500), scales
8, 10, 15, L1 weight 0.05 on the noisy image, ``use_logits=True``, stochastic sampling of the clean
estimate. The reference's VGG-19 perceptual term (weight 30) needs ImageNet weights we cannot have;
by default nothing replaces it (the L1 term is the only distance term, as in SPEC §7 "where a
perceptual network exists"); pass ``perceptual=`` any differentiable ``(x_hat01, x01) -> scalar``
built on weights you do have.

:class:`GuidedDiffusionCounterfactual` is the loop DiME and FastDiME share; they differ only in the
clean estimate (:meth:`~GuidedDiffusionCounterfactual._clean_estimate`), in whether the gradients
are divided by ``sqrt(alpha_bar_t)`` and in FastDiME's masking (:mod:`didae_xai.baselines.fastdime`).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from didae_xai.baselines.guided import (
    LOSSES,
    BaselineOutput,
    GradientCounterfactualExplainer,
    PerceptualLoss,
    RespacedDDPM,
    classifier_gradient,
    perceptual_gradient,
    randn_like,
    to_unit,
)

#: The classifier scales of the DiME / FastDiME / ACE papers (tuned for a DenseNet on CelebA 128x128).
PUBLISHED_SCALES: tuple[float, ...] = (8.0, 10.0, 15.0)
#: The published scales continued (about x1.5 each) for classifiers whose boundary they do not reach. On
#: Square 32x32 the poisoned ResNet-18's shortcut is the whole background, and the per-pixel pull of the
#: classifier gradient there is about that of the L1 term at scale 15: with the published scales FastDiME
#: flips 19-44 % of the factuals, with these 88-100 % (the benchmarks' figures, docs/benchmarks.rst).
EXTENDED_SCALES: tuple[float, ...] = PUBLISHED_SCALES + (20.0, 30.0, 50.0)


def check_scales(scales: Sequence[float]) -> list[float]:
    """Classifier scales as floats, in the given order; non-empty, finite, positive and distinct."""
    values = [float(s) for s in scales]
    if not values or any(not math.isfinite(v) or v <= 0 for v in values) or len(set(values)) != len(values):
        raise ValueError(f"scales must be distinct positive finite classifier scales tried in turn (e.g. 8, 10, 15), "
                         f"got {list(scales)}.")
    return values


def parse_scales(text: str) -> list[float]:
    """Classifier scales from a comma-separated string such as ``"8,10,15"`` (the command lines'
    ``--guidance-scales`` / ``--scales``), checked by :func:`check_scales`."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"scales must be comma-separated numbers such as 8,10,15, got {text!r}.") from None
    return check_scales(values)


class GuidedDiffusionCounterfactual(GradientCounterfactualExplainer):
    """The DiME-family loop: classifier-guided DDPM from the noised factual, classifier scales in turn.

    Args:
        model, autoencoder, condition, internal_batch_size, seed, class_names, progress: see
            :class:`~didae_xai.baselines.guided.GradientCounterfactualExplainer`.
        tau: reverse steps from the noised factual (60 of ``respacing``).
        respacing: respaced steps over the UNet's training schedule (200).
        scales: classifier scales, tried in turn until the prediction flips
            (:data:`~didae_xai.baselines.dime.PUBLISHED_SCALES`: 8, 10, 15;
            :data:`~didae_xai.baselines.dime.EXTENDED_SCALES` continues them to 50 for classifiers the
            published ones cannot flip).
        l1_weight: weight of ``||z_t - x||_1`` (0.05).
        loss: ``"logit"`` (the references' ``use_logits=True``) or ``"log_prob"``
            (see :func:`~didae_xai.baselines.guided.target_loss`).
        perceptual: optional perceptual loss on ``[0, 1]`` images ``(x_hat, x) -> scalar``; ``None`` by
            default (the reference's VGG-19 needs pretrained weights).
        perceptual_weight: its weight (30 in the references).
        stochastic: sample ``z_{t-1} = mu + sigma * eps`` (and stochastic nested chains for DiME);
            ``False`` uses the means.
    """

    method = "guided"
    #: divide the classifier (and perceptual) gradient by sqrt(alpha_bar_t): DiME yes, FastDiME no.
    scale_gradients = True

    def __init__(
        self,
        model: nn.Module,
        autoencoder: nn.Module,
        tau: int = 60,
        respacing: int = 200,
        scales: Sequence[float] = PUBLISHED_SCALES,
        l1_weight: float = 0.05,
        loss: str = "logit",
        perceptual: PerceptualLoss | None = None,
        perceptual_weight: float = 30.0,
        stochastic: bool = True,
        **kwargs,
    ):
        super().__init__(model, autoencoder, **kwargs)
        self.scales = check_scales(scales)
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}.")
        if l1_weight < 0:
            raise ValueError(f"l1_weight must be >= 0, got {l1_weight}.")
        self.tau, self.respacing = int(tau), int(respacing)
        self._engine(self.respacing).tail(self.tau)  # validates tau and respacing now
        self.l1_weight = float(l1_weight)
        self.loss = loss
        self.perceptual, self.perceptual_weight = perceptual, float(perceptual_weight)
        self.stochastic = bool(stochastic)

    def flip_rate_by_scale(self) -> dict[str, float]:
        """Share of the last :meth:`explain`'s factuals flipped at each classifier scale or an earlier one.

        Cumulative: the value at the last scale is the flip rate; the value at 15 is what the published
        scales alone give (the scales run in turn from the same noised factual, so a longer list only
        adds attempts for the factuals not flipped yet).
        """
        if self.last_output_ is None:
            raise RuntimeError("Call explain() first: the flip rate by scale is that of the last explanation.")
        used, flipped = self.last_output_.info["scale"], self.last_output_.info["flipped"]
        # By position in the list, not by value: the scales need not be ascending.
        return {f"{s:g}": (flipped & torch.isin(used, torch.tensor(self.scales[: i + 1], dtype=used.dtype))).float().mean().item()
                for i, s in enumerate(self.scales)}

    # ------------------------------------------------------------------ hooks
    def _clean_estimate(
        self, engine: RespacedDDPM, z_prev: torch.Tensor, x0_hat: torch.Tensor, remaining: list[int],
        cond: torch.Tensor | None, generator: torch.Generator,
    ) -> torch.Tensor:
        """DiME: the unguided chain from ``z_prev`` (at ``remaining[0]``) to the clean image."""
        if not remaining:
            return x0_hat
        return engine.sample(z_prev, remaining, cond, generator, self.stochastic)

    def _mask(
        self, step: int, engine: RespacedDDPM, x: torch.Tensor, x_clean: torch.Tensor, z_prev: torch.Tensor,
        t_prev: int, generator: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Masking after a step; DiME has none. Returns ``(x_clean, z_prev, keep, soft)``."""
        return x_clean, z_prev, None, None

    # ------------------------------------------------------------------ the loop
    def _guidance(self, x: torch.Tensor, z_t: torch.Tensor, x_clean: torch.Tensor, target: torch.Tensor,
                  scale: float, alpha_bar: float) -> torch.Tensor:
        g = classifier_gradient(self.model, x_clean, target, scale, self.loss)
        if self.perceptual is not None and self.perceptual_weight:
            g = g + self.perceptual_weight * perceptual_gradient(self.perceptual, x_clean, x)
        if self.scale_gradients:
            g = g / math.sqrt(alpha_bar)
        if self.l1_weight:
            g = g + self.l1_weight * torch.sign(z_t - x)  # d/dz of l1 * sum ||z - x||_1
        return g

    @torch.no_grad()
    def _chain(self, engine: RespacedDDPM, x: torch.Tensor, z: torch.Tensor, target: torch.Tensor, scale: float,
               cond: torch.Tensor | None, generator: torch.Generator):
        """One guided reverse chain from ``z`` (= z_tau) at one classifier scale, on ``[-1, 1]``."""
        timesteps = engine.tail(self.tau)
        x_clean, keep, soft = x, None, None  # the reference starts the clean estimate at the factual
        for i in self._steps(range(len(timesteps)), f"scale {scale:g}"):
            t = timesteps[i]
            guidance = self._guidance(x, z, x_clean, target, scale, engine.alpha_bar(t))
            z, x0_hat = engine.step(z, t, cond, generator, self.stochastic, guidance)
            x_clean = self._clean_estimate(engine, z, x0_hat, timesteps[i + 1 :], cond, generator)
            x_clean, z, keep_i, soft_i = self._mask(i, engine, x, x_clean, z, engine.prev(t), generator)
            if keep_i is not None:
                keep, soft = keep_i, soft_i
        return z, keep, soft

    def _generate(self, x01: torch.Tensor, target: torch.Tensor, cond: torch.Tensor | None,
                  generator: torch.Generator) -> BaselineOutput:
        engine = self._engine(self.respacing)
        x = 2 * x01 - 1
        z_tau = engine.q_sample(x, engine.tail(self.tau)[0], randn_like(x, generator))
        n = len(x)
        out = x01.clone()
        edit = torch.zeros(n, 1, *x.shape[2:], device=x.device)
        soft = torch.zeros_like(edit)
        masked = False
        scale_used = torch.full((n,), float("nan"), device=x.device)
        done = torch.zeros(n, dtype=torch.bool, device=x.device)
        for scale in self.scales:
            rows = (~done).nonzero().flatten()
            if len(rows) == 0:
                break
            sub = None if cond is None else cond[rows]
            z0, keep, soft_r = self._chain(engine, x[rows], z_tau[rows], target[rows], scale, sub, generator)
            cf = to_unit(z0)
            if keep is not None:  # exactly the factual outside the mask (composed on the [0, 1] scale)
                cf = cf * (1 - keep) + keep * x01[rows]
                edit[rows], soft[rows], masked = 1 - keep, soft_r, True
            out[rows] = cf
            scale_used[rows] = scale
            done[rows] = self._predict(cf) == target[rows]
        return BaselineOutput(
            counterfactuals=out, edit_mask=edit if masked else None, soft_mask=soft if masked else None,
            info={"scale": scale_used, "flipped": done}, unet_calls=engine.calls,
        )


class DiME(GuidedDiffusionCounterfactual):
    """DiME counterfactuals on the diffusion autoencoder's UNet (quadratic cost in ``tau``).

    Same arguments and defaults as :class:`GuidedDiffusionCounterfactual` (tau = 60 of 200 respaced
    steps, scales 8, 10, 15, L1 weight 0.05, no perceptual network by default). One counterfactual per
    factual; ``tau (tau + 1) / 2`` batched UNet calls per classifier scale (1830 for tau = 60).

    Example:
        >>> explainer = DiME(student, autoencoder)
        >>> explanation = explainer.explain(images)          # K = 1 counterfactual per image
        >>> delta = explainer.attribute(images, target=1)    # x_cf - x, shaped like images
    """

    method = "dime"
    scale_gradients = True
