import os

os.environ["HF_HUB_OFFLINE"] = "1"

import math  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from didae_xai.data.square import square_dataset  # noqa: E402
from didae_xai.metrics.counterfactual import (  # noqa: E402
    counterfactuals_per_second,
    diversity,
    flip_rate,
    flips,
    latent_sparsity,
    na_rate,
    nafr,
    pixel_diversity,
    proximity_l1,
    square_oracle_latent,
    target_confidence,
)
from didae_xai.metrics.surrogate import (  # noqa: E402
    LeakySoftplus,
    distill_surrogate,
    leaky_softplus_resnet,
    load_surrogate,
    pgd_l2,
)
from didae_xai.models import load_classifier, save_classifier  # noqa: E402
from didae_xai.models.training import TrainConfig  # noqa: E402


# --- flip rates -------------------------------------------------------------------------------


def test_target_confidence_and_flip_rate():
    logits = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, math.log(3.0)]])
    conf = target_confidence(logits, torch.tensor([1, 1, 1]))
    assert torch.allclose(conf, torch.tensor([0.5, 1 / (1 + math.e**2), 0.75]))
    assert flip_rate(conf) == pytest.approx(2 / 3)  # 0.5 counts as a flip
    assert flip_rate(conf, threshold=0.51) == pytest.approx(1 / 3)
    assert flip_rate(torch.tensor([0.2, 0.5, 0.7, 0.49])) == 0.5
    with pytest.raises(ValueError, match="probabilities"):
        flip_rate(torch.tensor([0.2, 3.0]))
    with pytest.raises(ValueError, match="empty"):
        flip_rate(torch.tensor([]))
    with pytest.raises(ValueError, match="NaN"):
        flip_rate(torch.tensor([0.2, float("nan")]))


def test_nafr_and_na_rate_hand_computed():
    student = torch.tensor([True, True, True, False, False])
    surrogate = torch.tensor([True, False, True, True, False])
    assert nafr(student, surrogate) == pytest.approx(2 / 5)
    assert na_rate(student, surrogate) == pytest.approx(2 / 3)
    # The surrogate's flip at index 3 does not count: the student did not flip there.
    assert nafr(student, torch.ones(5, dtype=torch.bool)) == pytest.approx(3 / 5)
    assert na_rate(torch.zeros(5, dtype=torch.bool), surrogate) == 0.0
    assert nafr(torch.tensor([1, 0, 1]), torch.tensor([1, 1, 0])) == pytest.approx(1 / 3)  # 0/1 ints work
    with pytest.raises(ValueError, match="length"):
        nafr(student, surrogate[:4])
    with pytest.raises(ValueError, match="boolean"):
        na_rate(torch.tensor([0, 2]), torch.tensor([1, 1]))


def test_flips_uses_argmax():
    logits = torch.tensor([[0.1, 0.9], [0.9, 0.1], [0.3, 0.7]])
    assert flips(logits, torch.tensor([1, 1, 0])).tolist() == [True, False, False]
    with pytest.raises(ValueError, match="logits"):
        flips(logits, torch.tensor([1, 1]))


# --- proximity, diversity, sparsity -----------------------------------------------------------


def test_proximity_l1_per_pair():
    x = torch.zeros(2, 3, 2, 2)
    x_cf = x.clone()
    x_cf[0, 0, 0, 0] = 1.0
    x_cf[1] = 0.5
    assert torch.allclose(proximity_l1(x, x_cf), torch.tensor([1 / 12, 0.5]))
    as_uint8 = (x_cf * 255).round().to(torch.uint8)
    assert torch.allclose(proximity_l1(torch.zeros_like(as_uint8), as_uint8), torch.tensor([1 / 12, 128 / 255]))
    with pytest.raises(ValueError, match="same shape"):
        proximity_l1(x, x_cf[:1])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        proximity_l1(x, 2 * x_cf - 1)


def test_diversity_hand_computed():
    e1, e2 = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 2.0, 0.0])
    assert diversity(torch.stack([e1, e2])[None]) == pytest.approx(1.0)  # orthogonal
    assert diversity(torch.stack([e1, 3 * e1])[None]) == pytest.approx(0.0)  # identical direction
    assert diversity(torch.stack([e1, -e1])[None]) == pytest.approx(0.0)  # |cos| ignores the sign
    # K = 3: pairs (e1, e2), (e1, e1+e2), (e2, e1+e2) have |cos| 0, 1/√2, 1/√2.
    three = torch.stack([e1, e2, e1 + e2 / 2])[None]
    assert diversity(three) == pytest.approx(1 - math.sqrt(2) / 3)
    # The mean is over factuals: one orthogonal pair (1) and one parallel pair (0).
    assert diversity(torch.stack([torch.stack([e1, e2]), torch.stack([e1, e1])])) == pytest.approx(0.5)


