"""CelebA from a local root in the torchvision layout (SPEC §8); nothing is ever downloaded.

Expected files (``root`` may also be the ``celeba`` folder itself)::

    <root>/celeba/list_attr_celeba.txt      image count, 40 attribute names, then "file v1 ... v40" (-1/1)
    <root>/celeba/list_eval_partition.txt   "file split" with split 0/1/2 = train/val/test
    <root>/celeba/img_align_celeba/*.jpg    the aligned 178x218 images

The lists are parsed first (cheap); only the images a benchmark selects are decoded.
"""

from __future__ import annotations

import difflib
import warnings
from pathlib import Path

import numpy as np
import torch

from didae_xai.data.base import BenchmarkData, ImageDataset
from didae_xai.data.metadata_csv import assemble_parts, balanced_subset, check_files_exist, load_images
from didae_xai.data.poisoning import balanced_indices, poison_indices
from didae_xai.registry import register

ATTRIBUTE_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"
IMAGE_DIR = "img_align_celeba"


def celeba_folder(root: str | Path) -> Path:
    """The folder holding the CelebA lists and images: ``root/celeba`` or ``root`` itself.

    Raises:
        FileNotFoundError: listing every expected path when a file is missing.
    """
    root = Path(root)
    expected = (ATTRIBUTE_FILE, PARTITION_FILE, IMAGE_DIR)
    for folder in (root / "celeba", root):
        if all((folder / name).exists() for name in expected):
            return folder
    folder = root / "celeba"
    listing = "\n".join(
        f"  {folder / name}{'/*.jpg' if name == IMAGE_DIR else ''}  "
        f"[{'found' if (folder / name).exists() else 'MISSING'}]"
        for name in expected
    )
    raise FileNotFoundError(
        f"CelebA not found under {root}. Expected (torchvision layout; root may also be the celeba folder):\n"
        f"{listing}\nThe data must be downloaded by you (e.g. from the CelebA website, "
        f"https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html, 'Align&Cropped Images' and the annotation lists) "
        f"and placed there; nothing is downloaded automatically."
    )


def read_attributes(path: str | Path) -> tuple[list[str], list[str], torch.Tensor]:
    """Parse ``list_attr_celeba.txt``.

    Returns:
        ``(filenames, attribute_names, values)`` with ``values`` a ``long`` tensor ``(N, 40)`` of 0/1
        (the file's -1/1).
    """
    path = Path(path)
    lines = path.read_text().splitlines()
    if len(lines) < 3:
        raise ValueError(f"{path} is too short: it needs the image count, the attribute names and one row per image.")
    try:
        count = int(lines[0].split()[0])
    except (ValueError, IndexError):
        raise ValueError(f"{path}, line 1: expected the image count, got {lines[0]!r}.") from None
    names = lines[1].split()
    rows = [line.split(None, 1) for line in lines[2:] if line.strip()]
    if count != len(rows):
        raise ValueError(
            f"{path} declares {count} images but lists {len(rows)}; the file looks truncated, replace it."
        )
    # One C-level parse of all values (a Python loop takes seconds for the 8M values); at a malformed
    # value numpy raises or (older versions) warns and stops early, and the slow path names the line.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            text = " ".join(row[1] if len(row) > 1 else "" for row in rows)
            values = np.fromstring(text, dtype=np.int8, sep=" ")
    except ValueError:
        values = np.empty(0, dtype=np.int8)
    if values.size != len(rows) * len(names):
        _raise_malformed_row(path, rows, len(names))
    values = values.reshape(len(rows), len(names))
    if not np.isin(values, (-1, 1)).all():
        raise ValueError(f"{path}: attribute values must be -1 or 1, found {np.unique(values).tolist()}.")
    return [row[0] for row in rows], names, torch.from_numpy(values > 0).long()


def _raise_malformed_row(path: Path, rows: list[list[str]], n_names: int) -> None:
    for number, row in enumerate(rows, start=3):
        values = row[1].split() if len(row) > 1 else []
        if len(values) != n_names:
            raise ValueError(f"{path}, line {number}: {len(values)} values after the file name, expected {n_names}.")
        if any(v not in ("-1", "1") for v in values):
            raise ValueError(f"{path}, line {number}: attribute values must be -1 or 1, got {' '.join(values)!r}.")
    raise ValueError(f"{path}: could not parse the attribute values.")


def read_partition(path: str | Path) -> dict[str, int]:
    """Parse ``list_eval_partition.txt`` into ``filename -> split`` (0 train, 1 val, 2 test)."""
    path = Path(path)
    partition = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise ValueError(f"{path}, line {number}: expected 'filename split' with split 0/1/2, got {line!r}.")
        partition[fields[0]] = int(fields[1])
    return partition


def read_celeba_lists(root: str | Path) -> tuple[list[str], list[str], torch.Tensor, torch.Tensor]:
    """Parse the attribute and partition lists of a local CelebA root.

    Returns:
        ``(filenames, attribute_names, attributes, partition)``: ``attributes`` is ``long (N, 40)`` in
        0/1, ``partition`` is ``long (N,)`` in 0/1/2, both in the order of the attribute file.
    """
    folder = celeba_folder(root)
    filenames, names, attributes = read_attributes(folder / ATTRIBUTE_FILE)
    split = read_partition(folder / PARTITION_FILE)
    unlisted = [f for f in filenames if f not in split]
    if unlisted:
        raise ValueError(
            f"{len(unlisted)} images of {ATTRIBUTE_FILE} are missing from {folder / PARTITION_FILE}, "
            f"e.g. {unlisted[:5]}; the two lists must describe the same images."
        )
    return filenames, names, attributes, torch.tensor([split[f] for f in filenames], dtype=torch.long)


