"""
Counterfactuals inside Captum and Zennit
========================================

Use DiDAE through the plugins in :mod:`didae_xai_plugins`: as a Captum ``Attribution`` that works with
Captum's visualisation, ``NoiseTunnel`` and metrics, and as a Zennit ``Attributor`` that shows where
the classifier's LRP evidence moves between an image and its counterfactual.
"""

# %%
# The classifier and its explainer
# --------------------------------
# The gallery's poisoned linear-probe student and a DiDAE explainer of it (edits bounded to three
# standard deviations of the data, as in the quickstart).
import matplotlib.pyplot as plt
import torch
from captum.attr import NoiseTunnel
from captum.attr import visualization as viz
from captum.metrics import infidelity, sensitivity_max
from didae_xai_plugins import CounterfactualAttributor, DiDAECounterfactual
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.composites import EpsilonPlusFlat

from didae_xai.benchmark.compare import (
    CompareOptions,
    prepare_comparison,
)
from didae_xai.benchmark.presets import PRESETS
from didae_xai.data import balanced_indices, round_robin_order
from didae_xai.explain import DiDAE

# The gallery's shared tiny models, trained by the first example and
# loaded from the artifact store here.
run = prepare_comparison(
    CompareOptions(preset=PRESETS["tiny"], students=("probe",)), log=None
)
data, models = run.data, run.models
dictionary = run.dictionaries["procrustes"]
model = models.students["probe"]
explainer = DiDAE(model, models.autoencoder, dictionary, max_shift=3.0).fit(
    data.train.float_images()
)

# Four test images, one per group. Each counterfactual should reach the class
# the model does not predict.
pick = balanced_indices(data.test.y, data.test.a, per_group=1, seed=4)
pick = pick[round_robin_order(data.test.y[pick], data.test.a[pick])]
x = data.test.subset(pick).float_images()
target = 1 - model.predict(x)
classes = ["dark", "bright"]  # the student's classes: the square's colour

# %%
# Captum
# ------
# :class:`~didae_xai_plugins.DiDAECounterfactual` is a ``captum.attr.Attribution``. Its
# ``attribute`` returns ``x_cf - x`` shaped like ``x``, so Captum's tools take it as they take any
# attribution.
cf = DiDAECounterfactual(model, explainer)
attr = cf.attribute(x, target=target)
smooth = NoiseTunnel(cf).attribute(
    x, nt_type="smoothgrad", nt_samples=4, stdevs=0.05, target=target
)

fig, axes = plt.subplots(2, len(x), figsize=(1.6 * len(x), 3.4), squeeze=False)
for i in range(len(x)):
    image = x[i].permute(1, 2, 0).numpy()
    for row, (values, name) in enumerate(
        ((attr, "attribute"), (smooth, "NoiseTunnel"))
    ):
        viz.visualize_image_attr(
            values[i].permute(1, 2, 0).numpy(),
            image,
            "blended_heat_map",
            sign="all",
            plt_fig_axis=(fig, axes[row, i]),
            use_pyplot=False,
        )
        goal = f"to {classes[int(target[i])]}"
        axes[row, i].set_title(f"{name}\n{goal}" if i == 0 else goal, fontsize=7)
fig.suptitle(
    "Captum: x_cf - x over the image (green: brighter, red: darker)", fontsize=8
)
fig.tight_layout()


# %%
# Captum's metrics apply as well: infidelity (how well the attribution predicts the output change
# under small perturbations) and max-sensitivity (how much the attribution changes under them).
# The perturbed images are clamped to ``[0, 1]``, the range the classifier accepts.
def perturb(inputs):
    perturbed = (inputs + 0.05 * torch.randn_like(inputs)).clamp(0, 1)
    return inputs - perturbed, perturbed


torch.manual_seed(0)
print("infidelity:", infidelity(model, perturb, x, attr, target=target).tolist())
print(
    "max-sensitivity:",
    sensitivity_max(cf.attribute, x, target=target, n_perturb_samples=2).tolist(),
)

# %%
# Zennit
# ------
# :class:`~didae_xai_plugins.CounterfactualAttributor` is a ``zennit.attribution.Attributor``. In
# ``mode="lrp"`` with a composite it returns the LRP relevance of the factual *and* of its
# counterfactual for the target class. Their difference shows where the model's evidence moved
# when the counterfactual changed its decision. (For a timm ResNet, ``SequentialMergeBatchNorm``
# merges the batch norms; use ``zennit.torchvision.ResNetCanonizer`` for torchvision ResNets.)
one_hot = torch.eye(2)[target]
composite = EpsilonPlusFlat(canonizers=[SequentialMergeBatchNorm()])
with CounterfactualAttributor(model, explainer, composite, mode="lrp") as attributor:
    outputs, relevance = attributor(x, one_hot)
moved = relevance[:, 1].sum(1) - relevance[:, 0].sum(
    1
)  # per pixel: evidence gained (+) or lost (-)
print(
    "target-class logit, factual -> counterfactual:",
    [f"{float(o[0, t]):.2f} -> {float(o[1, t]):.2f}" for o, t in zip(outputs, target)],
)

# The counterfactuals are those of the Captum section: DiDAE is deterministic.
fig, axes = plt.subplots(3, len(x), figsize=(1.6 * len(x), 5), squeeze=False)
limit = float(moved.abs().max())
for i in range(len(x)):
    axes[0, i].imshow(x[i].permute(1, 2, 0).numpy(), interpolation="nearest")
    axes[1, i].imshow(
        (x[i] + attr[i]).clamp(0, 1).permute(1, 2, 0).numpy(), interpolation="nearest"
    )
    axes[2, i].imshow(
        moved[i].numpy(), cmap="bwr", vmin=-limit, vmax=limit, interpolation="nearest"
    )
    for ax in axes[:, i]:
        ax.set_xticks([])
        ax.set_yticks([])
for row, name in enumerate(("factual", "counterfactual", "relevance moved")):
    axes[row, 0].set_ylabel(name, fontsize=7)
fig.suptitle("Zennit LRP for the target class (red: gained, blue: lost)", fontsize=8)
fig.tight_layout()
