import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from didae_xai import registry  # noqa: E402
from didae_xai.data.celeba import celeba_benchmark, read_celeba_lists  # noqa: E402

# The 40 names of the real list_attr_celeba.txt header, in order.
NAMES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair "
    "Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup "
    "High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose "
    "Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat "
    "Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young"
).split()
BLOND, MALE = NAMES.index("Blond_Hair"), NAMES.index("Male")  # 9 and 20 (SPEC §8)
# Images per group g = 2 * Blond_Hair + Male in each partition (80 images in all).
PER_GROUP = {0: 12, 1: 4, 2: 4}
SMALL = dict(n_poisoned=20, p=0.2, n_generator=8, dfr_per_group=1)


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory):
    """A tiny CelebA in the real file formats: 178x218 JPEGs, -1/1 attributes with double spaces."""
    root = tmp_path_factory.mktemp("data")
    folder = root / "celeba"
    (folder / "img_align_celeba").mkdir(parents=True)
    rng = np.random.default_rng(0)
    entries = [(part, g) for part, n in PER_GROUP.items() for g in range(4) for _ in range(n)]
    order = rng.permutation(len(entries))  # partitions interleave in the file order
    attr_lines, part_lines, truth = [], [], {}
    for k, i in enumerate(order, start=1):
        part, g = entries[i]
        name = f"{k:06d}.jpg"
        values = rng.choice([-1, 1], size=40)
        values[BLOND], values[MALE] = (1 if g // 2 else -1), (1 if g % 2 else -1)
        attr_lines.append(name + " " + " ".join(f"{v:2d}" for v in values))
        part_lines.append(f"{name} {part}")
        truth[name] = (values > 0).astype(int)
        # A plain centre colour with contrasting bands in the 20 rows that the centre crop removes.
        colour = rng.integers(40, 216, size=3)
        pixels = np.empty((218, 178, 3), dtype=np.uint8)
        pixels[:] = (colour + 128) % 256
        pixels[20:198] = colour
        Image.fromarray(pixels).save(folder / "img_align_celeba" / name, quality=100)
    (folder / "list_attr_celeba.txt").write_text(
        f"{len(entries)}\n" + " ".join(NAMES) + " \n" + "\n".join(attr_lines) + "\n"
    )
    (folder / "list_eval_partition.txt").write_text("\n".join(part_lines) + "\n")
    return root, truth


@pytest.fixture(scope="module")
def bench(fake_root):
    root, _ = fake_root
    return celeba_benchmark(root, image_size=16, seed=1, **SMALL)


def test_lists_parse_real_format(fake_root):
    root, truth = fake_root
    filenames, names, attributes, partition = read_celeba_lists(root)
    assert names == NAMES and len(filenames) == 80
    assert np.array_equal(attributes.numpy(), np.stack([truth[f] for f in filenames]))
    assert np.bincount(partition.numpy()).tolist() == [48, 16, 16]


def test_group_counts_match_quotas(bench):
    # group_quotas(20, 0.2) = {0: 2, 1: 8, 2: 8, 3: 2}; 20 % of each group goes to validation.
    assert bench.train.group_counts() == {0: 2, 1: 6, 2: 6, 3: 2}
    assert bench.val.group_counts() == {0: 0, 1: 2, 2: 2, 3: 0}
    assert bench.generator.group_counts() == {g: 2 for g in range(4)}
    assert bench.dfr.group_counts() == {g: 1 for g in range(4)}
    assert bench.test.group_counts() == {g: 4 for g in range(4)}
    poisoned = set(bench.train.ids) | set(bench.val.ids)
    assert len(poisoned) == 20 and poisoned.isdisjoint(bench.generator.ids)
    assert [d.split.unique().tolist() for d in (bench.train, bench.val, bench.test)] == [[0], [1], [2]]


def test_parts_come_from_their_partitions(fake_root, bench):
    root, _ = fake_root
    filenames, _, _, partition = read_celeba_lists(root)
    part_of = dict(zip(filenames, partition.tolist()))
    assert {part_of[f] for f in bench.train.ids + bench.val.ids + bench.generator.ids} == {0}
    assert {part_of[f] for f in bench.dfr.ids} == {1}
    assert sorted(bench.test.ids) == sorted(f for f, p in part_of.items() if p == 2)


def test_labels_and_factors_match_attribute_file(fake_root, bench):
    _, truth = fake_root
    assert bench.task == "Blond_Hair" and bench.confounder == "Male"
    assert bench.attributes[:2] == ["Blond_Hair", "Male"] and sorted(bench.attributes) == sorted(NAMES)
    for part in (bench.train, bench.val, bench.test, bench.dfr, bench.generator):
        assert list(part.factors) == bench.attributes
        expected = np.stack([truth[f] for f in part.ids])
        assert part.y.tolist() == expected[:, BLOND].tolist()
        assert part.a.tolist() == expected[:, MALE].tolist()
        for name in NAMES:
            assert part.factors[name].dtype == torch.float32
            assert part.factors[name].tolist() == expected[:, NAMES.index(name)].astype(float).tolist()


def test_images_are_center_cropped_and_resized(bench):
    images = bench.test.images
    assert images.dtype == torch.uint8 and images.shape[1:] == (3, 16, 16)
    # The contrasting top and bottom bands are cropped away: every pixel keeps the centre colour.
    centre = images[:, :, 8:9, 8:9].int()
    assert (images.int() - centre).abs().max() <= 6


def test_root_may_be_the_celeba_folder_and_n_test_subsets(fake_root):
    root, _ = fake_root
    bench = celeba_benchmark(root / "celeba", image_size=8, n_test=5, **SMALL)
    assert len(bench.test) == 5 and bench.test.images.shape[1:] == (3, 8, 8)


def test_generator_is_capped_by_smallest_group(fake_root):
    root, _ = fake_root
    with pytest.warns(UserWarning, match="generator set has 16 instead of n_generator=400"):
        bench = celeba_benchmark(root, image_size=8, n_poisoned=20, p=0.2, n_generator=400, dfr_per_group=1)
    assert bench.generator.group_counts() == {g: 4 for g in range(4)}


def test_other_attributes(fake_root):
    root, truth = fake_root
    bench = celeba_benchmark(
        root, image_size=8, task="Smiling", confounder="Young", n_poisoned=8, p=0.5, n_generator=4, dfr_per_group=1
    )
    assert bench.attributes[:2] == ["Smiling", "Young"]
    assert bench.train.y.tolist() == [truth[f][NAMES.index("Smiling")] for f in bench.train.ids]


def test_missing_files_list_expected_paths(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        celeba_benchmark(tmp_path)
    message = str(info.value)
    for path in ("celeba/list_attr_celeba.txt", "celeba/list_eval_partition.txt", "celeba/img_align_celeba"):
        assert str(tmp_path / path) in message
    assert "nothing is downloaded" in message and "CelebA website" in message


def test_unknown_attribute_suggests_close_match(fake_root):
    root, _ = fake_root
    with pytest.raises(ValueError, match=r"Unknown CelebA attribute 'Blonde_Hair' .* Did you mean 'Blond_Hair'"):
        celeba_benchmark(root, task="Blonde_Hair")
    with pytest.raises(ValueError, match=r"'male' .* Did you mean .*'Male'"):
        celeba_benchmark(root, confounder="male")


def test_registered(fake_root):
    root, _ = fake_root
    assert registry.get("dataset", "celeba").factory is celeba_benchmark
    bench = registry.create("dataset", "celeba", root=root, image_size=8, **SMALL)
    assert len(bench.train) + len(bench.val) == 20
