"""The FM-conditioned diffusion autoencoder (SPEC §2): ``encode(x) -> (z, x_T)``, ``decode(z, x_T) -> x``.

Ranges, once and for all:

- **images in and out** are ``float`` tensors ``(B, C, S, S)`` in ``[0, 1]`` (``uint8`` in ``[0, 255]``
  is accepted and scaled): the input convention of every backbone and classifier in this package.
  The backbone receives these ``[0, 1]`` images and applies its *own* preprocessing (SPEC §2: no
  double normalisation here);
- **z** is the raw backbone embedding ``(B, D)``; the UNet standardises it with its stored statistics;
- **x_T** is the DDIM-inverted noise on the diffusion's ``[-1, 1]`` scale (roughly unit variance,
  not exactly N(0, I));
- inside the diffusion images live in ``[-1, 1]`` (``x = 2 * image - 1``); decoded images are clamped
  back to ``[0, 1]``.

Everything is batched (``batch_size`` images at a time), deterministic (eta = 0) and gradient-free.
An image's result never depends on its batch-mates.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from didae_xai.autoencoder.ddim import ddim_decode, ddim_invert
from didae_xai.autoencoder.unet import ConditionalUNet
from didae_xai.io import load_json, save_json

CONFIG_NAME = "autoencoder.json"


class DiffusionAutoencoder(nn.Module):
    """A frozen backbone (the semantic encoder) plus a conditional DDIM decoder.

    Args:
        backbone: frozen encoder with ``embedding_dim``, ``forward(x01) -> (B, D)`` and
            ``embed(x01, batch_size) -> (N, D)``; its ``embedding_dim`` must equal the UNet's.
        unet: the trained :class:`ConditionalUNet` (use the EMA weights).
        steps: DDIM steps for inversion and decoding (20 in the reference).
        inversion_refine: fixed-point iterations per inversion step (:func:`ddim_invert`). 0 is
            DiffAE's plain inversion, which at 20 steps loses detail the model attributes to noise
            (on Square, the pixel noise: about 25 dB); 1 (default) solves each step almost exactly
            for the decoder (about 38 dB on the same model) at twice the encoding cost.
        batch_size: images per forward pass.
        bf16: run the UNet under bf16 autocast (about 2x faster on CPUs with AMX / AVX-512-BF16;
            the scheduler arithmetic stays fp32).
        progress: show a progress bar over the batches.

    Example:
        >>> ae = DiffusionAutoencoder(backbone, unet, steps=20)
        >>> z, x_T = ae.encode(images)             # images in [0, 1]
        >>> x_cf = ae.decode(z_edited, x_T)       # counterfactuals in [0, 1]
    """

    def __init__(
        self,
        backbone: nn.Module,
        unet: ConditionalUNet,
        steps: int = 20,
        inversion_refine: int = 1,
        batch_size: int = 64,
        bf16: bool = False,
        progress: bool = False,
    ):
        super().__init__()
        dim = getattr(backbone, "embedding_dim", None)
        if dim is None:
            raise TypeError("backbone must expose `embedding_dim` (the didae_xai backbone protocol).")
        if int(dim) != unet.config.embedding_dim:
            raise ValueError(
                f"The backbone's embedding_dim is {dim} but the UNet was built for embedding_dim="
                f"{unet.config.embedding_dim}; pair the UNet with the backbone it was trained on."
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}.")
        self.backbone = backbone
        self.unet = unet
        self.steps = int(steps)
        if inversion_refine < 0:
            raise ValueError(f"inversion_refine must be >= 0, got {inversion_refine}.")
        self.inversion_refine = int(inversion_refine)
        self.batch_size = int(batch_size)
        self.bf16 = bool(bf16)
        self.progress = progress
        self.backbone.requires_grad_(False)
        self.unet.requires_grad_(False)
        self.eval()

    # ------------------------------------------------------------------ helpers
    @property
    def image_size(self) -> int:
        return int(self.unet.config.sample_size)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def _images01(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.float() / 255.0
        self.unet.check_images(x)
        x = x.float()
        lo, hi = float(x.min()), float(x.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise ValueError(
                f"Images must lie in [0, 1], got values in [{lo:.3g}, {hi:.3g}]; pass images as the backbone "
                f"takes them (float in [0, 1], or uint8 in [0, 255])."
            )
        return x

    def _batches(self, n: int):
        from tqdm.auto import tqdm

        starts = range(0, n, self.batch_size)
        return tqdm(starts, desc="autoencoder", disable=not self.progress or n <= self.batch_size, leave=False)

    def _steps(self, steps: int | None) -> int:
        return self.steps if steps is None else int(steps)

    # ------------------------------------------------------------------ API
    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone embeddings ``(N, D)`` of ``[0, 1]`` images (computed in batches, no gradients)."""
        x = self._images01(x)
        if hasattr(self.backbone, "embed"):
            z = self.backbone.embed(x, self.batch_size)
        else:
            z = torch.cat([self.backbone(x[i : i + self.batch_size]) for i in range(0, len(x), self.batch_size)])
        return z.float()

    @torch.no_grad()
    def encode(
        self, x: torch.Tensor, steps: int | None = None, z: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode images into ``(z, x_T)``.

        Args:
            x: images ``(N, C, S, S)`` in ``[0, 1]``.
            steps: DDIM inversion steps (default ``self.steps``); decode with the same number.
            z: precomputed raw embeddings of ``x`` (skips the backbone).

        Returns:
            ``z`` ``(N, D)`` raw backbone embeddings and ``x_T`` ``(N, C, S, S)`` on the ``[-1, 1]`` scale.
        """
        x = self._images01(x)
        if z is None:
            z = self.embed(x)
        z = self.unet._check_embedding(z, len(x)).float()
        dev = self.device
        x_T = torch.empty_like(x)
        for i in self._batches(len(x)):
            sl = slice(i, i + self.batch_size)
            x_T[sl] = ddim_invert(
                self.unet, 2 * x[sl].to(dev) - 1, z[sl].to(dev), self._steps(steps), self.bf16, refine=self.inversion_refine
            ).cpu()
        return z, x_T

    @torch.no_grad()
    def decode(self, z: torch.Tensor | None, x_T: torch.Tensor, steps: int | None = None) -> torch.Tensor:
        """Decode ``(z, x_T)`` into images in ``[0, 1]`` (deterministic DDIM, eta = 0).

        Args:
            z: raw backbone embeddings ``(N, D)`` (edited or not), or ``None`` for the unconditional model.
            x_T: noise ``(N, C, S, S)`` from :meth:`encode` or :meth:`noise`.
            steps: DDIM steps (default ``self.steps``; use the encode's number for inverted noise).
        """
        self.unet.check_images(x_T)
        if z is not None:
            z = self.unet._check_embedding(z, len(x_T)).float()
        dev = self.device
        out = torch.empty(x_T.shape, dtype=torch.float32)
        for i in self._batches(len(x_T)):
            sl = slice(i, i + self.batch_size)
            zb = None if z is None else z[sl].to(dev)
            x = ddim_decode(self.unet, x_T[sl].to(dev), zb, self._steps(steps), self.bf16)
            out[sl] = ((x + 1) / 2).clamp(0, 1).cpu()
        return out

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, steps: int | None = None) -> torch.Tensor:
        """``decode(*encode(x))``: the round trip, images in ``[0, 1]``."""
        z, x_T = self.encode(x, steps)
        return self.decode(z, x_T, steps)

    def noise(self, n: int, seed: int = 0) -> torch.Tensor:
        """Seeded standard-normal ``x_T`` for ``n`` images (decoding from fixed noise)."""
        gen = torch.Generator().manual_seed(seed)
        c, s = self.unet.config.in_channels, self.image_size
        return torch.randn(n, c, s, s, generator=gen)

    @torch.no_grad()
    def sample(self, z: torch.Tensor | None, n: int | None = None, seed: int = 0, steps: int | None = None) -> torch.Tensor:
        """Decode ``z`` from seeded fixed noise (``z=None``: ``n`` unconditional samples)."""
        n = len(z) if z is not None else n
        if n is None:
            raise ValueError("Pass z, or n for unconditional samples.")
        return self.decode(z, self.noise(n, seed), steps)

    # ------------------------------------------------------------------ I/O
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``unet/`` (diffusers config + safetensors) and ``autoencoder.json``; not the backbone."""
        directory = Path(directory)
        self.unet.save_pretrained(directory / "unet")
        settings = {"steps": self.steps, "inversion_refine": self.inversion_refine, "batch_size": self.batch_size, "bf16": self.bf16}
        save_json(settings, directory / CONFIG_NAME)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, backbone: nn.Module, **overrides) -> "DiffusionAutoencoder":
        """Load an autoencoder saved by :meth:`save_pretrained`; pass the backbone it was trained on."""
        directory = Path(directory)
        if not (directory / "unet" / "config.json").is_file():
            raise FileNotFoundError(
                f"No diffusion autoencoder at {directory}: unet/config.json is missing. Train one with "
                f"didae_xai.autoencoder.train_autoencoder and save it with save_pretrained."
            )
        unet = ConditionalUNet.from_pretrained(directory / "unet")
        settings = load_json(directory / CONFIG_NAME) if (directory / CONFIG_NAME).is_file() else {}
        settings.update(overrides)
        return cls(backbone, unet, **settings)
