"""The Square benchmark (SPEC §8): synthetic images with known factors and a planted shortcut.

A grey frame holds a small square whose red intensity (``color_a``) is the task; the background
brightness (``color_b``) is the confounder. Geometry is given for 64x64 and scaled to any size;
intensities and noise are not scaled. Factors are balanced by the bits of the image index, exactly
as in the reference generator, so every split of a multiple of 16 images is balanced in all four
binary classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from didae_xai.data.base import BenchmarkData, ImageDataset
from didae_xai.data.poisoning import poison_indices
from didae_xai.registry import register

FACTORS = ("ClassA", "ClassB", "ClassC", "ClassD", "ColorA", "ColorB", "PositionX", "PositionY")
CLASS_FACTORS = FACTORS[:4]
CONTINUOUS_FACTORS = FACTORS[4:]
NOISE_STD = 20.0
FRAME_VALUE = 127

# Seed offsets keep the splits independent of one another for one benchmark seed.
_SPLIT_SEEDS = {"generator": 0, "poisoned": 1, "test": 2, "dfr": 3}


@dataclass(frozen=True)
class SquareGeometry:
    """Pixel geometry at one image size, scaled from the 64x64 reference (12 px frame, 2 px border)."""

    size: int
    frame: int
    border: int

    @classmethod
    def for_size(cls, size: int) -> "SquareGeometry":
        if size < 16:
            raise ValueError(f"Square images need at least 16x16 pixels, got {size}.")
        frame = max(4, round(12 * size / 64))
        border = max(1, round(2 * size / 64))
        return cls(size=size, frame=frame, border=border)

    @property
    def positions(self) -> int:
        """Number of possible frame offsets per axis: [0, size - frame) (52 at 64x64)."""
        return self.size - self.frame

    @property
    def half(self) -> int:
        """Offset threshold of ClassC/ClassD (26 at 64x64)."""
        return self.positions // 2


def sample_factors(n: int, size: int, seed: int, offset: int = 0) -> dict[str, torch.Tensor]:
    """Draw the factors of ``n`` images; the four classes follow the index bits of ``offset + i``."""
    geo = SquareGeometry.for_size(size)
    gen = torch.Generator().manual_seed(seed)
    idx = torch.arange(offset, offset + n)
    bits = [(idx >> k) & 1 for k in range(4)]  # ClassA, ClassB, ClassC, ClassD

    def level(bit: torch.Tensor) -> torch.Tensor:  # U{0..127} or U{128..255}
        return bit * 128 + torch.randint(0, 128, (n,), generator=gen)

    def offset_in(bit: torch.Tensor) -> torch.Tensor:  # [0, half) or [half, positions)
        low = bit * geo.half
        width = torch.where(bit.bool(), geo.positions - geo.half, torch.full_like(bit, geo.half))
        return low + (torch.rand(n, generator=gen) * width).long()

    color_a, color_b = level(bits[0]), level(bits[1])
    px, py = offset_in(bits[2]), offset_in(bits[3])
    return {
        "ClassA": bits[0].float(),
        "ClassB": bits[1].float(),
        "ClassC": bits[2].float(),
        "ClassD": bits[3].float(),
        "ColorA": color_a.float() / 255.0,
        "ColorB": color_b.float() / 255.0,
        "PositionX": px.float() / size,
        "PositionY": py.float() / size,
    }


def render(factors: dict[str, torch.Tensor], size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Render images from factors; returns ``(uint8 images (N,3,S,S), bool masks (N,S,S))``.

    ``PositionX`` is the row offset and ``PositionY`` the column offset of the frame, as in the
    reference generator. The mask is the inner (red) square.
    """
    geo = SquareGeometry.for_size(size)
    n = len(factors["ColorA"])
    color_a = (factors["ColorA"] * 255).round().view(n, 1, 1)
    color_b = (factors["ColorB"] * 255).round().view(n, 1, 1)
    px = (factors["PositionX"] * size).round().long().view(n, 1, 1)
    py = (factors["PositionY"] * size).round().long().view(n, 1, 1)
    if (px < 0).any() or (px >= geo.positions).any() or (py < 0).any() or (py >= geo.positions).any():
        raise ValueError(f"Square positions must lie in [0, {geo.positions}) pixels at size {size}.")
    rows = torch.arange(size).view(1, size, 1)
    cols = torch.arange(size).view(1, 1, size)

    def box(r0: torch.Tensor, c0: torch.Tensor, side: int) -> torch.Tensor:
        return (rows >= r0) & (rows < r0 + side) & (cols >= c0) & (cols < c0 + side)

    frame = box(px, py, geo.frame)
    inner = box(px + geo.border, py + geo.border, geo.frame - 2 * geo.border)
    image = color_b.expand(n, size, size).unsqueeze(1).repeat(1, 3, 1, 1)
    image = torch.where(frame.unsqueeze(1), torch.tensor(float(FRAME_VALUE)), image)
    red = torch.cat([color_a.expand(n, size, size).unsqueeze(1), torch.zeros(n, 2, size, size)], dim=1)
    image = torch.where(inner.unsqueeze(1), red, image)
    gen = torch.Generator().manual_seed(seed)
    image = image + NOISE_STD * torch.randn(image.shape, generator=gen)
    return image.clamp(0, 255).round().to(torch.uint8), inner


