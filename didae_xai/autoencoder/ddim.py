"""Deterministic DDIM decoding and inversion (eta = 0), conditioned on z, on diffusers' DDIMScheduler.

Pure functions of tensors: images on the diffusion's ``[-1, 1]`` scale in and out, no clamping, no
gradients. The schedule is the UNet's own (:meth:`ConditionalUNet.make_scheduler`: leading spacing,
``clip_sample=False``, final alpha 1); with ``steps = K`` the decode visits the K timesteps
``t_{K-1} > ... > t_0 = 0`` (950, 900, ..., 0 for K = 20) and ends on the clean image.

Inversion is the DiffAE form ("source" timestep, the most accurate in ``references/diffae-cpu.md`` §5):
the image is taken as the state at ``t_0`` and each of the ``K - 1`` steps evaluates the model at the
*current* timestep ``t_i`` and moves to ``t_{i+1}``::

    x_{i+1} = sqrt(a_{t_{i+1}}) * x0_hat(x_i, t_i, z) + sqrt(1 - a_{t_{i+1}}) * eps_hat(x_i, t_i, z)

so ``x_T`` lands exactly on the first timestep of a decode with the same ``steps``. Decode with the
same number of steps as the inversion; other step counts start from a different noise level.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from diffusers import DDIMScheduler
from tqdm.auto import tqdm

from didae_xai.autoencoder.unet import ConditionalUNet


def _autocast(device: torch.device, enabled: bool):
    if not enabled:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def ddim_scheduler(unet: ConditionalUNet, steps: int) -> DDIMScheduler:
    """A fresh DDIM scheduler on the UNet's training schedule, set to ``steps`` inference steps."""
    limit = unet.config.num_train_timesteps
    if not 1 <= int(steps) <= limit:
        raise ValueError(f"steps must lie in [1, {limit}], got {steps}.")
    scheduler = unet.make_scheduler("ddim")
    scheduler.set_timesteps(int(steps))
    return scheduler


def model_output(
    unet: ConditionalUNet, x_t: torch.Tensor, t: torch.Tensor | int, z: torch.Tensor | None, bf16: bool = False
) -> torch.Tensor:
    """The raw network output (eps or v) in fp32; ``bf16`` runs the network under bf16 autocast."""
    with _autocast(x_t.device, bf16):
        out = unet(x_t, t, z)
    return out.float()


def split_prediction(
    unet: ConditionalUNet, output: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor | float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Convert a network output at noise level ``alpha_bar`` to ``(eps_hat, x0_hat)``."""
    a = torch.as_tensor(alpha_bar, dtype=x_t.dtype, device=x_t.device)
    if a.ndim == 1:
        a = a.view(-1, 1, 1, 1)
    sa, sb = a.sqrt(), (1 - a).sqrt()
    if unet.config.prediction_type == "v_prediction":
        return sb * x_t + sa * output, sa * x_t - sb * output
    return output, (x_t - sb * output) / sa


def predict_eps_x0(
    unet: ConditionalUNet, x_t: torch.Tensor, t: torch.Tensor | int, z: torch.Tensor | None, bf16: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(eps_hat, x0_hat)`` at training timestep(s) ``t`` whatever the prediction type (for guidance)."""
    alphas = unet.make_scheduler("ddim").alphas_cumprod.to(x_t.device)
    t_idx = torch.as_tensor(t, device=x_t.device).long()
    return split_prediction(unet, model_output(unet, x_t, t, z, bf16), x_t, alphas[t_idx])


@torch.no_grad()
def ddim_decode(
    unet: ConditionalUNet,
    x_T: torch.Tensor,
    z: torch.Tensor | None,
    steps: int = 20,
    bf16: bool = False,
    progress: bool = False,
) -> torch.Tensor:
    """Deterministic DDIM sampling (eta = 0) from ``x_T`` conditioned on ``z`` (``None``: unconditional).

    Returns the clean estimate on the ``[-1, 1]`` scale (not clamped), fp32.
    """
    scheduler = ddim_scheduler(unet, steps)
    x = x_T.float()
    for t in tqdm(scheduler.timesteps, desc="ddim decode", disable=not progress, leave=False):
        out = model_output(unet, x, t, z, bf16)
        x = scheduler.step(out, t, x, eta=0.0).prev_sample
    return x


@torch.no_grad()
def ddim_invert(
    unet: ConditionalUNet,
    x0: torch.Tensor,
    z: torch.Tensor | None,
    steps: int = 20,
    bf16: bool = False,
    progress: bool = False,
    refine: int = 0,
) -> torch.Tensor:
    """Deterministic DDIM inversion of clean images ``x0`` on ``[-1, 1]``.

    ``refine = 0`` is the DiffAE "source" form (``steps - 1`` network calls): the image is taken as the
    state at ``t_0`` and each step evaluates the model at its current timestep. ``refine = n > 0``
    then solves each step exactly for the decoder with ``n`` fixed-point iterations: the state ``x`` at
    ``t_{i+1}`` must satisfy ``ddim_step(x) = x_i``, i.e.::

        x = sqrt(a_{i+1} / a_i) * (x_i - sqrt(1 - a_i) * eps_hat(x, t_{i+1})) + sqrt(1 - a_{i+1}) * eps_hat(x, t_{i+1})

    (including the final decode step ``t_0 -> clean``), started from the source estimate; it costs
    ``(steps) * (1 + n)`` calls and recovers detail the coarse source steps lose, such as pixel noise.

    Returns ``x_T``, the state at the first timestep of a ``steps``-step :func:`ddim_decode`.
    """
    if refine < 0:
        raise ValueError(f"refine must be >= 0, got {refine}.")
    scheduler = ddim_scheduler(unet, steps)
    alphas = scheduler.alphas_cumprod.to(x0.device)
    one = torch.ones((), dtype=alphas.dtype, device=alphas.device)
    ascending = scheduler.timesteps.flip(0).tolist()
    x = x0.float()

    def solve(x_prev: torch.Tensor, a_prev: torch.Tensor, t: int, guess: torch.Tensor) -> torch.Tensor:
        a = alphas[t]
        for _ in range(refine):
            eps, _ = split_prediction(unet, model_output(unet, guess, t, z, bf16), guess, a)
            guess = (a / a_prev).sqrt() * (x_prev - (1 - a_prev).sqrt() * eps) + (1 - a).sqrt() * eps
        return guess

    if refine:  # the final decode step maps x_{t_0} to the clean image (alpha 1); invert it too
        x = solve(x, one, ascending[0], x)
    pairs = list(zip(ascending[:-1], ascending[1:]))
    for t, t_next in tqdm(pairs, desc="ddim invert", disable=not progress, leave=False):
        out = model_output(unet, x, t, z, bf16)
        eps, x0_hat = split_prediction(unet, out, x, alphas[t])
        a_next = alphas[t_next]
        guess = a_next.sqrt() * x0_hat + (1 - a_next).sqrt() * eps
        x = solve(x, alphas[t], t_next, guess) if refine else guess
    return x