def test_diversity_skips_zero_changes_and_needs_two():
    e1, e2, zero = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), torch.zeros(2)
    d = torch.stack([torch.stack([e1, zero]), torch.stack([e1, e2])])
    assert diversity(d) == pytest.approx(1.0)  # the first factual has no valid pair
    assert math.isnan(diversity(torch.zeros(3, 2, 4)))
    with pytest.raises(ValueError, match="K >= 2"):
        diversity(torch.ones(4, 1, 3))
    with pytest.raises(ValueError, match=r"\(N, K, F\)"):
        diversity(torch.ones(4, 3))


def test_pixel_diversity():
    x = torch.full((2, 3, 4, 4), 0.5)
    x_cf = x[:, None].repeat(1, 2, 1, 1, 1)
    x_cf[:, 0, 0, 0, 0] = 1.0  # the two counterfactuals change different pixels: orthogonal
    x_cf[:, 1, 1, 2, 2] = 0.0
    assert pixel_diversity(x, x_cf) == pytest.approx(1.0)
    x_cf[:, 1] = x_cf[:, 0]
    assert pixel_diversity(x, x_cf) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="K, C, H, W"):
        pixel_diversity(x, x_cf[:, 0])


def test_latent_sparsity_hand_computed():
    assert latent_sparsity(torch.tensor([[0.0, 3.0]])) == pytest.approx(1.0)  # one factor only
    assert latent_sparsity(torch.tensor([[2.0, -2.0]])) == pytest.approx(0.0)  # all equally
    assert latent_sparsity(torch.tensor([[1.0, -1.0, 1.0]])) == pytest.approx(0.0)
    assert latent_sparsity(torch.tensor([[2.0, 1.0, 0.0]])) == pytest.approx(1 - 1 / 4)
    # Rows without a change are skipped; the mean runs over the rest.
    assert latent_sparsity(torch.tensor([[0.0, 1.0], [0.0, 0.0], [1.0, 1.0]])) == pytest.approx(0.5)
    assert math.isnan(latent_sparsity(torch.zeros(2, 2)))
    with pytest.raises(ValueError, match="2 factors"):
        latent_sparsity(torch.ones(3, 1))
    with pytest.raises(ValueError, match="NaN"):
        latent_sparsity(torch.tensor([[float("nan"), 1.0]]))


# --- the Square oracle ------------------------------------------------------------------------


def test_square_oracle_latent_hand_built_image_ignores_the_frame():
    image = torch.full((1, 3, 32, 32), 0.2)
    image[:, :, 10:16, 10:16] = 0.5  # the grey frame, 1 px around the 4x4 mask at 32x32
    image[:, :, 11:15, 11:15] = torch.tensor([0.8, 0.0, 0.0]).view(1, 3, 1, 1)
    mask = torch.zeros(1, 32, 32, dtype=torch.bool)
    mask[:, 11:15, 11:15] = True
    assert torch.allclose(square_oracle_latent(image, mask), torch.tensor([[0.8, 0.2]]))
    with pytest.raises(ValueError, match="masks"):
        square_oracle_latent(image, mask[:, :16])
    with pytest.raises(ValueError, match="non-empty mask"):
        square_oracle_latent(image, torch.zeros_like(mask))


@pytest.mark.parametrize("size", [32, 64])
def test_square_oracle_latent_recovers_the_factors(size):
    data = square_dataset(64, size=size, seed=3)
    latent = square_oracle_latent(data.images, data.masks)
    red, background = data.factors["ColorA"], data.factors["ColorB"]
    assert torch.corrcoef(torch.stack([latent[:, 0], red]))[0, 1] > 0.95
    assert torch.corrcoef(torch.stack([latent[:, 1], background]))[0, 1] > 0.99
    # Noise (std 20/255) averages out; clamping at 0 and 255 biases dark and bright values slightly.
    assert (latent[:, 0] - red).abs().max() < 0.1
    assert (latent[:, 1] - background).abs().max() < 0.05


def test_counterfactuals_per_second():
    assert counterfactuals_per_second(200, 4.0) == 50.0
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="seconds"):
            counterfactuals_per_second(10, bad)


# --- the NAFR surrogate -----------------------------------------------------------------------


