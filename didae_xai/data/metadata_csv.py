"""Image folder + metadata CSV, the convention of the spurious-correlation benchmark suites.

Layout of a dataset folder::

    root/metadata.csv      columns id,filename,split,y,a[,factor ...]; split 0/1/2 = train/val/test
    root/images/...        the images; ``filename`` is relative to root
    root/masks/<basename>  optional foreground masks (0/255), one per image, same basename

Every extra numeric column of the CSV is read as a float factor. :func:`metadata_benchmark` turns such
a folder into a poisoned :class:`BenchmarkData`; :func:`save_image_folder` writes any
:class:`ImageDataset` in this layout.
"""

from __future__ import annotations

import csv as csvlib
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from didae_xai.data.base import BenchmarkData, ImageDataset
from didae_xai.data.poisoning import balanced_indices, poison_indices
from didae_xai.registry import register

REQUIRED_COLUMNS = ("id", "filename", "split", "y", "a")
SPLIT_NAMES = {0: "train", 1: "validation", 2: "test"}
# Split codes given inside the balanced parts, as in the Square benchmark.
GENERATOR_FRACTIONS = (0.8, 0.1, 0.1)
DFR_FRACTIONS = (0.8, 0.2)


# --------------------------------------------------------------------------------------------------
# Image I/O shared with the other datasets


