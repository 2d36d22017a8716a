"""FM-conditioned diffusion autoencoder (SPEC §2): the UNet, DDIM encode/decode and training.

- :class:`ConditionalUNet`: a diffusers ``UNet2DModel`` conditioned on a frozen backbone's embedding
  z (MLP into the time embedding + optional DiffAE-style per-block z-scale), with a learned null
  embedding for unconditional use; ``save_pretrained`` / ``from_pretrained`` (safetensors).
- :func:`ddim_invert`, :func:`ddim_decode`: deterministic (eta = 0) DDIM on the ``[-1, 1]`` scale.
- :class:`DiffusionAutoencoder`: ``encode(x) -> (z, x_T)``, ``decode(z, x_T) -> x``, images in ``[0, 1]``.
- :func:`train_autoencoder` and :data:`PRESETS`: EMA, gradient clipping, condition dropout, atomic
  resumable checkpoints; ``"square32_cpu"``, ``"square64_paper"``, ``"celeba128_paper"``.
"""

from didae_xai.autoencoder.ddim import ddim_decode, ddim_invert, ddim_scheduler, predict_eps_x0
from didae_xai.autoencoder.model import DiffusionAutoencoder
from didae_xai.autoencoder.train import (
    EMA,
    PRESETS,
    AutoencoderPreset,
    AutoencoderTrainConfig,
    get_preset,
    resume_info,
    train_autoencoder,
)
from didae_xai.autoencoder.unet import ConditionalUNet

__all__ = [
    "AutoencoderPreset",
    "AutoencoderTrainConfig",
    "ConditionalUNet",
    "DiffusionAutoencoder",
    "EMA",
    "PRESETS",
    "ddim_decode",
    "ddim_invert",
    "ddim_scheduler",
    "get_preset",
    "predict_eps_x0",
    "resume_info",
    "train_autoencoder",
]
