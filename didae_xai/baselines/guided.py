"""Shared machinery of the gradient-based diffusion counterfactual baselines (SPEC §7).

DiME, FastDiME and ACE all fork openai/guided-diffusion: a DDPM on a *respaced* schedule, the
posterior ``q(z_{t-1} | z_t, x0_hat)`` whose mean the classifier gradient shifts, ``q_sample`` to noise
an image to a given step, a mask from the difference between two images. This module holds those
pieces once, on the autoencoder's own UNet and diffusers' :class:`~diffusers.DDPMScheduler`:

- :class:`RespacedDDPM`: the UNet as a DDPM on ``respacing`` evenly spaced steps of its
  ``num_train_timesteps``-step training schedule (diffusers' ``set_timesteps(respacing)`` with
  "leading" spacing: for T = 1000 and 200 steps, every 5th training step, 995, 990, ..., 0). Its
  posterior coefficients are computed from ``alphas_cumprod`` with the *respaced* previous step,
  exactly as ``DDPMScheduler.step`` does (the tests check the two agree), but returned as mean and
  variance, which guidance needs. x0_hat is clipped to ``[-1, 1]`` (``clip_denoised=True`` in the
  references) and converted from the UNet's v- or eps-prediction. The variance is DDPM's fixed-small
  posterior variance (our UNet does not learn Sigma, the references' models do).
- :func:`target_loss` / :func:`classifier_gradient`: the classifier term, on images in ``[-1, 1]``
  fed to a classifier that takes ``[0, 1]`` (the mapping is inside the autograd graph, as the
  references' ``Normalizer``).
- :func:`difference_mask`: ACE / FastDiME's mask, ``sum_c |a - b|`` normalised by its per-image
  maximum, dilated by a max-pool.
- :class:`GradientCounterfactualExplainer`: the explainer interface shared with DiDAE
  (``explain -> CounterfactualExplanation`` with one counterfactual per factual, ``attribute``,
  Captum targets, chunking, timings), around each method's ``_generate``.

Conventions: images are ``[0, 1]`` at the interface and ``[-1, 1]`` inside the diffusion. The UNet's
and the classifier's parameters are never updated; gradients flow to images only.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from didae_xai.autoencoder.ddim import model_output, split_prediction
from didae_xai.explain.didae import TargetType, check_inputs, resolve_target
from didae_xai.explain.explanation import CounterfactualExplanation

CONDITIONS = ("none", "factual")
LOSSES = ("logit", "log_prob")

#: ``perceptual(x_hat, x) -> scalar`` on ``[0, 1]`` images (summed over the batch), differentiable in ``x_hat``.
PerceptualLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# ---------------------------------------------------------------------------------------------- DDPM
class RespacedDDPM:
    """The autoencoder's UNet as a DDPM on ``respacing`` evenly spaced steps (guided-diffusion style).

    Args:
        unet: the :class:`~didae_xai.autoencoder.ConditionalUNet`.
        respacing: number of respaced steps over the training schedule (200 in DiME / FastDiME, 50 in
            ACE on CelebA); ``num_train_timesteps`` must be a multiple of it.
        bf16: run the UNet under bf16 autocast (as the autoencoder does); the schedule stays fp32.

    ``calls`` counts UNet evaluations (one per batch, whatever its size).
    """

    def __init__(self, unet: nn.Module, respacing: int, bf16: bool = False):
        total = int(unet.config.num_train_timesteps)
        if not 1 <= int(respacing) <= total or total % int(respacing):
            raise ValueError(
                f"respacing must divide the {total} training steps of this UNet (e.g. 200 or 50), got {respacing}."
            )
        self.unet = unet
        self.bf16 = bool(bf16)
        self.scheduler = unet.make_scheduler("ddpm")
        self.scheduler.set_timesteps(int(respacing))
        self.respacing = int(respacing)
        self.stride = total // int(respacing)
        self.timesteps: list[int] = [int(t) for t in self.scheduler.timesteps]  # descending, ends at 0
        self._alphas = self.scheduler.alphas_cumprod.float()
        self._index = {t: i for i, t in enumerate(self.timesteps)}
        self.calls = 0

    def tail(self, n: int) -> list[int]:
        """The last ``n`` respaced timesteps, descending (``tail(60)`` = 295, 290, ..., 0 for T=1000/200)."""
        if not 1 <= int(n) <= self.respacing:
            raise ValueError(f"The number of steps must lie in [1, {self.respacing}] (the respaced schedule), got {n}.")
        return self.timesteps[-int(n):]

    def prev(self, t: int) -> int:
        """The respaced step after ``t`` in the reverse chain; ``-1`` after the last (the clean image)."""
        i = self._index[int(t)]
        return self.timesteps[i + 1] if i + 1 < len(self.timesteps) else -1

    def alpha_bar(self, t: int) -> float:
        """``alphas_cumprod[t]``; 1 for ``t = -1`` (the clean image)."""
        return 1.0 if t < 0 else float(self._alphas[int(t)])

    def q_sample(self, x0: torch.Tensor, t: int, noise: torch.Tensor) -> torch.Tensor:
        """Noise clean ``x0`` to training step ``t`` (``t = -1``: ``x0`` itself)."""
        a = self.alpha_bar(t)
        return math.sqrt(a) * x0 + math.sqrt(1 - a) * noise

    def predict_x0(self, z_t: torch.Tensor, t: int, cond: torch.Tensor | None, clip: bool = True) -> torch.Tensor:
        """The UNet's clean estimate x0_hat at step ``t`` (clipped to ``[-1, 1]``); differentiable in ``z_t``."""
        self.calls += 1
        out = model_output(self.unet, z_t, int(t), cond, self.bf16)
        _, x0 = split_prediction(self.unet, out, z_t, self.alpha_bar(t))
        return x0.clamp(-1, 1) if clip else x0

    def posterior(self, x0: torch.Tensor, z_t: torch.Tensor, t: int) -> tuple[torch.Tensor, float]:
        """Mean and (fixed-small) variance of ``q(z_prev | z_t, x0)`` with the respaced previous step."""
        a_t, a_p = self.alpha_bar(t), self.alpha_bar(self.prev(t))
        beta = 1 - a_t / a_p
        mean = (math.sqrt(a_p) * beta / (1 - a_t)) * x0 + (math.sqrt(1 - beta) * (1 - a_p) / (1 - a_t)) * z_t
        return mean, beta * (1 - a_p) / (1 - a_t)

    def step(
        self,
        z_t: torch.Tensor,
        t: int,
        cond: torch.Tensor | None,
        generator: torch.Generator | None,
        stochastic: bool = True,
        guidance: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One reverse step ``z_t -> z_prev``: mean ``- variance * guidance`` (+ sigma * noise unless
        the last step or ``stochastic=False``). Returns ``(z_prev, x0_hat)``."""
        x0 = self.predict_x0(z_t, t, cond)
        mean, var = self.posterior(x0, z_t, t)
        if guidance is not None:
            mean = mean - var * guidance
        if stochastic and self.prev(t) >= 0:
            mean = mean + math.sqrt(var) * randn_like(mean, generator)
        return mean, x0

    def sample(
        self,
        z: torch.Tensor,
        timesteps: Sequence[int],
        cond: torch.Tensor | None,
        generator: torch.Generator | None,
        stochastic: bool = True,
    ) -> torch.Tensor:
        """Run the unguided reverse chain from ``z`` (at ``timesteps[0]``) through ``timesteps`` to the clean image."""
        for t in timesteps:
            z, _ = self.step(z, t, cond, generator, stochastic)
        return z


def randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise shaped like ``x`` from ``generator`` (on ``x``'s device)."""
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


# ---------------------------------------------------------------------------------------------- losses
def to_unit(x: torch.Tensor) -> torch.Tensor:
    """``[-1, 1]`` -> ``[0, 1]`` (clamped), inside the autograd graph."""
    return (x.clamp(-1, 1) + 1) / 2


def target_loss(logits: torch.Tensor, target: torch.Tensor, kind: str = "logit") -> torch.Tensor:
    """Per-sample loss whose descent moves the classifier towards ``target`` (shape ``(N,)``).

    ``"logit"`` (DiME / FastDiME with ``use_logits=True``): for two classes minus the logit margin
    ``l_target - l_other``, which is the references' single binary logit; for more classes minus the
    target logit (their multi-class form). ``"log_prob"``: ``-log softmax(logits)[target]``, the
    cross-entropy (ACE's loss; for two classes the references' BCE-with-logits).
    """
    if kind not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {kind!r}.")
    logits = logits.float()
    target = target.long().to(logits.device)
    if kind == "log_prob":
        return F.cross_entropy(logits, target, reduction="none")
    chosen = logits.gather(1, target[:, None]).squeeze(1)
    if logits.shape[1] == 2:
        return -(chosen - logits.gather(1, (1 - target)[:, None]).squeeze(1))
    return -chosen


def classifier_gradient(
    model: nn.Module, x: torch.Tensor, target: torch.Tensor, scale: float = 1.0, loss: str = "logit"
) -> torch.Tensor:
    """``scale * d loss(model((x + 1) / 2), target) / dx`` for images ``x`` on ``[-1, 1]``.

    Every sample's gradient is its own (the loss is summed over the batch); only ``x`` gets a gradient.
    """
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        value = target_loss(model(to_unit(x_in)), target, loss)
        return torch.autograd.grad(scale * value.sum(), x_in)[0]


def perceptual_gradient(perceptual: PerceptualLoss, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Gradient of ``perceptual(x_hat01, x01)`` w.r.t. ``x_hat`` (both on ``[-1, 1]``)."""
    with torch.enable_grad():
        x_in = x_hat.detach().requires_grad_(True)
        return torch.autograd.grad(perceptual(to_unit(x_in), to_unit(x)), x_in)[0]


# ---------------------------------------------------------------------------------------------- masks
def difference_mask(a: torch.Tensor, b: torch.Tensor, dilation: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ACE / FastDiME's change mask between two ``[0, 1]`` image batches.

    ``m = sum_c |a - b|`` divided by its per-image maximum (an image with no change gets ``m = 0``),
    then dilated with a ``dilation x dilation`` max-pool (stride 1, same size).

    Returns:
        ``(m, dilated)``, both ``(N, 1, H, W)`` in ``[0, 1]``.
    """
    if dilation < 1 or dilation % 2 == 0:
        raise ValueError(f"dilation must be an odd positive integer, got {dilation}.")
    m = (a - b).abs().sum(1, keepdim=True)
    peak = m.flatten(1).max(1).values.clamp_min(1e-12).view(-1, 1, 1, 1)
    m = m / peak
    return m, F.max_pool2d(m, dilation, stride=1, padding=(dilation - 1) // 2)


def keep_mask(dilated: torch.Tensor, threshold: float) -> torch.Tensor:
    """``1`` where the dilated change is below ``threshold`` (the factual is kept), else ``0``."""
    return (dilated < threshold).float()


def check_mask_params(dilation: int, threshold: float) -> None:
    if dilation < 1 or dilation % 2 == 0:
        raise ValueError(f"dilation must be an odd positive integer, got {dilation}.")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1], got {threshold}.")


# ---------------------------------------------------------------------------------------------- output
@dataclass
class BaselineOutput:
    """What one method produced for a batch, beyond the explanation.

    Attributes:
        counterfactuals: ``(N, C, H, W)`` in ``[0, 1]``.
        edit_mask: ``(N, 1, H, W)`` in ``{0, 1}``: 1 where the counterfactual may differ from the factual
            (FastDiME's self-optimised mask, ACE's inpainting region); ``None`` for DiME (unmasked).
        soft_mask: ``(N, 1, H, W)`` in ``[0, 1]``: the normalised difference the mask was thresholded from.
        info: per-sample tensors (e.g. ``scale``: the classifier scale of the returned counterfactual;
            ``pre_explanation``: ACE's adversarial image).
        unet_calls: UNet evaluations (batched calls) spent on this batch.
    """

    counterfactuals: torch.Tensor
    edit_mask: torch.Tensor | None = None
    soft_mask: torch.Tensor | None = None
    info: dict[str, torch.Tensor] = field(default_factory=dict)
    unet_calls: int = 0


def _cat_optional(parts: list[torch.Tensor | None]) -> torch.Tensor | None:
    return None if any(p is None for p in parts) else torch.cat(parts)


def concat_outputs(parts: list[BaselineOutput]) -> BaselineOutput:
    if len(parts) == 1:
        return parts[0]
    keys = set.intersection(*(set(p.info) for p in parts))
    return BaselineOutput(
        counterfactuals=torch.cat([p.counterfactuals for p in parts]),
        edit_mask=_cat_optional([p.edit_mask for p in parts]),
        soft_mask=_cat_optional([p.soft_mask for p in parts]),
        info={k: torch.cat([p.info[k] for p in parts]) for k in sorted(keys)},
        unet_calls=sum(p.unet_calls for p in parts),
    )


@contextmanager
def eval_mode(*modules: nn.Module):
    """Put modules in eval mode for the duration, restoring their previous mode."""
    states = [m.training for m in modules]
    try:
        for m in modules:
            m.eval()
        yield
    finally:
        for m, s in zip(modules, states):
            m.train(s)


# ---------------------------------------------------------------------------------------------- explainer
class GradientCounterfactualExplainer:
    """Base of DiME, FastDiME and ACE: DiDAE's explainer interface around a method's ``_generate``.

    Each factual gets exactly one counterfactual (``K = 1``, atom name = the method's name, always
    ``movable``), so the result plugs into CFKD, the teachers and the metrics exactly as DiDAE's.

    Args:
        model: the classifier to explain; takes images in ``[0, 1]``, returns logits.
        autoencoder: a :class:`~didae_xai.autoencoder.DiffusionAutoencoder`; only its UNet (and, with
            ``condition="factual"``, its backbone) is used. Its ``bf16`` setting is honoured.
        condition: ``"none"`` (default): the UNet runs unconditionally with its learned null embedding,
            as the published methods use unconditional DDPMs; ``"factual"``: every UNet call is
            conditioned on the factual's own embedding z.
        internal_batch_size: factuals processed at a time (default: all).
        seed: seeds the sampling noise of every batch (results are reproducible).
        class_names: optional names of the model's classes, for plots.
        progress: show a progress bar over the reverse steps / attack iterations.
    """

    method = "gradient"

    def __init__(
        self,
        model: nn.Module,
        autoencoder: nn.Module,
        condition: str = "none",
        internal_batch_size: int | None = None,
        seed: int = 0,
        class_names: list[str] | None = None,
        progress: bool = False,
    ):
        if condition not in CONDITIONS:
            raise ValueError(f"condition must be one of {CONDITIONS}, got {condition!r}.")
        if not hasattr(autoencoder, "unet") or not hasattr(autoencoder, "image_size"):
            raise TypeError("autoencoder must be a DiffusionAutoencoder (with .unet, .backbone and .image_size).")
        if internal_batch_size is not None and internal_batch_size < 1:
            raise ValueError(f"internal_batch_size must be positive, got {internal_batch_size}.")
        self.model = model
        self.autoencoder = autoencoder
        self.condition = condition
        self.internal_batch_size = internal_batch_size
        self.seed = int(seed)
        self.class_names = class_names
        self.progress = progress
        self.last_output_: BaselineOutput | None = None

    # ------------------------------------------------------------------ to implement
    def _generate(
        self, x01: torch.Tensor, target: torch.Tensor, cond: torch.Tensor | None, generator: torch.Generator
    ) -> BaselineOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    # ------------------------------------------------------------------ helpers
    @property
    def device(self) -> torch.device:
        return next(self.autoencoder.unet.parameters()).device

    def _engine(self, respacing: int) -> RespacedDDPM:
        return RespacedDDPM(self.autoencoder.unet, respacing, bf16=bool(getattr(self.autoencoder, "bf16", False)))

    def _check_inputs(self, x: torch.Tensor) -> torch.Tensor:
        return check_inputs(x, self.autoencoder.image_size)

    @torch.no_grad()
    def _logits(self, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        dev = self.device
        return torch.cat([self.model(x[i : i + batch_size].to(dev)).float().cpu() for i in range(0, len(x), batch_size)])

    def _predict(self, x01: torch.Tensor) -> torch.Tensor:
        """Predictions on images already on the device (stays on the device)."""
        with torch.no_grad():
            return self.model(x01).argmax(1)

    def _cond(self, x01: torch.Tensor) -> torch.Tensor | None:
        return self.autoencoder.embed(x01).to(self.device) if self.condition == "factual" else None

    def _steps(self, iterable, desc: str):
        return tqdm(iterable, desc=f"{self.method} {desc}", disable=not self.progress, leave=False)

    # ------------------------------------------------------------------ API
    def generate(self, inputs: torch.Tensor, target: TargetType = None) -> BaselineOutput:
        """The method's raw output for a batch (counterfactuals, masks, per-sample info), on the CPU.

        Args:
            inputs: images ``(N, C, H, W)`` in ``[0, 1]``.
            target: class to reach (Captum forms); default as in :meth:`explain`.
        """
        x = self._check_inputs(inputs)
        with eval_mode(self.model):
            probs = self._logits(x).softmax(-1)
            tgt = self._resolve(target, probs)
            out = self._run(x, tgt)
        return out

    def _resolve(self, target: TargetType, probs: torch.Tensor) -> torch.Tensor:
        pred = probs.argmax(-1)
        default = 1 - pred if probs.shape[1] == 2 else probs.topk(2, -1).indices[:, 1]
        tgt = resolve_target(target, len(probs), default)
        if (tgt >= probs.shape[1]).any() or (tgt < 0).any():
            raise ValueError(f"target classes must be in [0, {probs.shape[1]}), got {tgt.unique().tolist()}.")
        return tgt

    def _run(self, x: torch.Tensor, tgt: torch.Tensor) -> BaselineOutput:
        dev = self.device
        generator = torch.Generator(device=dev).manual_seed(self.seed)
        x_dev = x.to(dev)
        out = self._generate(x_dev, tgt.to(dev), self._cond(x_dev), generator)
        out.counterfactuals = out.counterfactuals.detach().float().cpu()
        for name in ("edit_mask", "soft_mask"):
            value = getattr(out, name)
            if value is not None:
                setattr(out, name, value.detach().float().cpu())
        out.info = {k: v.detach().cpu() for k, v in out.info.items()}
        return out

    def explain(self, inputs: torch.Tensor, target: TargetType = None, atoms: Sequence[int | str] | None = None) -> CounterfactualExplanation:
        """Explain a batch: one counterfactual per input.

        Args:
            inputs: images ``(N, C, H, W)`` in ``[0, 1]``.
            target: the class to reach (Captum forms: int, list or tensor of one per input). Default:
                the other class for a binary model, the runner-up class otherwise.
            atoms: accepted for interface compatibility with DiDAE; these methods make one
                counterfactual per factual, so only ``None``, ``[0]`` or ``[<method name>]`` are valid.

        Returns:
            A :class:`~didae_xai.explain.CounterfactualExplanation` with ``K = 1`` (atom name = the
            method); the method's masks and per-sample details are kept in ``self.last_output_``.
        """
        if atoms is not None and list(atoms) not in ([0], [self.method]):
            raise ValueError(f"{self.method} makes one counterfactual per factual; atoms must be None, [0] or [{self.method!r}].")
        x = self._check_inputs(inputs)
        n = len(x)
        chunk = self.internal_batch_size or max(n, 1)
        per_sample = target is not None and not isinstance(target, int) and torch.as_tensor(target).ndim == 1
        if per_sample and len(torch.as_tensor(target)) != n:
            raise ValueError(f"target must be an int or hold one class per input ({n}), got {len(torch.as_tensor(target))}.")
        parts, outputs = [], []
        with eval_mode(self.model):
            for i in range(0, n, chunk):
                tgt_i = torch.as_tensor(target)[i : i + chunk] if per_sample else target
                exp, out = self._explain_chunk(x[i : i + chunk], tgt_i)
                parts.append(exp)
                outputs.append(out)
        self.last_output_ = concat_outputs(outputs)
        return _concat_explanations(parts)

    def _explain_chunk(self, x: torch.Tensor, target: TargetType) -> tuple[CounterfactualExplanation, BaselineOutput]:
        t0 = time.perf_counter()
        probs = self._logits(x).softmax(-1)
        pred = probs.argmax(-1)
        tgt = self._resolve(target, probs)
        t1 = time.perf_counter()
        out = self._run(x, tgt)
        t2 = time.perf_counter()
        cf_probs = self._logits(out.counterfactuals).softmax(-1)
        t3 = time.perf_counter()
        cf_pred = cf_probs.argmax(-1)
        n = len(x)
        timings = {"classify_s": t1 - t0 + t3 - t2, "generate_s": t2 - t1, "total_s": t3 - t0}
        timings["cf_per_s"] = n / timings["total_s"] if timings["total_s"] > 0 else float("inf")
        timings["unet_calls"] = float(out.unet_calls)
        exp = CounterfactualExplanation(
            factuals=x, counterfactuals=out.counterfactuals[:, None], atoms=[0], atom_names=[self.method],
            target=tgt, factual_pred=pred, factual_confidence=probs.gather(1, pred[:, None]).squeeze(1),
            cf_pred=cf_pred[:, None], cf_target_confidence=cf_probs.gather(1, tgt[:, None]),
            flipped=(cf_pred == tgt)[:, None], movable=torch.ones(n, 1, dtype=torch.bool), timings=timings,
            method=self.method, class_names=self.class_names,
        )
        return exp, out

    def attribute(self, inputs: torch.Tensor, target: TargetType = None, internal_batch_size: int | None = None) -> torch.Tensor:
        """Captum-style attribution: the counterfactual change ``x_cf - x``, shaped like ``inputs``.

        Args:
            inputs: images ``(N, C, H, W)`` in ``[0, 1]``.
            target: class to reach, in Captum's forms (int, list, tensor); default as in :meth:`explain`.
            internal_batch_size: factuals per chunk, to bound memory.
        """
        saved = self.internal_batch_size
        self.internal_batch_size = internal_batch_size or saved
        try:
            exp = self.explain(inputs, target)
        finally:
            self.internal_batch_size = saved
        delta = exp.counterfactuals[:, 0] - exp.factuals
        return delta.to(inputs.dtype if inputs.is_floating_point() else torch.float32)


def _concat_explanations(parts: list[CounterfactualExplanation]) -> CounterfactualExplanation:
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    cat = lambda name: torch.cat([getattr(p, name) for p in parts])  # noqa: E731
    timings = {key: sum(p.timings[key] for p in parts) for key in ("classify_s", "generate_s", "total_s", "unet_calls")}
    timings["cf_per_s"] = sum(len(p) for p in parts) / timings["total_s"]
    return CounterfactualExplanation(
        factuals=cat("factuals"), counterfactuals=cat("counterfactuals"), atoms=first.atoms,
        atom_names=first.atom_names, target=cat("target"), factual_pred=cat("factual_pred"),
        factual_confidence=cat("factual_confidence"), cf_pred=cat("cf_pred"),
        cf_target_confidence=cat("cf_target_confidence"), flipped=cat("flipped"), movable=cat("movable"),
        timings=timings, method=first.method, class_names=first.class_names,
    )