def _attribute_index(names: list[str], name: str, role: str) -> int:
    if name in names:
        return names.index(name)
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    close += [n for n in names if n.lower() == name.lower() and n not in close]
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    raise ValueError(f"Unknown CelebA attribute {name!r} for the {role}.{hint} Known: {', '.join(names)}.")


@register("dataset", "celeba")
def celeba_benchmark(
    root: str | Path,
    image_size: int = 128,
    task: str = "Blond_Hair",
    confounder: str = "Male",
    n_poisoned: int = 1000,
    p: float = 0.02,
    val_fraction: float = 0.2,
    n_generator: int | None = 6400,
    dfr_per_group: int = 20,
    n_test: int | None = None,
    seed: int = 0,
) -> BenchmarkData:
    """CelebA (SPEC §8) from a local root: Blond_Hair with a Male shortcut by default; no download.

    Args:
        root: folder holding ``celeba/`` in the torchvision layout (or the ``celeba`` folder itself).
        image_size: output side; images are center-cropped to 178x178, then resized (antialiased).
        task, confounder: attribute names for ``y`` and ``a``.
        n_poisoned: size of the poisoned train+validation set, drawn from the train partition.
        p: confounder probability of the poisoned set (minority groups hold ``p`` of it).
        val_fraction: share of each poisoned group held out for validation.
        n_generator: size of the group-balanced generator set (train partition, poisoned images
            excluded). When the smallest group cannot fill ``n_generator // 4`` (blond men: 1387 in
            the real train partition), it is capped there with a warning; ``None`` takes that maximum.
        dfr_per_group: images per group of the DFR set, drawn from the validation partition.
        n_test: a seeded random subset of the test partition, or ``None`` for all of it (natural
            distribution; scored per group).
        seed: seeds every random draw.

    Returns:
        A :class:`BenchmarkData` whose factors are all 40 attributes as float 0/1, ``attributes``
        listing task, confounder, then the rest in file order.
    """
    folder = celeba_folder(root)
    filenames, names, attributes, partition = read_celeba_lists(folder)
    ti, ci = _attribute_index(names, task, "task"), _attribute_index(names, confounder, "confounder")
    if ti == ci:
        raise ValueError(f"task and confounder must differ, both are {task!r}.")
    y, a = attributes[:, ti], attributes[:, ci]
    rows = {code: torch.nonzero(partition == code).flatten() for code in (0, 1, 2)}

    train_rows = rows[0]
    train, val = poison_indices(y[train_rows], a[train_rows], n_poisoned, p, val_fraction, seed=seed)
    poisoned = torch.zeros(len(train_rows), dtype=torch.bool)
    poisoned[train] = poisoned[val] = True
    generator = balanced_subset(y[train_rows], a[train_rows], n_generator, seed=seed + 1, exclude=poisoned)
    if n_generator is not None and len(generator) < 4 * (n_generator // 4):
        warnings.warn(
            f"CelebA {task}/{confounder}: the smallest group of the train partition (without the poisoned "
            f"images) holds {len(generator) // 4} images, so the generator set has {len(generator)} "
            f"instead of n_generator={n_generator}.",
            stacklevel=2,
        )
    val_rows = rows[1]
    dfr = val_rows[balanced_indices(y[val_rows], a[val_rows], dfr_per_group, seed=seed + 2)]
    test = rows[2]
    if n_test is not None:
        if n_test > len(test):
            raise ValueError(f"n_test={n_test} exceeds the {len(test)} images of the test partition.")
        perm = torch.randperm(len(test), generator=torch.Generator().manual_seed(seed + 3))
        test = test[perm[:n_test]].sort().values
    parts = {
        "train": train_rows[train],
        "val": train_rows[val],
        "test": test,
        "dfr": dfr,
        "generator": train_rows[generator],
    }

    index = torch.unique(torch.cat(list(parts.values())))
    files = [folder / IMAGE_DIR / filenames[i] for i in index.tolist()]
    check_files_exist(
        files,
        f"selected images in {folder / IMAGE_DIR}",
        f"The folder must hold every image named in {ATTRIBUTE_FILE}; re-extract img_align_celeba.zip there.",
    )
    order = [ti, ci] + [j for j in range(len(names)) if j not in (ti, ci)]
    full = ImageDataset(
        images=load_images(files, image_size, center_crop=True, desc="loading CelebA"),
        y=y[index],
        a=a[index],
        split=partition[index],
        factors={names[j]: attributes[index, j].float() for j in order},
        ids=[filenames[i] for i in index.tolist()],
        name="celeba",
    )
    name = f"celeba{image_size}_{task}_{confounder}"
    data = assemble_parts(full, parts, name)
    return BenchmarkData(
        name=name,
        generator=data["generator"],
        train=data["train"],
        val=data["val"],
        test=data["test"],
        dfr=data["dfr"],
        task=task,
        confounder=confounder,
        attributes=[names[j] for j in order],
    )