def square_dataset(n: int, size: int = 64, seed: int = 0, name: str = "square", offset: int = 0) -> ImageDataset:
    """``n`` balanced Square images with task ``y = ClassA`` and confounder ``a = ClassB``."""
    factors = sample_factors(n, size, seed=seed, offset=offset)
    images, masks = render(factors, size, seed=seed + 7919)
    return ImageDataset(
        images=images,
        y=factors["ClassA"].long(),
        a=factors["ClassB"].long(),
        factors=factors,
        masks=masks,
        ids=[f"{name}_{i:06d}" for i in range(n)],
        name=name,
    )


@register("dataset", "square")
def square_benchmark(
    size: int = 64,
    seed: int = 0,
    p: float = 0.02,
    n_poisoned: int = 1000,
    val_fraction: float = 0.2,
    n_generator: int = 16000,
    test_per_group: int = 400,
    dfr_size: int = 40,
) -> BenchmarkData:
    """Square (SPEC §8): red-square intensity task with a background-brightness shortcut.

    Args:
        size: image side in pixels; geometry scales from 64x64.
        seed: one seed for the whole benchmark; each split derives its own.
        p: confounder probability of the poisoned set (minority groups hold ``p`` of it).
        n_poisoned: size of the poisoned train+validation set (1000 in the reference).
        val_fraction: share of each poisoned group held out for validation.
        n_generator: size of the balanced set for the foundation model, autoencoder and teacher,
            split 80/10/10 into train/val/test codes.
        test_per_group: balanced test images per group (400 in the reference).
        dfr_size: size of the small balanced DFR set, split 80/20.

    Returns:
        A :class:`BenchmarkData` with task ``ClassA`` and confounder ``ClassB``.
    """
    if n_generator % 4 or dfr_size % 4:
        raise ValueError("n_generator and dfr_size must be multiples of 4 so every group is equally filled.")
    base = 1000 * seed

    generator = square_dataset(n_generator, size, base + _SPLIT_SEEDS["generator"], "square_generator")
    n_train = int(0.8 * n_generator)
    n_val = int(0.1 * n_generator)
    generator.with_split(torch.cat([torch.zeros(n_train), torch.ones(n_val), 2 * torch.ones(n_generator - n_train - n_val)]))

    # A balanced pool large enough for the majority quotas; poison_indices picks the groups from it.
    pool_size = 4 * ((n_poisoned + 3) // 4) * 2
    pool = square_dataset(pool_size, size, base + _SPLIT_SEEDS["poisoned"], "square_poisoned")
    train_idx, val_idx = poison_indices(pool.y, pool.a, n_poisoned, p, val_fraction, seed=base)
    train = pool.subset(train_idx, "square_train").with_split(0)
    val = pool.subset(val_idx, "square_val").with_split(1)

    test = square_dataset(4 * test_per_group, size, base + _SPLIT_SEEDS["test"], "square_test").with_split(2)
    dfr = square_dataset(dfr_size, size, base + _SPLIT_SEEDS["dfr"], "square_dfr")
    n_dfr_train = int(0.8 * dfr_size)
    dfr.with_split((torch.arange(dfr_size) >= n_dfr_train).long())
    return BenchmarkData(
        name=f"square{size}",
        generator=generator,
        train=train,
        val=val,
        test=test,
        dfr=dfr,
        task="ClassA",
        confounder="ClassB",
        attributes=list(FACTORS),
    )
