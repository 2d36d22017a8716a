"""The protocol every frozen image encoder ("foundation model") follows."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

INTERPOLATIONS = ("bilinear", "bicubic")


class Backbone(nn.Module):
    """A frozen image encoder: images in [0, 1] shaped (B, 3, H, W) -> embeddings (B, embedding_dim).

    The backbone owns its preprocessing (resize to ``image_size``, then its own mean/std), so callers
    always pass raw images. Its parameters never require gradients and it stays in eval mode, even when
    a parent module calls ``.train()``; gradients still flow to the input.

    Args:
        encoder: the module mapping preprocessed pixels to embeddings.
        embedding_dim: size of one embedding.
        image_size: the square side the encoder wants; ``None`` keeps the input size.
        mean: per-channel mean of the encoder's normalisation.
        std: per-channel standard deviation of the encoder's normalisation.
        resize: resize inputs to ``image_size``; if ``False``, inputs of another size are an error.
        interpolation: ``"bilinear"`` or ``"bicubic"`` (always antialiased).

    Attributes:
        embedding_dim, image_size, in_chans (3), mean and std (buffers shaped (3,)).
    """

    in_chans: int = 3

    def __init__(
        self,
        encoder: nn.Module,
        embedding_dim: int,
        image_size: int | None = None,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
        resize: bool = True,
        interpolation: str = "bicubic",
    ):
        super().__init__()
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}; got {interpolation!r}.")
        if len(mean) != self.in_chans or len(std) != self.in_chans:
            raise ValueError(f"mean and std need {self.in_chans} values each; got {tuple(mean)} and {tuple(std)}.")
        self.encoder = encoder
        self.embedding_dim = int(embedding_dim)
        self.image_size = None if image_size is None else int(image_size)
        self.resize = resize
        self.interpolation = interpolation
        # Not persistent: the backbone's state dict is exactly the encoder's weights.
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32), persistent=False)
        self.encoder.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> Backbone:
        """Stay in eval mode whatever ``mode`` is: the encoder is frozen (no dropout, fixed BatchNorm statistics)."""
        return super().train(False)

    def check_images(self, x: torch.Tensor) -> None:
        """Raise a ValueError/TypeError naming the problem if ``x`` is not a batch of images in [0, 1]."""
        name = type(self).__name__
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} expects a torch.Tensor of images; got {type(x).__name__}.")
        if x.ndim != 4:
            raise ValueError(
                f"{name} expects a 4-D batch of images shaped (B, {self.in_chans}, H, W); got shape {tuple(x.shape)}. "
                "For a single image use x.unsqueeze(0)."
            )
        if x.shape[1] != self.in_chans:
            raise ValueError(
                f"{name} expects {self.in_chans} channels (RGB) in dimension 1; got shape {tuple(x.shape)}. "
                "Repeat a grayscale channel with x.expand(-1, 3, -1, -1), drop an alpha channel, "
                "or move channels first with x.permute(0, 3, 1, 2)."
            )
        if not x.is_floating_point():
            raise ValueError(f"{name} expects float images in [0, 1]; got dtype {x.dtype}. Convert with x.float() / 255.")
        size = self.image_size
        if not self.resize and size is not None and tuple(x.shape[-2:]) != (size, size):
            raise ValueError(
                f"{name} was built with resize=False and expects {size}x{size} images; got "
                f"{x.shape[-2]}x{x.shape[-1]}. Resize the images, or build the backbone with resize=True."
            )
        if x.numel() == 0:
            return
        values = x.detach()
        if torch.isnan(values).any():
            raise ValueError(f"{name} got images containing NaN values.")
        low, high = (v.item() for v in torch.aminmax(values))
        if low < -0.05 or high > 1.05:
            raise ValueError(
                f"{name} expects images in [0, 1]; got values in [{low:.3g}, {high:.3g}]. "
                "Pass raw images, the backbone applies its own normalisation."
            )

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Turn images in [0, 1] into the encoder's input: resize to ``image_size``, then ``(x - mean) / std``.

        Args:
            x: float images in [0, 1], shape (B, 3, H, W).

        Returns:
            The normalised pixels, shape (B, 3, image_size, image_size) (or (B, 3, H, W) without image_size).
        """
        self.check_images(x)
        size = self.image_size
        if size is not None and tuple(x.shape[-2:]) != (size, size):
            x = F.interpolate(x, size=(size, size), mode=self.interpolation, antialias=True, align_corners=False)
        mean = self.mean.to(x.dtype).view(1, -1, 1, 1)
        std = self.std.to(x.dtype).view(1, -1, 1, 1)
        return (x - mean) / std

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Run the encoder on preprocessed pixels (subclasses override it when the output needs unpacking)."""
        return self.encoder(pixels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed images in [0, 1], shape (B, 3, H, W), into (B, embedding_dim); differentiable w.r.t. ``x``."""
        return self.encode(self.preprocess(x))

    @torch.no_grad()
    def embed(self, x: torch.Tensor, batch_size: int = 256, progress: bool = False) -> torch.Tensor:
        """Embed many images in batches, without gradients.

        Args:
            x: float images in [0, 1], shape (N, 3, H, W), on any device.
            batch_size: images per forward pass.
            progress: show a tqdm progress bar.

        Returns:
            Embeddings shaped (N, embedding_dim), on the device of ``x``.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1; got {batch_size}.")
        self.check_images(x)
        device = self.mean.device
        starts = range(0, len(x), batch_size)
        chunks = [
            self(x[i : i + batch_size].to(device)).to(x.device)
            for i in tqdm(starts, desc="embedding", unit="batch", disable=not progress)
        ]
        return torch.cat(chunks) if chunks else x.new_zeros((0, self.embedding_dim))

    def extra_repr(self) -> str:
        return (
            f"embedding_dim={self.embedding_dim}, image_size={self.image_size}, resize={self.resize}, "
            f"interpolation={self.interpolation!r}"
        )
