"""DiME, FastDiME and ACE on a tiny UNet and rule-based classifiers: invariants, costs, interface.

Two tiny 16x16 autoencoders: ``random_ae`` (an untrained v-prediction UNet: shapes, ranges, call
counts) and ``still_ae`` (an eps-prediction UNet whose output layer is zeroed, eps_hat = 0: the
reverse chain reproduces its input up to the sampling noise, so the classifier guidance alone decides
where the counterfactual goes and flips are testable without training a model).
"""

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
from diffusers import DDPMScheduler  # noqa: E402
from torch import nn  # noqa: E402

from didae_xai import registry  # noqa: E402
from didae_xai.baselines import ACE, DiME, FastDiME, RespacedDDPM, difference_mask, target_loss  # noqa: E402
from didae_xai.correct.cfkd import counterfactual_dataset  # noqa: E402
from didae_xai.correct.teachers import OracleTeacher  # noqa: E402
from didae_xai.data.base import ImageDataset  # noqa: E402
from didae_xai.explain import CounterfactualExplanation  # noqa: E402
from tiny import SIZE, RedRule, images, tiny_autoencoder, tiny_backbone  # noqa: E402

@pytest.fixture(scope="module")
def backbone():
    return tiny_backbone()


@pytest.fixture(scope="module")
def random_ae(backbone):
    return tiny_autoencoder(backbone)


@pytest.fixture(scope="module")
def still_ae(backbone):
    """An eps-model whose output layer is zero: the reverse chain is neutral, guidance alone decides."""
    ae = tiny_autoencoder(backbone, seed=1, prediction_type="epsilon")
    nn.init.zeros_(ae.unet.unet.conv_out.weight)
    nn.init.zeros_(ae.unet.unet.conv_out.bias)
    return ae


class CallCounter:
    """Counts forward calls of a module and records whether each got a conditioning z."""

    def __init__(self, module: nn.Module):
        self.calls, self.z = 0, []
        self.handle = module.register_forward_hook(self.hook)

    def hook(self, module, args, output):
        self.calls += 1
        self.z.append(args[2] if len(args) > 2 else None)

    def close(self):
        self.handle.remove()


def count_calls(explainer, x) -> int:
    counter = CallCounter(explainer.autoencoder.unet)
    try:
        exp = explainer.explain(x)
    finally:
        counter.close()
    assert exp.timings["unet_calls"] == counter.calls  # the explainer's own count agrees with the hook
    return counter.calls


# ---------------------------------------------------------------------------------------------- schedule
def test_respacing_maps_onto_the_training_schedule_and_matches_diffusers(random_ae):
    unet = random_ae.unet
    engine = RespacedDDPM(unet, 200)
    assert engine.stride == 5 and engine.tail(60)[0] == 295 and engine.tail(60)[-1] == 0
    assert engine.prev(295) == 290 and engine.prev(0) == -1 and engine.alpha_bar(-1) == 1.0
    assert RespacedDDPM(unet, 50).tail(5) == [80, 60, 40, 20, 0]
    # Our posterior mean + sigma * eps equals diffusers' DDPMScheduler.step with x0 clipping (the references').
    reference = DDPMScheduler(**{**unet.scheduler_kwargs(), "clip_sample": True})
    reference.set_timesteps(200)
    g = torch.Generator().manual_seed(3)
    z = torch.randn(2, 3, SIZE, SIZE, generator=g)
    for t in (295, 150, 5, 0):
        with torch.no_grad():
            out = unet(z, t)
            ours_x0 = engine.predict_x0(z, t, None)
            mean, var = engine.posterior(ours_x0, z, t)
        noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(t))
        step = reference.step(out, t, z, generator=torch.Generator().manual_seed(t))
        torch.testing.assert_close(ours_x0, step.pred_original_sample, atol=1e-5, rtol=1e-5)
        expected = mean + (var**0.5 * noise if t > 0 else 0)
        torch.testing.assert_close(expected, step.prev_sample, atol=1e-4, rtol=1e-4)  # fp32 vs fp64 coefficients
    with pytest.raises(ValueError, match="must divide"):
        RespacedDDPM(unet, 300)
    with pytest.raises(ValueError, match=r"\[1, 200\]"):
        engine.tail(201)


