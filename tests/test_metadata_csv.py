import os

os.environ["HF_HUB_OFFLINE"] = "1"

import csv  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from didae_xai import registry  # noqa: E402
from didae_xai.data.base import ImageDataset  # noqa: E402
from didae_xai.data.metadata_csv import (  # noqa: E402
    load_image_folder,
    metadata_benchmark,
    save_image_folder,
    split_codes_per_group,
)
from didae_xai.data.poisoning import group_quotas  # noqa: E402


def make_dataset(per_group_split: dict[int, int], size: int = 8, seed: int = 0) -> ImageDataset:
    """Random images with ``per_group_split[code]`` images per group in each split code."""
    gen = torch.Generator().manual_seed(seed)
    groups = torch.cat([torch.arange(4).repeat_interleave(n) for n in per_group_split.values()])
    split = torch.cat([torch.full((4 * n,), code) for code, n in per_group_split.items()])
    n = len(groups)
    return ImageDataset(
        images=torch.randint(0, 256, (n, 3, size, size), generator=gen, dtype=torch.uint8),
        y=groups // 2,
        a=groups % 2,
        split=split,
        factors={"ColorA": torch.rand(n, generator=gen), "Position": torch.randint(0, 2, (n,), generator=gen).float()},
        masks=torch.rand(n, size, size, generator=gen) > 0.5,
        ids=[f"img{i:04d}" for i in range(n)],
        name="synthetic",
    )


