"""The host-toolkit adapters in plugins/ inside Captum's and Zennit's own workflows.

A tiny DiDAE (as in test_explainer.py: 16x16 images, 2 DDIM steps, untrained UNet) explains a tiny
torchvision ResNet (BasicBlock x [1, 1, 1, 1]) whose head is fitted in closed form to a red-vs-green
rule, so that its predictions are meaningful and Zennit's ResNetCanonizer applies.
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

from importlib.metadata import entry_points  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from captum.attr import Attribution, NoiseTunnel, visualization as viz  # noqa: E402
from captum.metrics import infidelity, sensitivity_max  # noqa: E402
from torch import nn  # noqa: E402
from torchvision.models.resnet import BasicBlock, ResNet  # noqa: E402
from zennit.attribution import Attributor, Gradient  # noqa: E402
from zennit.composites import EpsilonPlusFlat  # noqa: E402
from zennit.torchvision import ResNetCanonizer  # noqa: E402

from didae_xai import registry  # noqa: E402
from didae_xai.explain import CounterfactualExplanation  # noqa: E402
from didae_xai_plugins import CounterfactualAttributor, DiDAECounterfactual  # noqa: E402
from tiny import SIZE, images, tiny_didae  # noqa: E402

def red_score(x):
    return 20 * (x[:, 0].mean((1, 2)) - x[:, 1].mean((1, 2)))


@pytest.fixture(scope="module")
def model():
    """A torchvision ResNet with BasicBlocks whose head is a ridge fit of the red-vs-green score."""
    torch.manual_seed(0)
    net = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=2).eval()
    x = images(256, seed=1)
    head, net.fc = net.fc, nn.Identity()
    with torch.no_grad():
        feats = torch.cat([net(x), torch.ones(len(x), 1)], 1)
    net.fc = head
    w = torch.linalg.solve(feats.T @ feats + 1e-3 * torch.eye(feats.shape[1]), feats.T @ red_score(x))
    with torch.no_grad():
        net.fc.weight.copy_(torch.stack([-w[:-1], w[:-1]]) / 2)
        net.fc.bias.copy_(torch.stack([-w[-1], w[-1]]) / 2)
    return net


@pytest.fixture(scope="module")
def explainer(model):
    return tiny_didae(model)


def test_tiny_model_follows_the_rule(model):
    x = images(200, seed=9)
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == (red_score(x) > 0).long()).float().mean().item()
    assert accuracy > 0.9


class ShiftExplainer:
    """A stand-in for an explainer without atoms (the gradient baselines DiME, FastDiME, ACE): it brightens
    the red channel towards class 1 and the green one towards class 0, and records the targets it got."""

    def __init__(self, model):
        self.model = model
        self.targets = []

    def attribute(self, inputs, target=None):  # no atom, no internal_batch_size
        self.targets.append(target)
        t = torch.as_tensor(1 if target is None else target).expand(len(inputs)).float()
        cf = inputs.clone()
        cf[:, 0] += 0.2 * t[:, None, None]
        cf[:, 1] += 0.2 * (1 - t)[:, None, None]
        return cf.clamp(0, 1) - inputs


# --------------------------------------------------------------------------------------- registry
def test_adapters_are_found_by_name_through_the_installed_entry_point(model, explainer):
    ours = [ep for ep in entry_points(group=registry.ENTRY_POINT_GROUP) if ep.value.startswith("didae_xai_plugins")]
    assert ours, (
        "No didae_xai.plugins entry point of didae_xai_plugins is installed: add it to pyproject.toml and "
        "reinstall the project (pip install -e .)."
    )
    assert {"captum_didae", "zennit_didae"} <= set(registry.names("explainer"))
    entry = registry.get("explainer", "captum_didae")
    assert entry.factory.__module__ == "didae_xai_plugins.registration"
    assert entry.description.startswith("Captum Attribution")
    cf = registry.create("explainer", "captum_didae", forward_func=model, explainer=explainer)
    assert isinstance(cf, DiDAECounterfactual) and isinstance(cf, Attribution)
    attributor = registry.create("explainer", "zennit_didae", model=model, explainer=explainer, mode="lrp")
    assert isinstance(attributor, CounterfactualAttributor) and isinstance(attributor, Attributor)
    assert attributor.mode == "lrp"


# ----------------------------------------------------------------------------------------- Captum
def test_captum_shape_dtype_and_tuple_contract(model, explainer):
    x = images(4, seed=2)
    cf = DiDAECounterfactual(model, explainer)
    attr = cf.attribute(x, target=1)
    assert isinstance(attr, torch.Tensor) and attr.shape == x.shape and attr.dtype == x.dtype
    torch.testing.assert_close(attr, explainer.attribute(x, target=1))
    as_tuple = cf.attribute((x,), target=1)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 1
    torch.testing.assert_close(as_tuple[0], attr)
    with pytest.raises(ValueError, match="tuple of 2 tensors"):
        cf.attribute((x, x), target=1)
    torch.testing.assert_close(cf.attribute(x.double(), target=1), attr.double(), atol=1e-5, rtol=1e-4)
    assert cf.attribute(x.double(), target=1).dtype == torch.float64
    assert not cf.has_convergence_delta() and not cf.multiplies_by_inputs
    assert DiDAECounterfactual.get_name() == "DiDAE Counterfactual"
    assert DiDAECounterfactual(None, explainer).forward_func is model
    with pytest.raises(NotImplementedError):
        cf.attribute_future()


def test_captum_target_forms(model, explainer):
    x = images(4, seed=3)
    cf = DiDAECounterfactual(model, explainer)
    per_input = [0, 1, 1, 0]
    expected = explainer.attribute(x, target=per_input)
    for form in (per_input, torch.tensor(per_input), [(t,) for t in per_input]):
        torch.testing.assert_close(cf.attribute(x, target=form), expected)
    same = explainer.attribute(x, target=1)
    for form in (1, (1,), torch.tensor(1), torch.tensor([1]), [1, 1, 1, 1]):
        torch.testing.assert_close(cf.attribute(x, target=form), same)
    # None: the explainer's default, the other class of this binary model.
    pred = model(x).argmax(1)
    torch.testing.assert_close(cf.attribute(x), explainer.attribute(x, target=1 - pred))
    with pytest.raises(ValueError, match="one class"):
        cf.attribute(x, target=(0, 1))
    with pytest.raises(ValueError, match="one class per input"):
        cf.attribute(x, target=[0, 1])
    with pytest.raises(ValueError, match="integer classes"):
        cf.attribute(x, target=torch.ones(4))


def test_captum_explain_and_atom(model, explainer):
    x = images(3, seed=4)
    cf = DiDAECounterfactual(model, explainer)
    exp = cf.explain((x,), target=(1,))
    assert isinstance(exp, CounterfactualExplanation) and exp.target.tolist() == [1, 1, 1]
    assert exp.counterfactuals.shape == (3, 3, 3, SIZE, SIZE)
    torch.testing.assert_close(cf.attribute(x, target=1, atom="green"), exp.counterfactuals[:, 1] - x)
    torch.testing.assert_close(cf.attribute(x, target=1, internal_batch_size=2), cf.attribute(x, target=1), atol=1e-5, rtol=1e-4)


def test_captum_noise_tunnel_clamps_noisy_inputs(model, explainer):
    x = images(3, seed=5)
    cf = DiDAECounterfactual(model, explainer)
    nt = NoiseTunnel(cf)
    torch.manual_seed(0)
    smooth = nt.attribute(x, nt_type="smoothgrad", nt_samples=4, stdevs=0.3, target=[1, 0, 1])
    assert smooth.shape == x.shape and torch.isfinite(smooth).all()
    # Each noisy copy is clamped to [0, 1] before explaining, so each change stays in [-1, 1].
    assert smooth.abs().max() <= 1
    # With negligible noise the smoothed attribution is the plain one and its variance vanishes.
    plain = cf.attribute(x, target=[1, 0, 1])
    tiny = nt.attribute((x,), nt_type="smoothgrad", nt_samples=2, stdevs=1e-6, target=[1, 0, 1])
    assert isinstance(tiny, tuple) and len(tiny) == 1
    torch.testing.assert_close(tiny[0], plain, atol=1e-3, rtol=0)
    assert nt.attribute(x, nt_type="vargrad", nt_samples=2, stdevs=1e-6, target=1).abs().max() < 1e-5
    # Without clamping, out-of-range inputs reach the explainer, which refuses them.
    out_of_range = x * 1.5 - 0.25
    torch.testing.assert_close(cf.attribute(out_of_range, target=1), cf.attribute(out_of_range.clamp(0, 1), target=1))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        DiDAECounterfactual(model, explainer, clamp=False).attribute(out_of_range, target=1)


def test_captum_visualization_on_the_output(model, explainer):
    x = images(2, seed=6)
    attr = DiDAECounterfactual(model, explainer).attribute(x, target=1)
    image, heat = x[0].permute(1, 2, 0).numpy(), attr[0].permute(1, 2, 0).numpy()
    fig, ax = viz.visualize_image_attr(heat, image, method="blended_heat_map", sign="all", use_pyplot=False)
    assert fig is not None and ax is not None
    plt.close(fig)
    fig, axes = viz.visualize_image_attr_multiple(
        heat, image, ["original_image", "heat_map", "blended_heat_map"], ["all", "absolute_value", "all"],
        titles=["factual", "|x_cf - x|", "x_cf - x"], use_pyplot=False,
    )
    assert len(axes) == 3 and axes[1].get_title() == "|x_cf - x|"
    plt.close(fig)


def test_captum_metrics_on_the_output(model, explainer):
    x = images(3, seed=7)
    cf = DiDAECounterfactual(model, explainer)
    attr = cf.attribute(x, target=1)
    step = torch.linspace(-0.05, 0.05, 3 * SIZE * SIZE).reshape(1, 3, SIZE, SIZE)

    def perturb(inputs):  # deterministic, so that the metric can be checked by hand
        return step.expand_as(inputs), inputs - step

    value = infidelity(model, perturb, x, attr, target=1, n_perturb_samples=2)
    with torch.no_grad():
        drop = model(x)[:, 1] - model(x - step)[:, 1]
    expected = ((step * attr).sum((1, 2, 3)) - drop) ** 2
    assert value.shape == (3,)
    torch.testing.assert_close(value, expected, atol=1e-5, rtol=1e-4)

    torch.manual_seed(0)
    sens = sensitivity_max(cf.attribute, x, target=1, n_perturb_samples=2, perturb_radius=0.05)
    assert sens.shape == (3,) and torch.isfinite(sens).all() and (sens > 0).all()
    still = sensitivity_max(cf.attribute, x, target=1, n_perturb_samples=2, perturb_radius=1e-7)
    assert still.max() < 1e-2 < sens.max()


def test_captum_adapter_accepts_any_explainer_with_the_interface(model):
    baseline = ShiftExplainer(model)
    cf = DiDAECounterfactual(model, baseline)
    x = images(2, seed=8)
    attr = cf.attribute((x,), target=[1, 0])[0]
    assert torch.all(attr[0, 0] >= 0) and torch.all(attr[1, 1] >= 0) and attr[0, 1].abs().max() == 0
    assert baseline.targets[-1].tolist() == [1, 0]
    cf.attribute(x, target=torch.tensor(1))
    assert baseline.targets[-1] == 1 and isinstance(baseline.targets[-1], int)
    with pytest.raises(TypeError, match="no explain"):
        cf.explain(x)
    with pytest.raises(TypeError, match="attribute"):
        DiDAECounterfactual(model, object())


# ----------------------------------------------------------------------------------------- Zennit
def hook_count(module):
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) + len(m._backward_pre_hooks)
        for m in module.modules()
    )


def canonizer_leftovers(module):
    return [name for name, m in module.named_modules() if "forward" in vars(m) or hasattr(m, "canonizer_sum")]


def test_zennit_attr_output_forms_select_the_class_to_reach(model, explainer):
    x = images(4, seed=10)
    targets = [1, 0, 0, 1]
    with CounterfactualAttributor(model, explainer) as attributor:
        output, change = attributor(x, torch.eye(2)[targets])
        torch.testing.assert_close(output, model(x))
        torch.testing.assert_close(change, explainer.attribute(x, target=targets))
        _, by_fn = attributor(x, lambda out: out * torch.eye(2)[targets])
        torch.testing.assert_close(by_fn, change)
        _, broadcast = attributor(x, torch.eye(2)[[1]])
        torch.testing.assert_close(broadcast, explainer.attribute(x, target=1))
        _, default = attributor(x)  # no attr_output: the other class
        torch.testing.assert_close(default, explainer.attribute(x, target=1 - model(x).argmax(1)))
        with pytest.raises(ValueError, match="exactly one class per"):
            attributor(x, lambda out: out)
        with pytest.raises(ValueError, match="shaped like the model's output"):
            attributor(x, torch.eye(3)[[0]])
    with CounterfactualAttributor(model, explainer, attr_output=torch.eye(2)[[0]]) as attributor:
        _, change = attributor(x)
    torch.testing.assert_close(change, explainer.attribute(x, target=0))
    with pytest.raises(ValueError, match="mode must be one of"):
        CounterfactualAttributor(model, explainer, mode="heatmap")


def test_zennit_lrp_of_factual_and_counterfactual_with_resnet_canonizer(model, explainer):
    x = images(3, seed=11)
    one_hot = torch.eye(2)[[1, 1, 1]]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    before = model(x)
    assert hook_count(model) == 0 and not canonizer_leftovers(model)

    composite = EpsilonPlusFlat(canonizers=[ResNetCanonizer()])
    with CounterfactualAttributor(model, explainer, composite, mode="lrp") as attributor:
        assert hook_count(model) > 0 and canonizer_leftovers(model)  # registered on entering
        output, relevance = attributor(x, one_hot)
    assert hook_count(model) == 0 and not canonizer_leftovers(model)  # and removed on exiting
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    torch.testing.assert_close(model(x), before)

    assert output.shape == (3, 2, 2) and relevance.shape == (3, 2, 3, SIZE, SIZE)
    x_cf = x + explainer.attribute(x, target=1)
    # The canonizer folds batch norms into convolutions: the same outputs up to float rounding.
    torch.testing.assert_close(output[:, 0], before, atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(output[:, 1], model(x_cf), atol=1e-3, rtol=1e-4)
    # Side by side: Zennit's own Gradient attributor with the same composite on each image.
    with Gradient(model, EpsilonPlusFlat(canonizers=[ResNetCanonizer()])) as gradient:
        lrp_x, lrp_cf = gradient(x, one_hot)[1], gradient(x_cf, one_hot)[1]
    torch.testing.assert_close(relevance[:, 0], lrp_x, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(relevance[:, 1], lrp_cf, atol=1e-5, rtol=1e-4)
    plain = Gradient(model)(x, one_hot)[1]
    assert not torch.allclose(relevance[:, 0], plain, atol=1e-4)  # the composite's rules were in effect
    assert (relevance[:, 1] - relevance[:, 0]).abs().sum() > 0  # the evidence moved

    # Called without `with`, the composite is registered for the call only; same result, no hooks left.
    again = CounterfactualAttributor(model, explainer, EpsilonPlusFlat(canonizers=[ResNetCanonizer()]), mode="lrp")
    torch.testing.assert_close(again(x, one_hot)[1], relevance)
    assert hook_count(model) == 0 and not canonizer_leftovers(model)


def test_zennit_context_manager_cleans_up_after_an_error(model, explainer):
    composite = EpsilonPlusFlat(canonizers=[ResNetCanonizer()])
    with pytest.raises(ValueError, match="exactly one class"):
        with CounterfactualAttributor(model, explainer, composite, mode="lrp") as attributor:
            attributor(images(2, seed=12), torch.ones(2, 2))
    assert hook_count(model) == 0 and not canonizer_leftovers(model)


def test_zennit_adapter_accepts_any_explainer_with_the_interface(model):
    baseline = ShiftExplainer(model)
    x = images(2, seed=13)
    with CounterfactualAttributor(model, baseline, EpsilonPlusFlat(canonizers=[ResNetCanonizer()]), mode="lrp") as attributor:
        output, relevance = attributor(x, torch.eye(2)[[1, 0]])
    assert baseline.targets[-1].tolist() == [1, 0]
    assert relevance.shape == (2, 2, 3, SIZE, SIZE) and output.shape == (2, 2, 2)
    assert hook_count(model) == 0


def readme_block(heading: str) -> str:
    """The first ```python block after ``heading`` in the README."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    after = text[text.index(heading):]
    start = after.index("```python\n") + len("```python\n")
    return after[start:after.index("```", start)]


@pytest.mark.parametrize("heading", ["Captum — an `Attribution`", "Zennit — an `Attributor`"])
def test_readme_examples_run_as_written(model, explainer, heading):
    x = images(2, seed=11)
    namespace = {"model": model, "explainer": explainer, "x": x}
    exec(compile(readme_block(heading), "README.md", "exec"), namespace)
    out = namespace.get("attr", namespace.get("change"))
    assert out.shape == x.shape