# ---------------------------------------------------------------------------------------------- cost
def test_fastdime_costs_linear_and_dime_quadratic_network_calls_in_tau(random_ae):
    x = images(3, seed=2)
    taus = [2, 3, 4, 6]
    never = RedRule(gain=0.0)  # logits tie: predicts 0, never reaches target 1; one scale anyway
    fast = [count_calls(FastDiME(never, random_ae, tau=tau, scales=(8.0,), masking=False), x) for tau in taus]
    slow = [count_calls(DiME(never, random_ae, tau=tau, scales=(8.0,)), x) for tau in taus]
    assert fast == taus  # one batched call per reverse step
    assert slow == [tau * (tau + 1) // 2 for tau in taus]  # tau steps + the nested chains (tau - 1) + ... + 1
    assert DiME(never, random_ae).tau == FastDiME(never, random_ae).tau == 60  # published: 60 vs 1830 calls per scale
    # ACE: iterations x steps through the filter, then steps for the inpainting.
    assert count_calls(ACE(never, random_ae, iterations=3, steps=2, dilation=3), x) == 3 * 2 + 2


def test_classifier_scales_are_tried_in_turn_on_the_unflipped(still_ae):
    x = images(8, seed=3)
    model = RedRule(gain=400.0)
    one = FastDiME(model, still_ae, tau=8, scales=(4.0,), masking=False, seed=5)
    three = FastDiME(model, still_ae, tau=8, scales=(4.0, 40.0, 400.0), masking=False, seed=5)
    e1, e3 = one.explain(x), three.explain(x)
    first = e1.flipped[:, 0]
    assert 0 < first.sum() < len(x), "the test needs factuals that flip at the first scale and others that do not"
    scale = three.last_output_.info["scale"]
    # Factuals flipped at the first scale keep that (identical) counterfactual; the others went on.
    assert torch.all(scale[first] == 4.0) and torch.all(scale[~first] > 4.0)
    torch.testing.assert_close(e3.counterfactuals[first], e1.counterfactuals[first])
    assert e3.flipped.sum() > e1.flipped.sum()
    # The cumulative flip rate by scale: the first scale's is the one-scale run's, the last the flip rate.
    by_scale = three.flip_rate_by_scale()
    assert list(by_scale) == ["4", "40", "400"]
    assert by_scale["4"] == pytest.approx(first.float().mean().item())
    assert by_scale["400"] == pytest.approx(e3.flipped.float().mean().item())
    assert by_scale["4"] <= by_scale["40"] <= by_scale["400"]
    with pytest.raises(RuntimeError, match="explain"):
        FastDiME(model, still_ae, tau=8).flip_rate_by_scale()
    # Scales are tried in the given order, ascending or not.
    down = FastDiME(model, still_ae, tau=8, scales=(400.0, 4.0), masking=False, seed=5)
    down.explain(x)
    by_scale = down.flip_rate_by_scale()
    assert list(by_scale) == ["400", "4"] and by_scale["400"] > 0
    assert by_scale["400"] <= by_scale["4"] == pytest.approx(down.last_output_.info["flipped"].float().mean().item())


# ---------------------------------------------------------------------------------------------- interface
@pytest.mark.parametrize("cls, kwargs", [
    (DiME, dict(tau=3)),
    (FastDiME, dict(tau=4, warmup=1)),
    (ACE, dict(iterations=2, steps=2)),
])
def test_explanations_have_didae_shape_and_range(random_ae, cls, kwargs):
    x = images(4, seed=4)
    explainer = cls(RedRule(), random_ae, class_names=["green", "red"], **kwargs)
    exp = explainer.explain(x)
    assert isinstance(exp, CounterfactualExplanation) and exp.method == cls.method
    assert exp.counterfactuals.shape == (4, 1, 3, SIZE, SIZE)
    assert exp.counterfactuals.min() >= 0 and exp.counterfactuals.max() <= 1
    assert exp.atoms == [0] and exp.atom_names == [cls.method] and exp.movable.all()
    pred = RedRule()(x).argmax(1)
    assert torch.equal(exp.factual_pred, pred) and torch.equal(exp.target, 1 - pred)
    assert torch.equal(exp.flipped, exp.cf_pred == exp.target[:, None])
    assert exp.timings["cf_per_s"] > 0 and exp.timings["unet_calls"] > 0
    json.dumps(exp.to_dict())
    attr = explainer.attribute(x, target=1)
    assert attr.shape == x.shape and attr.dtype == x.dtype
    assert torch.equal(attr, explainer.explain(x, target=1).counterfactuals[:, 0] - x)  # seeded: reproducible
    explainer.internal_batch_size = 3
    chunked = explainer.explain(x)
    assert chunked.counterfactuals.shape == exp.counterfactuals.shape and chunked.timings["unet_calls"] > exp.timings["unet_calls"]


@pytest.mark.parametrize("cls, kwargs, gain", [
    (DiME, dict(tau=10), 2000.0),
    (FastDiME, dict(tau=10, warmup=5), 2000.0),
    # ACE's cross-entropy saturates past the boundary, where the L1 penalty takes over: a gentler
    # classifier keeps pushing the pre-explanation well across.
    (ACE, dict(iterations=30, steps=3, dilation=3, step_size=4 / 255), 20.0),
])
def test_targets_are_honoured(still_ae, cls, kwargs, gain):
    model = RedRule(gain=gain)
    x = images(6, seed=6)
    explainer = cls(model, still_ae, **kwargs)
    pred = model(x).argmax(1)
    exp = explainer.explain(x)  # default target: the other class
    assert torch.equal(exp.target, 1 - pred)
    assert exp.flipped.float().mean() >= 5 / 6
    before = model(x).softmax(1).gather(1, exp.target[:, None])
    assert (exp.cf_target_confidence > before).float().mean() >= 5 / 6
    # An explicit target in Captum's three forms; factuals already in class 1 stay there.
    by_int = explainer.explain(x, target=1)
    by_list = explainer.explain(x, target=[1] * 6)
    by_tensor = explainer.explain(x, target=torch.ones(6, dtype=torch.long))
    assert by_int.target.tolist() == [1] * 6 and by_int.cf_pred[:, 0].float().mean() >= 5 / 6
    torch.testing.assert_close(by_int.counterfactuals, by_list.counterfactuals)
    torch.testing.assert_close(by_int.counterfactuals, by_tensor.counterfactuals)
    with pytest.raises(ValueError, match="one class per input"):
        explainer.explain(x, target=[0, 1])


# ---------------------------------------------------------------------------------------------- masks
def test_difference_mask_is_normalised_and_dilated():
    a = torch.zeros(2, 3, 8, 8)
    b = a.clone()
    b[0, :, 3, 4] = 0.5
    b[0, 0, 0, 0] = 0.25
    m, dil = difference_mask(a, b, 3)
    assert m.shape == (2, 1, 8, 8) and 0 <= m.min() and m.max() <= 1
    assert m[0, 0, 3, 4] == 1 and torch.isclose(m[0, 0, 0, 0], torch.tensor(0.25 / 1.5))
    assert (dil[0, 0, 2:5, 3:6] == 1).all() and dil[0, 0, 6, 6] == 0
    assert (m[1] == 0).all() and (dil[1] == 0).all()  # an unchanged image: nothing to change
    with pytest.raises(ValueError, match="odd"):
        difference_mask(a, b, 4)


@pytest.mark.parametrize("cls, kwargs", [
    (FastDiME, dict(tau=10, warmup=4, threshold=0.5)),
    (ACE, dict(iterations=6, steps=2, dilation=3, step_size=4 / 255)),
])
def test_masks_are_in_unit_interval_and_only_the_masked_region_changes(still_ae, cls, kwargs):
    x = images(4, seed=7)
    explainer = cls(RedRule(gain=200.0, patch=5), still_ae, **kwargs)
    exp = explainer.explain(x)
    out = explainer.last_output_
    edit, soft = out.edit_mask, out.soft_mask
    assert edit.shape == soft.shape == (4, 1, SIZE, SIZE)
    assert set(edit.unique().tolist()) <= {0.0, 1.0} and 0 <= soft.min() and soft.max() <= 1
    assert 0 < edit.mean() < 1, "the test needs a mask that keeps part of the image"
    cf = exp.counterfactuals[:, 0]
    keep = (edit == 0).expand_as(cf)
    assert torch.equal(cf[keep], x[keep])  # exactly the factual outside the mask
    assert (cf - x).abs()[~keep].sum() > 0
    if cls is ACE:  # the attack touched only the patch the classifier reads; the mask covers it
        pre = out.info["pre_explanation"]
        assert (pre - x)[:, :, 8:, 8:].abs().max() == 0
        assert (edit[:, :, :5, :5] == 1).all() and (edit[:, :, 8:, 8:] == 0).all()


# ---------------------------------------------------------------------------------------------- conditioning
def test_unconditional_by_default_and_factual_condition_passes_z(random_ae):
    x = images(2, seed=8)
    for condition in ("none", "factual"):
        counter = CallCounter(random_ae.unet)
        try:
            FastDiME(RedRule(), random_ae, tau=2, scales=(8.0,), condition=condition).explain(x)
        finally:
            counter.close()
        if condition == "none":
            assert all(z is None for z in counter.z)
        else:
            z = random_ae.embed(x)
            assert all(torch.equal(zi, z) for zi in counter.z)


def test_gradients_reach_images_only(random_ae):
    model = RedRule(gain=5.0)
    weight = nn.Parameter(torch.ones(1))
    model.register_parameter("w", weight)
    ACE(model, random_ae, iterations=2, steps=2).explain(images(2, seed=9))
    assert weight.grad is None and all(p.grad is None for p in random_ae.unet.parameters())
    assert target_loss(torch.tensor([[0.0, 2.0]]), torch.tensor([1])).item() == -2.0  # minus the margin


# ---------------------------------------------------------------------------------------------- plugging in
def test_cfkd_registry_and_errors(random_ae):
    x = images(4, seed=10)
    data = ImageDataset(images=(x * 255).round().to(torch.uint8), y=RedRule()(x).argmax(1), a=torch.zeros(4, dtype=torch.long), name="toy")
    explainer = registry.create("explainer", "fastdime", model=RedRule(), autoencoder=random_ae, tau=3)
    assert isinstance(explainer, FastDiME) and {"dime", "fastdime", "ace"} <= set(registry.names("explainer"))
    cf, stats = counterfactual_dataset(data, torch.arange(4), explainer, OracleTeacher(RedRule(), num_classes=2),
                                       batch_size=2, progress=False)
    assert stats["n_counterfactuals"] == 4 and sum(stats["verdicts"].values()) == 4
    with pytest.raises(ValueError, match="condition"):
        DiME(RedRule(), random_ae, condition="z")
    with pytest.raises(ValueError, match=r"\[1, 200\]"):
        DiME(RedRule(), random_ae, tau=500)
    with pytest.raises(ValueError, match="odd"):
        FastDiME(RedRule(), random_ae, dilation=4)
    for bad in ((), (8.0, 8.0), (8.0, float("inf")), (0.0,)):
        with pytest.raises(ValueError, match="distinct positive finite classifier scales"):
            DiME(RedRule(), random_ae, scales=bad)
    with pytest.raises(ValueError, match="16x16 images, got 32x32"):
        ACE(RedRule(), random_ae).explain(torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match="one counterfactual per factual"):
        ACE(RedRule(), random_ae).explain(x, atoms=[1])