def rewrite_csv(root, edit):
    """Apply ``edit(header, rows) -> (header, rows)`` to root/metadata.csv."""
    with open(root / "metadata.csv", newline="") as f:
        header, *rows = list(csv.reader(f))
    header, rows = edit(header, rows)
    with open(root / "metadata.csv", "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    # Split 0 holds 45 per group: enough for the 40-image majority quota of n_poisoned=100, p=0.2.
    source = make_dataset({0: 45, 1: 5, 2: 3})
    root = save_image_folder(source, tmp_path_factory.mktemp("folder") / "toy")
    return root, source


def test_save_writes_the_convention(folder):
    root, source = folder
    with open(root / "metadata.csv", newline="") as f:
        header, first = list(csv.reader(f))[:2]
    assert header == ["id", "filename", "split", "y", "a", "ColorA", "Position"]
    assert first[:5] == ["img0000", "images/img0000.png", "0", "0", "0"]
    assert Image.open(root / "images/img0000.png").mode == "RGB"
    mask = Image.open(root / "masks/img0000.png")
    assert mask.mode == "L" and set(np.unique(np.array(mask)).tolist()) == {0, 255}
    assert not list(root.glob("*.tmp"))


def test_round_trip_is_exact(folder):
    root, source = folder
    loaded = load_image_folder(root)
    assert loaded.name == "toy"
    assert loaded.ids == source.ids
    for key in ("images", "y", "a", "split", "masks"):
        assert torch.equal(getattr(loaded, key), getattr(source, key)), key
    assert list(loaded.factors) == list(source.factors)
    for k in source.factors:
        assert loaded.factors[k].dtype == torch.float32
        assert torch.equal(loaded.factors[k], source.factors[k]), k


def test_load_resizes_images_and_masks(folder):
    root, _ = folder
    loaded = load_image_folder(root, image_size=4, name="small")
    assert loaded.images.shape[1:] == (3, 4, 4) and loaded.masks.shape[1:] == (4, 4)
    assert loaded.name == "small"


def test_benchmark_poisoned_groups_and_splits(folder):
    root, source = folder
    bench = metadata_benchmark(root, n_poisoned=100, p=0.2, dfr_per_group=5, n_generator=40, seed=3)
    quotas = group_quotas(100, 0.2)
    assert quotas == {0: 10, 1: 40, 2: 40, 3: 10}
    assert bench.val.group_counts() == {g: round(q * 0.2) for g, q in quotas.items()}
    assert bench.train.group_counts() == {g: q - round(q * 0.2) for g, q in quotas.items()}
    split_of = dict(zip(source.ids, source.split.tolist()))
    assert {split_of[i] for i in bench.train.ids + bench.val.ids} == {0}
    assert set(bench.train.ids).isdisjoint(bench.val.ids)
    assert bench.train.split.unique().tolist() == [0] and bench.val.split.unique().tolist() == [1]

    assert sorted(bench.test.ids) == [i for i, s in split_of.items() if s == 2]
    assert bench.test.split.unique().tolist() == [2]
    assert bench.dfr.group_counts() == {g: 5 for g in range(4)}
    assert {split_of[i] for i in bench.dfr.ids} == {1}
    assert bench.dfr.split.tolist().count(0) == 16 and bench.dfr.split.tolist().count(1) == 4
    assert bench.generator.group_counts() == {g: 10 for g in range(4)}
    assert {split_of[i] for i in bench.generator.ids} == {0}
    assert bench.generator.select_split("val").group_counts() == {g: 1 for g in range(4)}

    assert (bench.task, bench.confounder, bench.attributes) == ("y", "a", ["ColorA", "Position"])
    position = {id_: k for k, id_ in enumerate(source.ids)}
    for part in (bench.train, bench.test, bench.generator):
        index = [position[i] for i in part.ids]
        assert torch.equal(part.images, source.images[index])
        assert torch.equal(part.masks, source.masks[index])
        assert torch.equal(part.factors["ColorA"], source.factors["ColorA"][index])


def test_benchmark_without_poisoning_uses_csv_splits(folder):
    root, _ = folder
    bench = metadata_benchmark(root, poison=False, dfr_per_group=2)
    assert len(bench.train) == 180 and len(bench.val) == 20 and len(bench.test) == 12
    assert bench.generator.group_counts() == {g: 45 for g in range(4)}  # smallest group, uncapped
    assert bench.train.split.unique().tolist() == [0] and bench.val.split.unique().tolist() == [1]


def test_registered():
    entry = registry.get("dataset", "metadata_csv")
    assert entry.factory is metadata_benchmark
    assert entry.description.startswith("Any image folder with a metadata CSV")


def test_split_codes_per_group():
    groups = torch.tensor([0] * 10 + [3] * 20)
    codes = split_codes_per_group(groups, (0.8, 0.1, 0.1))
    assert codes[:10].tolist() == [0] * 8 + [1, 2]
    assert codes[10:].tolist() == [0] * 16 + [1, 1, 2, 2]


# ------------------------------------------------------------------------------------------ errors


@pytest.fixture()
def small_folder(tmp_path):
    return save_image_folder(make_dataset({0: 3, 1: 2, 2: 1}), tmp_path / "small")


def test_missing_csv(tmp_path):
    with pytest.raises(FileNotFoundError, match="No metadata CSV at .*metadata.csv"):
        load_image_folder(tmp_path)


def test_missing_columns_are_listed(small_folder):
    def drop(header, rows):
        keep = [j for j, c in enumerate(header) if c not in ("split", "a")]
        return [header[j] for j in keep], [[r[j] for j in keep] for r in rows]

    rewrite_csv(small_folder, drop)
    with pytest.raises(ValueError, match=r"lacks the required column\(s\) \['split', 'a'\]"):
        load_image_folder(small_folder)


def test_unknown_split(small_folder):
    rewrite_csv(small_folder, lambda h, rows: (h, [r[:2] + ["7"] + r[3:] if k == 4 else r for k, r in enumerate(rows)]))
    with pytest.raises(ValueError, match=r"unknown split value\(s\) \[7\] \(first on line 6\).*0 \(train\)"):
        load_image_folder(small_folder)


def test_non_integer_label(small_folder):
    rewrite_csv(small_folder, lambda h, rows: (h, [rows[0][:3] + ["yes"] + rows[0][4:], *rows[1:]]))
    with pytest.raises(ValueError, match=r"line 2: column 'y' must hold integers, got 'yes'"):
        load_image_folder(small_folder)


def test_empty_csv(small_folder):
    rewrite_csv(small_folder, lambda h, rows: (h, []))
    with pytest.raises(ValueError, match="header but no rows"):
        load_image_folder(small_folder)
    (small_folder / "metadata.csv").write_text("")
    with pytest.raises(ValueError, match="is empty"):
        load_image_folder(small_folder)


def test_missing_image_is_named(small_folder):
    (small_folder / "images" / "img0002.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 of 24 image files .* do not exist: .*img0002.png"):
        load_image_folder(small_folder)


def test_mixed_sizes_need_image_size(small_folder):
    Image.new("RGB", (5, 7)).save(small_folder / "images" / "img0001.png")
    with pytest.raises(ValueError, match=r"img0001.png is 5x7 .* Pass image_size"):
        load_image_folder(small_folder)
    assert load_image_folder(small_folder, image_size=6).images.shape[1:] == (3, 6, 6)


def test_poisoning_a_group_cannot_fill(small_folder):
    with pytest.raises(ValueError, match=r"Cannot poison: group g=0 .* needs 10 images but the pool has only 3"):
        metadata_benchmark(small_folder)
