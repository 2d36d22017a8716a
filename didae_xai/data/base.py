"""The in-memory image dataset every part of the package passes around."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch.utils.data import Dataset

SPLITS = {"train": 0, "val": 1, "test": 2}


@dataclass
class ImageDataset(Dataset):
    """Images with a task label ``y``, a confounder label ``a`` and optional ground truth.

    Attributes:
        images: ``uint8`` tensor ``(N, 3, H, W)`` in ``[0, 255]``.
        y: ``long`` tensor ``(N,)``, the task label.
        a: ``long`` tensor ``(N,)``, the confounder (spurious attribute) label.
        split: ``long`` tensor ``(N,)``: 0 train, 1 validation, 2 test (the metadata-CSV convention).
        factors: name -> ``float`` tensor ``(N,)``, ground-truth factors (may be empty).
        masks: optional ``bool`` tensor ``(N, H, W)``, the foreground of each image.
        ids: one string id per image.
        name: a short human-readable name.

    ``dataset[i]`` returns ``(image, y)`` with the image as ``float32`` in ``[0, 1]``, the input
    convention of every classifier and backbone in this package.
    """

    images: torch.Tensor
    y: torch.Tensor
    a: torch.Tensor
    split: torch.Tensor | None = None
    factors: dict[str, torch.Tensor] = field(default_factory=dict)
    masks: torch.Tensor | None = None
    ids: list[str] | None = None
    name: str = "dataset"

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(
                f"{self.name}: images must be a uint8 tensor (N, 3, H, W), got {self.images.dtype} "
                f"{tuple(self.images.shape)}; convert with (x * 255).round().to(torch.uint8)."
            )
        self.y = torch.as_tensor(self.y, dtype=torch.long)
        self.a = torch.as_tensor(self.a, dtype=torch.long)
        if self.split is None:
            self.split = torch.zeros(n, dtype=torch.long)
        self.split = torch.as_tensor(self.split, dtype=torch.long)
        if self.ids is None:
            self.ids = [f"{i:06d}" for i in range(n)]
        lengths = {"y": len(self.y), "a": len(self.a), "split": len(self.split), "ids": len(self.ids)}
        lengths.update({f"factor {k}": len(v) for k, v in self.factors.items()})
        if self.masks is not None:
            lengths["masks"] = len(self.masks)
        bad = {k: v for k, v in lengths.items() if v != n}
        if bad:
            raise ValueError(f"{self.name}: {n} images but lengths differ: {bad}.")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index].float() / 255.0, self.y[index]

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    @property
    def groups(self) -> torch.Tensor:
        """Group id ``g = 2 y + a`` of every image."""
        return 2 * self.y + self.a

    def float_images(self) -> torch.Tensor:
        """All images as ``float32`` in ``[0, 1]``."""
        return self.images.float() / 255.0

    def subset(self, index: torch.Tensor | list[int], name: str | None = None) -> "ImageDataset":
        index = torch.as_tensor(index, dtype=torch.long)
        return replace(
            self,
            images=self.images[index],
            y=self.y[index],
            a=self.a[index],
            split=self.split[index],
            factors={k: v[index] for k, v in self.factors.items()},
            masks=None if self.masks is None else self.masks[index],
            ids=[self.ids[i] for i in index.tolist()],
            name=name or self.name,
        )

    def select_split(self, split: str | int) -> "ImageDataset":
        code = SPLITS[split] if isinstance(split, str) else int(split)
        index = torch.nonzero(self.split == code).flatten()
        return self.subset(index, name=f"{self.name}[{split}]")

    def with_split(self, codes: torch.Tensor | int) -> "ImageDataset":
        """Set the split code(s): one code for every image or one per image; returns ``self``."""
        self.split = torch.as_tensor(codes, dtype=torch.long).expand(len(self)).clone()
        return self

    def group_counts(self) -> dict[int, int]:
        return {g: int((self.groups == g).sum()) for g in range(4)}


def concat(datasets: list[ImageDataset], name: str) -> ImageDataset:
    """Concatenate datasets that share image size and factor names."""
    keys = set(datasets[0].factors)
    if any(set(d.factors) != keys for d in datasets):
        raise ValueError("Cannot concatenate datasets with different factor names.")
    has_masks = all(d.masks is not None for d in datasets)
    return ImageDataset(
        images=torch.cat([d.images for d in datasets]),
        y=torch.cat([d.y for d in datasets]),
        a=torch.cat([d.a for d in datasets]),
        split=torch.cat([d.split for d in datasets]),
        factors={k: torch.cat([d.factors[k] for d in datasets]) for k in keys},
        masks=torch.cat([d.masks for d in datasets]) if has_masks else None,
        ids=[i for d in datasets for i in d.ids],
        name=name,
    )


@dataclass
class BenchmarkData:
    """Everything one spurious-correlation benchmark needs, split by who may see it.

    ``generator`` is large and balanced (for the foundation model, the autoencoder and the teacher);
    ``train``/``val`` are the poisoned splits the student sees; ``test`` is scored per group; ``dfr`` is
    the small group-balanced set for DFR. ``attributes`` lists the factor names, task first.
    """

    name: str
    generator: ImageDataset
    train: ImageDataset
    val: ImageDataset
    test: ImageDataset
    dfr: ImageDataset
    task: str
    confounder: str
    attributes: list[str] = field(default_factory=list)