def test_leaky_softplus_values():
    act = LeakySoftplus()
    x = torch.tensor([0.0, 5.0, -5.0, 0.3])
    expected = 0.5 * (F.leaky_relu(x, 0.1) + torch.log1p(torch.exp(10 * x)) / 10)
    assert torch.allclose(act(x), expected)
    assert act(torch.tensor(0.0)).item() == pytest.approx(0.5 * math.log(2) / 10)
    assert act(torch.tensor(5.0)).item() == pytest.approx(5.0)
    assert act(torch.tensor(-5.0)).item() == pytest.approx(-0.25, abs=1e-6)


@pytest.mark.parametrize("arch", ["resnet18", "test_resnet"])
def test_surrogate_network_has_no_relu(arch):
    model = leaky_softplus_resnet(arch, num_classes=2, image_size=32)
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    assert sum(isinstance(m, LeakySoftplus) for m in model.modules()) >= 5
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 2)


def test_surrogate_round_trip_and_loud_failure_in_load_classifier(tmp_path):
    torch.manual_seed(0)
    model = leaky_softplus_resnet("test_resnet", num_classes=2, image_size=16).eval()
    save_classifier(model, tmp_path / "sur")
    again = load_surrogate(tmp_path / "sur")
    x = torch.rand(3, 3, 16, 16)
    assert torch.allclose(model(x), again(x))
    assert not any(isinstance(m, nn.ReLU) for m in again.modules())
    with pytest.raises(ValueError, match="kind"):
        load_classifier(tmp_path / "sur")


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Softplus(),
                                 nn.Flatten(), nn.Linear(4 * 8 * 8, 2))

    def forward(self, x):
        return self.net(x)


def test_pgd_l2_stays_in_the_ball_and_raises_the_loss():
    torch.manual_seed(0)
    model = _Tiny().train()
    x = torch.rand(16, 3, 8, 8)
    x[:4] = 0.0  # at the border of [0, 1]: clamping must not break the ball constraint
    y = torch.randint(0, 2, (16,))
    x_adv = pgd_l2(model, x, y, eps=0.5, steps=5)
    assert model.training  # mode restored
    norms = (x_adv - x).flatten(1).norm(dim=1)
    assert (norms <= 0.5 + 1e-5).all()
    assert norms.max() > 0.4  # it does move
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    model.eval()
    noise = torch.randn_like(x)
    x_rand = (x + 0.5 * noise / noise.flatten(1).norm(dim=1).view(-1, 1, 1, 1)).clamp(0, 1)
    with torch.no_grad():
        clean, attacked, rand = (F.cross_entropy(model(v), y, reduction="none") for v in (x, x_adv, x_rand))
    assert (attacked > clean).all()  # every sample is attacked separately
    assert attacked.mean() - clean.mean() > 5 * (rand.mean() - clean.mean()).abs()
    with pytest.raises(ValueError, match="eps"):
        pgd_l2(model, x, y, eps=0.0)
    with pytest.raises(ValueError, match="length"):
        pgd_l2(model, x, y[:3])


class _MeanRedStudent(nn.Module):
    """A fixed, rule-based student: class 1 iff the mean red intensity of the image exceeds 0.5."""

    num_classes = 2

    def forward(self, x):
        s = x[:, 0].flatten(1).mean(dim=1)
        return torch.stack([0.5 - s, s - 0.5], dim=1) * 10


def test_distill_surrogate_follows_the_student():
    data = square_dataset(256, size=16, seed=0)
    cfg = TrainConfig(epochs=4, lr=3e-3, batch_size=16, optimizer="adam", lr_schedule="cosine", class_balanced=True)
    # ε scaled to 16x16 as 1.0 is to the reference 64x64 (the L2 norm of a fixed change grows with the side).
    surrogate = distill_surrogate(_MeanRedStudent(), data.images, cfg=cfg, eps=0.25, arch="test_resnet", progress=False)
    assert not surrogate.training
    assert not any(isinstance(m, nn.ReLU) for m in surrogate.modules())
    assert sum(surrogate.label_counts_) == 256 and min(surrogate.label_counts_) > 64  # both classes present
    # Measured 0.996 (chance ≈ 0.5).
    assert surrogate.fidelity_ > 0.9
    assert len(surrogate.history_["loss"]) == 4


def test_distill_surrogate_rejects_bad_images():
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        distill_surrogate(_MeanRedStudent(), torch.zeros(4, 1, 16, 16), progress=False)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        distill_surrogate(_MeanRedStudent(), torch.full((4, 3, 16, 16), 2.0), progress=False)
