"""Shared tiny pieces for the explainer tests: 16x16 images, a transparent classifier, a tiny autoencoder."""

import torch
from torch import nn

from didae_xai.autoencoder import ConditionalUNet, DiffusionAutoencoder
from didae_xai.backbones import TimmBackbone

SIZE = 16


class RedRule(nn.Module):
    """A transparent 'student': class 1 when the image (or its top-left patch) is redder than green."""

    def __init__(self, gain: float = 20.0, patch: int | None = None):
        super().__init__()
        self.gain, self.patch = gain, patch

    def forward(self, x):
        if self.patch:
            x = x[:, :, : self.patch, : self.patch]
        score = self.gain * (x[:, 0].mean((1, 2)) - x[:, 1].mean((1, 2)))
        return torch.stack([-score, score], 1)


def images(n: int, seed: int = 0) -> torch.Tensor:
    """``n`` flat-coloured 16x16 images with a little noise, in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 1, 1, generator=g).expand(n, 3, SIZE, SIZE).clone().add_(
        0.05 * torch.randn(n, 3, SIZE, SIZE, generator=g)).clamp_(0, 1)


def tiny_backbone(seed: int = 0) -> TimmBackbone:
    torch.manual_seed(seed)
    return TimmBackbone("test_resnet", image_size=SIZE, allow_random=True)


def tiny_autoencoder(backbone: nn.Module, seed: int = 0, steps: int = 2, **unet_kwargs) -> DiffusionAutoencoder:
    """An untrained 16x16 diffusion autoencoder: enough for shapes, contracts and plumbing."""
    torch.manual_seed(seed)
    args = dict(embedding_dim=backbone.embedding_dim, sample_size=SIZE, block_out_channels=(8, 16), norm_num_groups=4)
    unet = ConditionalUNet(**{**args, **unet_kwargs})
    return DiffusionAutoencoder(backbone, unet, steps=steps, batch_size=8)


def tiny_didae(model: nn.Module, seed: int = 0):
    """A DiDAE explainer of ``model`` on the tiny autoencoder, with a red/green/blue Procrustes dictionary."""
    from didae_xai.dictionary import ProcrustesDictionary
    from didae_xai.explain import DiDAE

    ae = tiny_autoencoder(tiny_backbone(seed), seed=seed)
    x = images(64, seed=1)
    attrs = torch.stack([x[:, 0].mean((1, 2)), x[:, 1].mean((1, 2)), x[:, 2].mean((1, 2))], 1)
    dictionary = ProcrustesDictionary(["red", "green", "blue"]).fit(ae.embed(x), attrs)
    return DiDAE(model, ae, dictionary, class_names=["green", "red"]).fit(x)
