"""
Explain a classifier built on your own timm model
=================================================

Load a timm model from a local ``.safetensors`` file as a frozen backbone through
:mod:`didae_xai.backbones`, train a classifier on top of it, and explain the classifier with DiDAE
using Captum's ``attribute`` contract.
"""

# %%
# Your weights
# ------------
# didae-xai never downloads weights: a backbone is a timm architecture name plus a local weight
# file. Here the file is written by the example itself: the weights of the gallery's Square
# foundation model, a ResNet-18 trained for a few epochs to predict Square's eight factors (the first
# example trains it). In your project it is the checkpoint of your own training run, or a file you
# downloaded once.
import tempfile
from dataclasses import replace
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from safetensors.torch import save_file

from didae_xai import registry
from didae_xai.autoencoder import DiffusionAutoencoder
from didae_xai.benchmark.compare import (
    CompareOptions,
    atom_plan,
    fit_dictionaries,
    prepare_comparison,
)
from didae_xai.benchmark.presets import PRESETS
from didae_xai.data import balanced_indices, round_robin_order
from didae_xai.explain import DiDAE
from didae_xai.metrics import group_report
from didae_xai.models.training import PROBE_STUDENT, train_probe

# The gallery's shared tiny models, trained by the first example and
# loaded from the artifact store here.
run = prepare_comparison(
    CompareOptions(preset=PRESETS["tiny"], students=("probe",)), log=None
)
data, models = run.data, run.models

weights = Path(tempfile.mkdtemp()) / "resnet18_square.safetensors"
save_file(
    models.fm.model.state_dict(), str(weights)
)  # a plain timm state dict, classifier head included

# %%
# The backbone
# ------------
# ``registry.create("backbone", "timm", ...)`` builds the timm model without its classifier, loads
# the local weights (the head's keys are dropped) and freezes it. It takes images in ``[0, 1]`` and
# applies timm's own normalisation; its embedding is the pooled penultimate feature vector.
backbone = registry.create(
    "backbone", "timm", model_name="resnet18", weights=weights, image_size=32
)
print(type(backbone).__name__, backbone.extra_repr())

x_all = data.test.float_images()
z = backbone.embed(x_all)
print("embeddings:", tuple(z.shape))
print(
    "same embedding as the foundation model:",
    torch.allclose(z, models.backbone.embed(x_all), atol=1e-5),
)

# %%
# Your classifier
# ---------------
# A linear head on the frozen backbone, trained on the poisoned training set. Any classifier that
# takes images in ``[0, 1]`` and returns logits can be explained; this one is also a
# :class:`~didae_xai.models.ProbeClassifier`, so the correctors can retrain its head.
classifier, _ = train_probe(
    backbone,
    data.train,
    replace(PROBE_STUDENT, epochs=100),
    val=data.val,
    progress=False,
)
report = group_report(classifier.predict(x_all), data.test.y, data.test.a)
print(
    "test accuracy per group:",
    {g: round(a, 3) for g, a in report["group_accuracy"].items()},
)

# %%
# The autoencoder and the dictionary
# ----------------------------------
# DiDAE needs a diffusion autoencoder whose decoder was trained on *this backbone's* embeddings.
# The gallery's autoencoder was trained on exactly these weights, so its UNet pairs with the backbone
# we just loaded. For a backbone of your own, train one once, e.g. with
# ``didae-xai train --backbone timm:resnet18 --weights resnet18.safetensors`` or
# :func:`~didae_xai.autoencoder.train_autoencoder`, and load it with
# :meth:`DiffusionAutoencoder.from_pretrained <didae_xai.autoencoder.DiffusionAutoencoder.from_pretrained>`.
autoencoder = DiffusionAutoencoder(
    backbone, models.autoencoder.unet, steps=PRESETS["tiny"].ddim_steps
)
dictionary = fit_dictionaries(autoencoder, data, atom_plan(data))["procrustes"]

# %%
# Explain, the Captum way
# -----------------------
# ``attribute(x, target=...)`` returns the counterfactual change ``x_cf - x``, shaped like ``x``.
# With no atom given it takes, per image, the atom whose counterfactual gives ``target`` the highest
# probability. Here every image is pushed towards the class the classifier does *not* predict.
# ``max_shift=3.0`` keeps every edit within the range of the data, as in the quickstart.
explainer = DiDAE(classifier, autoencoder, dictionary, max_shift=3.0).fit(
    data.train.float_images()
)
pick = balanced_indices(data.test.y, data.test.a, per_group=1, seed=2)
pick = pick[round_robin_order(data.test.y[pick], data.test.a[pick])]
x = data.test.subset(pick).float_images()
target = 1 - classifier.predict(x)
delta = explainer.attribute(x, target=target)

# Which atom did each counterfactual use, and did it flip the classifier?
explanation = explainer.explain(x, target=target)
best = explanation.cf_target_confidence.argmax(1)
rows = range(len(x))
atoms = [explanation.atom_names[int(best[i])] for i in rows]
flipped = [bool(explanation.flipped[i, best[i]]) for i in rows]

fig, axes = plt.subplots(len(x), 3, figsize=(4.2, 1.45 * len(x)), squeeze=False)
limit = float(delta.sum(1).abs().max())
for i in rows:
    axes[i, 0].imshow(x[i].permute(1, 2, 0).numpy(), interpolation="nearest")
    axes[i, 1].imshow(
        (x[i] + delta[i]).clamp(0, 1).permute(1, 2, 0).numpy(), interpolation="nearest"
    )
    axes[i, 2].imshow(
        delta[i].sum(0).numpy(),
        cmap="RdBu_r",
        vmin=-limit,
        vmax=limit,
        interpolation="nearest",
    )
    axes[i, 1].set_title(
        f"along {atoms[i]} ({'flip' if flipped[i] else 'no flip'})", fontsize=7
    )
    for ax in axes[i]:
        ax.set_xticks([])
        ax.set_yticks([])
axes[0, 0].set_title("factual", fontsize=7)
axes[0, 2].set_title("x_cf - x (red: brighter)", fontsize=7)
fig.tight_layout()
