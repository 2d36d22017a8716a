import torch
import pytest

from didae_xai.data.square import SquareGeometry, square_benchmark, square_dataset


@pytest.fixture(scope="module")
def bench():
    return square_benchmark(size=32, seed=0, n_generator=1600, test_per_group=100)


def test_poisoned_group_counts_follow_spec(bench):
    assert bench.train.group_counts() == {0: 8, 1: 392, 2: 392, 3: 8}
    assert bench.val.group_counts() == {0: 2, 1: 98, 2: 98, 3: 2}
    assert set(bench.train.ids).isdisjoint(bench.val.ids)
    assert bench.train.split.unique().tolist() == [0] and bench.val.split.unique().tolist() == [1]


def test_poisoning_rate_is_configurable():
    b = square_benchmark(size=32, n_generator=16, test_per_group=4, p=0.2, n_poisoned=100)
    counts = {g: b.train.group_counts()[g] + b.val.group_counts()[g] for g in range(4)}
    assert counts == {0: 10, 1: 40, 2: 40, 3: 10}


def test_balanced_splits(bench):
    assert bench.test.group_counts() == {g: 100 for g in range(4)}
    assert bench.dfr.group_counts() == {g: 10 for g in range(4)}
    assert bench.generator.group_counts() == {g: 400 for g in range(4)}
    # The generator's validation split (dictionary fitting data) is balanced too.
    assert bench.generator.select_split("val").group_counts() == {g: 40 for g in range(4)}
    for factor in ("ClassC", "ClassD"):
        assert bench.generator.factors[factor].mean().item() == 0.5


def test_label_and_confounder_rules(bench):
    d = bench.generator
    assert torch.equal(d.y, (d.factors["ColorA"] * 255 >= 128).long())
    assert torch.equal(d.a, (d.factors["ColorB"] * 255 >= 128).long())
    assert torch.equal(d.y, d.factors["ClassA"].long()) and torch.equal(d.a, d.factors["ClassB"].long())
    geo = SquareGeometry.for_size(32)
    px = (d.factors["PositionX"] * 32).round()
    py = (d.factors["PositionY"] * 32).round()
    assert torch.equal(d.factors["ClassC"].bool(), px >= geo.half)
    assert torch.equal(d.factors["ClassD"].bool(), py >= geo.half)
    assert px.min() >= 0 and px.max() < geo.positions and py.max() < geo.positions
    for name in ("ColorA", "ColorB"):
        assert 0 <= d.factors[name].min() and d.factors[name].max() <= 1
    assert d.groups.tolist() == (2 * d.y + d.a).tolist()


def test_geometry_scales_from_64():
    assert SquareGeometry.for_size(64) == SquareGeometry(64, 12, 2)
    assert SquareGeometry.for_size(64).positions == 52 and SquareGeometry.for_size(64).half == 26
    assert square_dataset(8, size=64).masks.sum((1, 2)).tolist() == [64] * 8  # 8x8 inner square
    assert square_dataset(8, size=32).masks.sum((1, 2)).tolist() == [16] * 8  # 4x4 at half size
    with pytest.raises(ValueError, match="at least 16"):
        SquareGeometry.for_size(8)


def test_rendered_pixels_match_factors():
    d = square_dataset(256, size=64, seed=3)
    img = d.images.float()
    mask = d.masks
    red_inside = (img[:, 0] * mask).sum((1, 2)) / mask.sum((1, 2))
    assert torch.corrcoef(torch.stack([red_inside, d.factors["ColorA"] * 255]))[0, 1] > 0.99
    # Green and blue are 0 (+ clipped noise) inside the square.
    assert (img[:, 1] * mask).sum() / mask.sum() < 12
    # Background: every channel equals color_b (+ noise) away from the frame.
    corner = img[:, :, -1, -1].mean(1)
    far = (d.factors["PositionX"] * 64 < 40) & (d.factors["PositionY"] * 64 < 40)
    err = corner[far] - d.factors["ColorB"][far] * 255
    assert err.abs().mean() < 25
    # Noise is Gaussian with sigma 20 where no clipping happens.
    mid = (d.factors["ColorB"] * 255 - 127.5).abs() < 60
    bg = img[mid][:, :, -8:, -8:] - (d.factors["ColorB"][mid] * 255).view(-1, 1, 1, 1)
    assert 18 < bg[far[mid]].std() < 22


def test_reproducible_and_seeded():
    a = square_dataset(32, 32, seed=1)
    b = square_dataset(32, 32, seed=1)
    c = square_dataset(32, 32, seed=2)
    assert torch.equal(a.images, b.images) and torch.equal(a.factors["ColorA"], b.factors["ColorA"])
    assert not torch.equal(a.images, c.images)


def test_poisoning_request_too_large_fails():
    from didae_xai.data.poisoning import poison_indices

    y = torch.tensor([0, 0, 1, 1] * 5)
    a = torch.tensor([0, 1, 0, 1] * 5)
    with pytest.raises(ValueError, match="group g=1 .* needs 9 images but the pool has only 5"):
        poison_indices(y, a, n_total=20, p=0.1)


def test_square_csv_round_trip(tmp_path, bench):
    from didae_xai.data.metadata_csv import load_image_folder, save_image_folder

    part = bench.train.subset(list(range(0, 800, 50)))
    save_image_folder(part, tmp_path / "sq")
    header = (tmp_path / "sq" / "metadata.csv").read_text().splitlines()[0]
    assert header == "id,filename,split,y,a,ClassA,ClassB,ClassC,ClassD,ColorA,ColorB,PositionX,PositionY"
    back = load_image_folder(tmp_path / "sq")
    assert torch.equal(back.images, part.images) and torch.equal(back.masks, part.masks)
    assert torch.equal(back.y, part.y) and torch.equal(back.a, part.a) and torch.equal(back.split, part.split)
    for name, values in part.factors.items():
        assert torch.allclose(back.factors[name], values)
    assert back.ids == part.ids