def _parallel(fn: Callable[[int], None], n: int, desc: str) -> None:
    """Run ``fn(0..n-1)`` on a few threads (PIL decodes without the GIL), with a progress bar."""
    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        results = pool.map(fn, range(n))
        try:
            for _ in tqdm(results, total=n, desc=desc, leave=False):
                pass
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def _read_rgb(path: Path, image_size: int | None, center_crop: bool) -> torch.Tensor:
    with Image.open(path) as image:
        image = image.convert("RGB")
    if center_crop:
        width, height = image.size
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        image = image.crop((left, top, left + side, top + side))
    if image_size is not None and image.size != (image_size, image_size):
        # PIL's bilinear filter widens its support when shrinking, i.e. it antialiases.
        image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def load_images(
    paths: Sequence[str | Path], image_size: int | None = None, center_crop: bool = False, desc: str = "images"
) -> torch.Tensor:
    """Load image files as one ``uint8`` tensor ``(N, 3, H, W)``.

    Args:
        paths: the image files, read with PIL and converted to RGB.
        image_size: resize every image to ``image_size x image_size`` (antialiased bilinear); when
            ``None`` all images must already share one size.
        center_crop: first crop the largest centred square (178x178 for aligned CelebA).
        desc: label of the progress bar.

    Returns:
        The images, in the order of ``paths``.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("No images to load: the list of image files is empty.")
    first = _read_rgb(paths[0], image_size, center_crop)
    out = torch.empty((len(paths), *first.shape), dtype=torch.uint8)

    def fill(i: int) -> None:
        image = first if i == 0 else _read_rgb(paths[i], image_size, center_crop)
        if image.shape != first.shape:
            raise ValueError(
                f"Images differ in size: {paths[i]} is {image.shape[2]}x{image.shape[1]} but {paths[0]} is "
                f"{first.shape[2]}x{first.shape[1]} (width x height). Pass image_size=... to resize them all."
            )
        out[i] = image

    _parallel(fill, len(paths), desc)
    return out


def _load_masks(paths: Sequence[Path], image_size: int | None) -> torch.Tensor:
    """Load L-mode masks as one ``bool`` tensor ``(N, H, W)`` (pixels > 127 are foreground)."""
    masks: list[torch.Tensor | None] = [None] * len(paths)

    def fill(i: int) -> None:
        with Image.open(paths[i]) as mask:
            mask = mask.convert("L")
        if image_size is not None and mask.size != (image_size, image_size):
            mask = mask.resize((image_size, image_size), Image.Resampling.NEAREST)
        masks[i] = torch.from_numpy(np.array(mask) > 127)

    _parallel(fill, len(paths), "masks")
    shapes = {tuple(m.shape) for m in masks}
    if len(shapes) > 1:
        raise ValueError(f"Masks differ in size ({sorted(shapes)}). Pass image_size=... to resize them all.")
    return torch.stack(masks)


def check_files_exist(paths: Sequence[Path], what: str, hint: str) -> None:
    """Raise a FileNotFoundError naming the first few of ``paths`` that are not files."""
    missing = [p for p in paths if not p.is_file()]
    if missing:
        shown = ", ".join(str(p) for p in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise FileNotFoundError(f"{len(missing)} of {len(paths)} {what} do not exist: {shown}{more}. {hint}")


# --------------------------------------------------------------------------------------------------
# Balanced draws and split codes shared with the other datasets


def balanced_subset(
    y: torch.Tensor, a: torch.Tensor, n_total: int | None = None, seed: int = 0, exclude: torch.Tensor | None = None
) -> torch.Tensor:
    """A group-balanced random subset: as many per group as the smallest group allows.

    Args:
        y, a: binary task and confounder labels of the pool.
        n_total: cap on the subset size (at most ``n_total // 4`` per group); ``None`` for no cap.
        seed: seeds the choice within each group.
        exclude: optional boolean mask of pool items that must not be drawn.

    Returns:
        Sorted ``long`` indices into the pool, the same number from each of the four groups.
    """
    groups = 2 * torch.as_tensor(y, dtype=torch.long) + torch.as_tensor(a, dtype=torch.long)
    available = torch.ones_like(groups, dtype=torch.bool) if exclude is None else ~exclude.bool()
    sizes = [int(((groups == g) & available).sum()) for g in range(4)]
    per_group = min(sizes) if n_total is None else min(min(sizes), n_total // 4)
    if per_group == 0:
        raise ValueError(
            f"Cannot draw a group-balanced set: the available group sizes (g = 2y + a) are {sizes} "
            f"(n_total={n_total}). Every group needs at least one image."
        )
    return balanced_indices(y, a, per_group, seed=seed, exclude=exclude)


def split_codes_per_group(groups: torch.Tensor, fractions: Sequence[float]) -> torch.Tensor:
    """Split codes ``0, 1, ...`` in the given proportions within each group (rounded, in order).

    With ``fractions=(0.8, 0.1, 0.1)`` each group's first 80 % get code 0, the next 10 % code 1 and the
    rest code 2, so every code holds a balanced share when the groups are balanced.
    """
    codes = torch.zeros_like(groups, dtype=torch.long)
    bounds = torch.tensor(list(fractions), dtype=torch.float64).cumsum(0)[:-1]
    for g in torch.unique(groups).tolist():
        members = torch.nonzero(groups == g).flatten()
        cuts = (bounds * len(members)).round().long()
        codes[members] = (torch.arange(len(members)).unsqueeze(1) >= cuts).sum(1)
    return codes


def assemble_parts(
    full: ImageDataset, parts: dict[str, torch.Tensor], name: str
) -> dict[str, ImageDataset]:
    """Cut the parts of a benchmark out of ``full`` (which holds the union of their rows, sorted).

    Args:
        full: the loaded union of all rows, in the order of ``torch.unique(rows)``.
        parts: part name (train, val, test, dfr, generator) -> row indices (into the original table).
        name: dataset name; each part is called ``{name}_{part}``.

    Returns:
        Part name -> dataset with split codes: train 0, val 1, test 2, generator 80/10/10 and dfr
        80/20 within each group.
    """
    rows = torch.unique(torch.cat(list(parts.values())))
    position = {r: i for i, r in enumerate(rows.tolist())}
    out = {}
    for part, index in parts.items():
        subset = full.subset([position[r] for r in index.tolist()], name=f"{name}_{part}")
        if part == "generator":
            subset.with_split(split_codes_per_group(subset.groups, GENERATOR_FRACTIONS))
        elif part == "dfr":
            subset.with_split(split_codes_per_group(subset.groups, DFR_FRACTIONS))
        else:
            subset.with_split({"train": 0, "val": 1, "test": 2}[part])
        out[part] = subset
    return out


# --------------------------------------------------------------------------------------------------
# Writing


def save_image_folder(dataset: ImageDataset, root: str | Path) -> Path:
    """Write ``dataset`` as an image folder with a metadata CSV.

    Writes ``root/images/<id>.png`` (RGB, lossless), ``root/masks/<id>.png`` (L, 0/255) when the
    dataset has masks, and ``root/metadata.csv`` with columns ``id,filename,split,y,a`` followed by
    every factor in order. Factor values are written exactly (``repr`` of the float).

    Args:
        dataset: the images to write.
        root: the folder; created when missing, existing files of the same names are overwritten.

    Returns:
        ``root`` as a :class:`~pathlib.Path`.
    """
    root = Path(root)
    ids = [str(i) for i in dataset.ids]
    bad = [i for i in ids if not i or "/" in i or "\\" in i or i in (".", "..")]
    if bad:
        raise ValueError(f"Image ids are used as file names and must be non-empty without slashes; got {bad[:5]}.")
    if len(set(ids)) != len(ids):
        raise ValueError("Image ids must be unique to be used as file names; rename the duplicates first.")
    clash = [k for k in dataset.factors if k in REQUIRED_COLUMNS]
    if clash:
        raise ValueError(f"Factor names {clash} clash with the required columns {list(REQUIRED_COLUMNS)}; rename them.")

    (root / "images").mkdir(parents=True, exist_ok=True)
    images = dataset.images.permute(0, 2, 3, 1).numpy()
    def save_image(i: int) -> None:
        Image.fromarray(images[i], "RGB").save(root / "images" / f"{ids[i]}.png")

    _parallel(save_image, len(ids), "saving images")
    if dataset.masks is not None:
        (root / "masks").mkdir(exist_ok=True)
        masks = dataset.masks.bool().numpy().astype(np.uint8) * 255

        def save_mask(i: int) -> None:
            Image.fromarray(masks[i], "L").save(root / "masks" / f"{ids[i]}.png")

        _parallel(save_mask, len(ids), "saving masks")

    factor_names = list(dataset.factors)
    factor_values = [dataset.factors[k].tolist() for k in factor_names]
    y, a, split = dataset.y.tolist(), dataset.a.tolist(), dataset.split.tolist()
    fd, tmp = tempfile.mkstemp(dir=root, prefix=".metadata.", suffix=".csv.tmp")
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            writer = csvlib.writer(f)
            writer.writerow([*REQUIRED_COLUMNS, *factor_names])
            for i, id_ in enumerate(ids):
                factors = [repr(float(values[i])) for values in factor_values]
                writer.writerow([id_, f"images/{id_}.png", split[i], y[i], a[i], *factors])
        os.replace(tmp, root / "metadata.csv")
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return root


# --------------------------------------------------------------------------------------------------
# Reading


@dataclass
class _Table:
    """The parsed metadata CSV; images are loaded later, only for the rows that are needed."""

    path: Path
    ids: list[str]
    files: list[Path]
    split: torch.Tensor
    y: torch.Tensor
    a: torch.Tensor
    factors: dict[str, torch.Tensor]
    mask_dir: Path | None


def _parse_int(value: str, column: str, line: int, path: Path) -> int:
    try:
        number = float(value)
        if number.is_integer():
            return int(number)
    except ValueError:
        pass
    raise ValueError(f"{path}, line {line}: column {column!r} must hold integers, got {value!r}. Fix that row.")


def _read_table(root: str | Path, csv: str) -> _Table:
    root = Path(root)
    path = root / csv
    if not path.is_file():
        raise FileNotFoundError(
            f"No metadata CSV at {path}. An image-folder dataset needs {csv} with columns "
            f"{','.join(REQUIRED_COLUMNS)} (split 0/1/2 = train/val/test) beside its images; pass the "
            f"dataset folder as root, name another file with csv=..., or write one with save_image_folder."
        )
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csvlib.reader(f)
        header = [h.strip() for h in next(reader, [])]
        rows = [(reader.line_num, row) for row in reader if any(cell.strip() for cell in row)]
    if not header:
        raise ValueError(f"{path} is empty; it needs a header {','.join(REQUIRED_COLUMNS)} and one row per image.")
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise ValueError(
            f"{path} lacks the required column(s) {missing}; its header is {header}. "
            f"The CSV needs columns {','.join(REQUIRED_COLUMNS)}."
        )
    if not rows:
        raise ValueError(f"{path} has a header but no rows; add one row per image.")
    for line, row in rows:
        if len(row) != len(header):
            raise ValueError(f"{path}, line {line}: {len(row)} fields but the header has {len(header)}. Fix that row.")

    col = {name: j for j, name in enumerate(header)}
    ints = {
        c: torch.tensor([_parse_int(row[col[c]], c, line, path) for line, row in rows], dtype=torch.long)
        for c in ("split", "y", "a")
    }
    unknown = sorted(set(ints["split"].tolist()) - set(SPLIT_NAMES))
    if unknown:
        first = rows[int(torch.nonzero(ints["split"] == unknown[0])[0])][0]
        raise ValueError(
            f"{path}: unknown split value(s) {unknown} (first on line {first}); allowed are "
            f"0 (train), 1 (validation) and 2 (test)."
        )

    factors = {}
    for name, j in col.items():
        if name in REQUIRED_COLUMNS or not name:  # an unnamed column is a pandas index
            continue
        try:
            factors[name] = torch.tensor([float(row[j]) for _, row in rows], dtype=torch.float32)
        except ValueError:
            continue  # a non-numeric column (e.g. a place name) is not a factor

    files = [row[col["filename"]].strip() for _, row in rows]
    mask_dir = root / "masks"
    return _Table(
        path=path,
        ids=[row[col["id"]].strip() for _, row in rows],
        files=[root / f for f in files],
        split=ints["split"],
        y=ints["y"],
        a=ints["a"],
        factors=factors,
        mask_dir=mask_dir if mask_dir.is_dir() else None,
    )


def _load_rows(table: _Table, index: torch.Tensor, image_size: int | None, name: str) -> ImageDataset:
    """Load the images (and masks) of the given table rows."""
    index = torch.as_tensor(index, dtype=torch.long)
    rows = index.tolist()
    files = [table.files[i] for i in rows]
    check_files_exist(
        files,
        f"image files listed in {table.path}",
        "Check the filename column: paths are relative to the CSV's folder.",
    )
    images = load_images(files, image_size, desc=f"loading {name}")
    masks = None
    if table.mask_dir is not None:
        mask_files = [table.mask_dir / f.name for f in files]
        check_files_exist(
            mask_files,
            f"masks in {table.mask_dir}",
            "Every image needs masks/<image basename>, or remove the masks folder.",
        )
        masks = _load_masks(mask_files, image_size)
        if masks.shape[1:] != images.shape[2:]:
            raise ValueError(
                f"Masks are {tuple(masks.shape[1:])} but images {tuple(images.shape[2:])}; they must share one size."
            )
    return ImageDataset(
        images=images,
        y=table.y[index],
        a=table.a[index],
        split=table.split[index],
        factors={k: v[index] for k, v in table.factors.items()},
        masks=masks,
        ids=[table.ids[i] for i in rows],
        name=name,
    )


def load_image_folder(
    root: str | Path, csv: str = "metadata.csv", image_size: int | None = None, name: str | None = None
) -> ImageDataset:
    """Load an image folder described by a metadata CSV (the inverse of :func:`save_image_folder`).

    Args:
        root: the dataset folder; ``filename`` paths in the CSV are relative to it.
        csv: the CSV file name inside ``root``.
        image_size: resize every image to ``image_size x image_size`` (antialiased); when ``None`` all
            images must share one size.
        name: the dataset name (default: the folder name).

    Returns:
        An :class:`ImageDataset` with the CSV's ids, splits, labels and numeric extra columns as
        factors; masks from ``root/masks/<image basename>`` when that folder exists.
    """
    table = _read_table(root, csv)
    return _load_rows(table, torch.arange(len(table.ids)), image_size, name or Path(root).resolve().name)


@register("dataset", "metadata_csv")
def metadata_benchmark(
    root: str | Path,
    csv: str = "metadata.csv",
    image_size: int | None = None,
    poison: bool = True,
    n_poisoned: int = 1000,
    p: float = 0.02,
    val_fraction: float = 0.2,
    dfr_per_group: int = 10,
    n_generator: int | None = None,
    seed: int = 0,
) -> BenchmarkData:
    """Any image folder with a metadata CSV (id,filename,split,y,a), poisoned or with its own splits.

    Only the images of the selected rows are loaded.

    Args:
        root: the dataset folder holding ``csv`` and the images.
        csv: the CSV file name inside ``root``.
        image_size: resize every image to ``image_size x image_size``; ``None`` keeps the file size.
        poison: draw train/validation from the split-0 rows with the poisoned group quotas; when
            ``False`` use the CSV's own train (0) and validation (1) rows.
        n_poisoned: size of the poisoned train+validation set.
        p: confounder probability of the poisoned set (minority groups hold ``p`` of it).
        val_fraction: share of each poisoned group held out for validation.
        dfr_per_group: images per group of the DFR set, drawn from the validation (1) rows.
        n_generator: cap on the balanced generator set drawn from the train (0) rows; ``None`` takes
            as many per group as the smallest group allows.
        seed: seeds every random draw.

    Returns:
        A :class:`BenchmarkData` with task ``"y"``, confounder ``"a"`` and the CSV's numeric extra
        columns as attributes; test is every split-2 row.
    """
    table = _read_table(root, csv)
    for label, values in (("y", table.y), ("a", table.a)):
        if not set(values.tolist()) <= {0, 1}:
            found = sorted(set(values.tolist()))
            raise ValueError(f"{table.path}: a benchmark needs binary {label} (0/1), found values {found}.")
    rows = {code: torch.nonzero(table.split == code).flatten() for code in SPLIT_NAMES}
    for code, index in rows.items():
        if len(index) == 0:
            raise ValueError(
                f"{table.path} has no {SPLIT_NAMES[code]} rows (split {code}); a benchmark needs all three splits."
            )

    train_rows, val_rows = rows[0], rows[1]
    if poison:
        train, val = poison_indices(table.y[train_rows], table.a[train_rows], n_poisoned, p, val_fraction, seed=seed)
        train, val = train_rows[train], train_rows[val]
    else:
        train, val = train_rows, val_rows
    dfr = val_rows[balanced_indices(table.y[val_rows], table.a[val_rows], dfr_per_group, seed=seed + 1)]
    generator = train_rows[balanced_subset(table.y[train_rows], table.a[train_rows], n_generator, seed=seed + 2)]
    parts = {"train": train, "val": val, "test": rows[2], "dfr": dfr, "generator": generator}

    name = Path(root).resolve().name
    full = _load_rows(table, torch.unique(torch.cat(list(parts.values()))), image_size, name)
    data = assemble_parts(full, parts, name)
    return BenchmarkData(
        name=f"{name}_p{p:g}_n{n_poisoned}" if poison else name,
        generator=data["generator"],
        train=data["train"],
        val=data["val"],
        test=data["test"],
        dfr=data["dfr"],
        task="y",
        confounder="a",
        attributes=list(table.factors),
    )
